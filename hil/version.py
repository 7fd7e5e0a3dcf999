"""The version of hil (its one source: ``pyproject.toml`` reads it from here) and the git revision.

Internal module (its layout may change): use ``hil.__version__``.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"

#: The source tree hil runs from (a git checkout for an editable install).
SOURCE_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def git_revision(root: Path = SOURCE_ROOT) -> str:
    """The commit of the source tree ``root`` (``<40 hex>``, with ``-dirty`` when tracked files
    differ from it), or ``""`` when it is not a git checkout or git is not installed."""
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    rev = head.stdout.strip()
    return rev + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
