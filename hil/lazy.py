"""Lazy public names: a package's ``__getattr__`` that imports a name's module on first access (PEP 562).

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

``import hil`` stays cheap (no h5py, no torch) while ``hil.run_protocol`` and ``hil.runs.RunReader``
still work: the modules behind those names load when a script first touches them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(namespace: dict[str, Any], names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``names`` (public name -> module) from ``namespace`` (its globals)."""
    package = namespace.get("__name__", "?")

    def getattr_(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return getattr_
