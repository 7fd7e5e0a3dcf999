"""Find chip backends by name without importing them at module level.

``emulator`` and ``drivers`` register classes in the ``hil.backends`` entry-point group; a chip
spec string picks one: ``emulator`` (optionally ``emulator:PRESET``), ``replay:FILE``,
``lab:HOST:PORT``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from hil.errors import HilError


def backend_class(name: str) -> Any:
    """The class registered under ``name`` in the ``hil.backends`` entry-point group."""
    eps = {ep.name: ep for ep in entry_points(group="hil.backends")}
    if name not in eps:
        raise HilError(f"unknown chip backend {name!r}; installed backends: {', '.join(sorted(eps)) or '(none)'}")
    return eps[name].load()
