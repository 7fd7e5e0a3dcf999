"""Run files: one HDF5 file per run, its typed metadata, the writer, the reader and the folder index.

* :mod:`hil.runs.layout`: names, layout version and the fixed dtypes (``docs/run-file.md``);
* :mod:`hil.runs.metadata`: the start and stop documents (:class:`RunStart`, :class:`RunStop`),
  statuses and reasons, the index entry;
* :mod:`hil.runs.columns`: the column rules of ``run.log`` (shared with :class:`hil.MemoryRunLog`);
* :mod:`hil.runs.writer`: :class:`RunWriter`, crash-safe, with its flush thread;
* :mod:`hil.runs.reader`: :class:`RunReader` and :class:`Journal`;
* :mod:`hil.runs.liveness`: whether a run's writer process is alive;
* :mod:`hil.runs.index`: :class:`RunIndex`, the per-folder index behind ``hil ls``;
* :mod:`hil.runs.catalog`: the filters of ``hil ls --where/--tag/--since`` and :func:`catalog` (a DataFrame);
* :mod:`hil.runs.export`: streams to xarray, pandas, netCDF and CSV (``RunReader.to_xarray``, ``hil export``).
"""

from hil.errors import LayoutVersionError, RunFileError, RunLogError
from hil.lazy import lazy_getattr

# Loaded on first access, so that ``hil.runs.columns`` (used by every run log) does not import h5py.
_LAZY = {
    "RunIndex": "hil.runs.index",
    "INDEX_NAME": "hil.runs.index",
    "LAYOUT_NAME": "hil.runs.layout",
    "LAYOUT_VERSION": "hil.runs.layout",
    "LIBVER": "hil.runs.layout",
    "catalog": "hil.runs.catalog",
    "default_runs_folder": "hil.runs.index",
    "StreamInfo": "hil.runs.reader",
    "Journal": "hil.runs.reader",
    "JournalCall": "hil.runs.reader",
    "RunReader": "hil.runs.reader",
    "read_attrs": "hil.runs.reader",
    "repair": "hil.runs.reader",
    "RunWriter": "hil.runs.writer",
    **dict.fromkeys(
        ("EFFECTIVE_STATUSES", "REASONS", "STATUSES", "EffectiveStatus", "IndexEntry", "Reason", "RunStart", "RunStop",
         "Status", "now_iso", "to_json"),
        "hil.runs.metadata",
    ),
}


__getattr__ = lazy_getattr(globals(), _LAZY)


__all__ = [
    "EFFECTIVE_STATUSES",
    "INDEX_NAME",
    "LAYOUT_NAME",
    "LAYOUT_VERSION",
    "LIBVER",
    "REASONS",
    "STATUSES",
    "EffectiveStatus",
    "IndexEntry",
    "Journal",
    "JournalCall",
    "LayoutVersionError",
    "Reason",
    "RunFileError",
    "RunIndex",
    "RunLogError",
    "RunReader",
    "RunStart",
    "RunStop",
    "RunWriter",
    "Status",
    "StreamInfo",
    "catalog",
    "default_runs_folder",
    "now_iso",
    "read_attrs",
    "repair",
    "to_json",
]
