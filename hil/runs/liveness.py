"""Whether the process that writes a run is still alive (a run whose writer is gone is incomplete).

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.
"""

from __future__ import annotations

import os


def pid_alive(pid: int, started_unix: float) -> bool:
    """Whether process ``pid`` on this host still runs and started before ``started_unix``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A reused pid belongs to a process that started after the run did.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie no longer writes
            return False
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return btime + int(fields[19]) / ticks <= started_unix + 2.0
    except (OSError, StopIteration, IndexError, ValueError):
        return True
