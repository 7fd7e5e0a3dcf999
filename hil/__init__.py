"""hil: hardware-in-the-loop framework for analog in-memory computing chips.

What a script needs is importable from here::

    import hil
    result = hil.run_protocol("program-verify", chip="emulator:hermes,cores=4", out="runs")
    with hil.RunReader(result.path) as run:
        print(run.summary, run.journal.counts())

* the chip contract: :class:`Chip`, :class:`Geometry`, :class:`PulseKind`, :class:`ChipInfo`,
  :class:`PulseBatch`, :class:`LdpuRegisters`, :func:`grid`, :func:`open_chip`;
* protocols: :func:`register_protocol`, :class:`RunLog`, :class:`MemoryRunLog`,
  :func:`load_protocol_module`;
* runs: :func:`run_protocol`, :func:`resume_run`, :func:`replay_run`, :class:`RunOptions`,
  :class:`RunResult`, :class:`RunReader`, :class:`ReplayChip`, :func:`catalog` (a folder's runs as
  a pandas DataFrame);
* errors: :class:`HilError` and its subclasses.

Everything else (``hil.runs.*``, ``hil.ops``, ``hil.journal``, ...) is the machinery behind these;
``docs/extending.md`` maps it. Backends (``emulator``, ``drivers``) and ``protocols`` depend on
``hil``, never the other way round. The run machinery (h5py) loads on first use of its names.
"""

from hil.chip import (
    INPUT_MAX,
    INPUT_MIN,
    WRITE_HEAD_LIMIT_UA,
    Chip,
    ChipInfo,
    Geometry,
    LdpuRegisters,
    PulseBatch,
    PulseKind,
    grid,
)
from hil.errors import (
    ChipCommunicationError,
    ChipInputError,
    ConfigError,
    HilError,
    LayoutVersionError,
    ReplayMismatchError,
    RunFileError,
    RunLogError,
    SafetyLimitError,
)
from hil.lazy import lazy_getattr
from hil.protocol import MemoryRunLog, RunLog, UnknownProtocolError, load_protocol_module, register_protocol
from hil.version import __version__

#: Public names whose modules import h5py and the run machinery: loaded on first access.
_LAZY = {
    "run_protocol": "hil.runner",
    "resume_run": "hil.runner",
    "replay_run": "hil.runner",
    "RunOptions": "hil.runner",
    "RunResult": "hil.runner",
    "RunReader": "hil.runs",
    "RunWriter": "hil.runs",
    "ReplayChip": "hil.replay",
    "open_chip": "hil.chips",
    "FakeChip": "hil.testing",
    "catalog": "hil.runs.catalog",
}


__getattr__ = lazy_getattr(globals(), _LAZY)


__all__ = [
    "INPUT_MAX",
    "INPUT_MIN",
    "WRITE_HEAD_LIMIT_UA",
    "Chip",
    "ChipCommunicationError",
    "ChipInfo",
    "ChipInputError",
    "ConfigError",
    "FakeChip",
    "Geometry",
    "HilError",
    "LayoutVersionError",
    "LdpuRegisters",
    "MemoryRunLog",
    "PulseBatch",
    "PulseKind",
    "ReplayChip",
    "ReplayMismatchError",
    "RunFileError",
    "RunLog",
    "RunLogError",
    "RunOptions",
    "RunReader",
    "RunResult",
    "RunWriter",
    "SafetyLimitError",
    "UnknownProtocolError",
    "__version__",
    "catalog",
    "grid",
    "load_protocol_module",
    "open_chip",
    "register_protocol",
    "replay_run",
    "resume_run",
    "run_protocol",
]
