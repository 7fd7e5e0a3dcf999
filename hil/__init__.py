"""hil: hardware-in-the-loop framework for analog in-memory computing chips.

The core package holds the chip interface (:class:`hil.Chip`), the run engine and run files,
record/replay, configuration models and the command line. Backends (``emulator``, ``drivers``) and
``protocols`` depend on ``hil``, never the other way round.
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
    HilError,
    ReplayMismatchError,
    SafetyLimitError,
)
from hil.protocol import MemoryRunLog, RunLog, register_protocol

__version__ = "0.1.0"

__all__ = [
    "INPUT_MAX",
    "INPUT_MIN",
    "WRITE_HEAD_LIMIT_UA",
    "Chip",
    "ChipCommunicationError",
    "ChipInfo",
    "ChipInputError",
    "Geometry",
    "HilError",
    "LdpuRegisters",
    "MemoryRunLog",
    "PulseBatch",
    "PulseKind",
    "ReplayMismatchError",
    "RunLog",
    "SafetyLimitError",
    "__version__",
    "grid",
    "register_protocol",
]
