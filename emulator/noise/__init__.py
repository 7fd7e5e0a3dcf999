"""PCM device physics models, one class per file; a preset's ``noise.fit`` names one.

Every module of this package is imported here, so a new model is a new file whose class subclasses
:class:`DeviceNoiseModel` and sets ``name`` (see docs/emulator.md, "Adding a physics model").
"""

from __future__ import annotations

import importlib
import pkgutil

from emulator.noise.base import DeviceNoiseModel, registered

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "recurrence"):
        importlib.import_module(f"{__name__}.{_info.name}")


def model_names() -> list[str]:
    """Names of the registered physics models."""
    return sorted(registered())


def get_model(name: str, *, g_max_us: float | None = None, t0_s: float | None = None,
              t_read_s: float | None = None) -> DeviceNoiseModel:
    """An instance of the model registered as ``name`` (constants default to its published values)."""
    models = registered()
    if name not in models:
        raise KeyError(f"unknown noise model {name!r}; registered: {', '.join(sorted(models))}")
    return models[name](g_max_us=g_max_us, t0_s=t0_s, t_read_s=t_read_s)


__all__ = ["DeviceNoiseModel", "get_model", "model_names"]
