"""Find the project's ``data/`` folder: in the repository, or the copy a wheel installed.

Looked for, in order (the first folder holding ``LICENSES.md`` wins):

1. ``$HIL_DATA`` (a folder laid out like ``data/``);
2. ``<repository>/data``, beside the ``protocols`` package (a checkout, or ``pip install -e .``);
3. ``<sys.prefix>/data``, then ``<site.USER_BASE>/data``: where a wheel's ``[tool.setuptools.data-files]``
   puts it (``pip install .`` into a venv, or ``pip install --user .``).

Internal module.
"""

from __future__ import annotations

import contextlib
import os
import site
import sys
from pathlib import Path

from hil.errors import ConfigError

MARKER = "LICENSES.md"


def candidates() -> list[Path]:
    """The folders searched, in order."""
    out: list[Path] = []
    env = os.environ.get("HIL_DATA")
    if env:
        out.append(Path(env).expanduser())
    out.append(Path(__file__).resolve().parents[1] / "data")
    out.append(Path(sys.prefix) / "data")
    with contextlib.suppress(Exception):  # a site without a user base
        out.append(Path(site.getuserbase()) / "data")
    return out


def data_dir() -> Path:
    """The ``data/`` folder (ConfigError naming the places looked in when there is none)."""
    tried = candidates()
    for p in tried:
        if (p / MARKER).is_file():
            return p
    raise ConfigError("no data/ folder found (looked in " + ", ".join(map(str, tried)) + "); set HIL_DATA to a copy of "
                      "the repository's data/ folder.")


def data_path(*parts: str) -> Path:
    """A file under ``data/`` (ConfigError if it is missing), e.g. ``data_path("hermes", "...json")``."""
    p = data_dir().joinpath(*parts)
    if not p.exists():
        raise ConfigError(f"data file {'/'.join(parts)!r} is not in {data_dir()}.")
    return p
