"""Run-file layout: names, version, HDF5 format and the fixed dtypes of the journal and notes.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

The full description is ``docs/run-file.md``; the per-operation journal encodings are declared
with the operations in :mod:`hil.ops`.
"""

from __future__ import annotations

import h5py
import numpy as np

from hil.ops import OPS

LAYOUT_NAME = "hil-run"
#: Bump on any incompatible change of the layout; readers refuse files of a newer version.
LAYOUT_VERSION = 1
#: HDF5 1.10 file format: the oldest that supports SWMR, and what Debian's hdf5-tools (1.10.8) read.
LIBVER = ("v110", "v110")
NOTE_BYTES = 1024
#: Group of the netCDF-4 view of the streams (``/netcdf/<stream>``: hard links and dimension scales).
NETCDF_GROUP = "netcdf"
#: The NAME of a dimension scale that holds no data (netCDF-4's own marker).
NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable."

#: Chip operations the journal records, with their enum code (fixed by layout version 1).
JOURNAL_OPS: dict[str, int] = {op.name: op.code for op in OPS.values()}
OP_DTYPE = h5py.enum_dtype(JOURNAL_OPS, basetype="u1")
CALL_DTYPE = np.dtype(
    [("op", OP_DTYPE), ("row", "<u8"), ("t_chip", "<f8"), ("t_wall", "<f8"), ("dt_wall", "<f4"), ("error", "u1")]
)
ERROR_DTYPE = np.dtype([("call", "<u8"), ("type", "S128"), ("message", f"S{NOTE_BYTES}")])
NOTE_DTYPE = np.dtype([("t_wall", "<f8"), ("text", f"S{NOTE_BYTES}")])
