"""Chip specs: ``NAME[:SPEC]`` strings that open a chip backend, every backend registered alike.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

``--chip emulator:hermes,cores=4,noise.fast_mvm_scale=3``, ``--chip lab:HOST:PORT``, ``--chip replay:RUN.h5`` and
``--chip fake:cores=2`` all take the same path: ``NAME`` picks a :class:`hil.Chip` class from the
``hil.backends`` entry-point group (hil's own ``replay`` and ``fake`` are built in), and that
class's :meth:`hil.Chip.from_spec` gets the rest. A lab adds a backend by declaring an entry point
``[project.entry-points."hil.backends"] mychip = "mypkg.chip:MyChip"``; ``hil`` never imports
``emulator`` or ``drivers`` until a spec names them.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from hil.chip import Chip
from hil.errors import ChipInputError, HilError

#: Backends that live in hil itself (``module:Class``); entry points with the same name win.
BUILTIN_BACKENDS: dict[str, str] = {
    "replay": "hil.replay:ReplayChip",
    "fake": "hil.testing:FakeChip",
}
SPEC_HELP = ("Use emulator[:PRESET,cores=N,rows=N,cols=N,noise.FIELD=VALUE,...], lab:HOST:PORT, replay:FILE "
             "or fake[:cores=N,...].")


def backends() -> dict[str, str]:
    """Backend name -> ``module:Class`` of every registered backend."""
    out = dict(BUILTIN_BACKENDS)
    out.update({ep.name: ep.value for ep in entry_points(group="hil.backends")})
    return dict(sorted(out.items()))


def backend_class(name: str) -> type[Chip]:
    """The :class:`hil.Chip` class registered under ``name``."""
    known = backends()
    if name not in known:
        raise HilError(f"unknown chip backend {name!r}; installed backends: {', '.join(known) or '(none)'}")
    eps = {ep.name: ep for ep in entry_points(group="hil.backends")}
    if name in eps:
        cls: Any = eps[name].load()
    else:
        module, _, attr = known[name].partition(":")
        cls = getattr(import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Chip)):
        raise HilError(f"chip backend {name!r} ({known[name]}) is not a hil.Chip subclass.")
    return cls


def open_chip(spec: str, *, seed: int = 0) -> Chip:
    """Chip from a spec ``NAME[:SPEC]`` (see the module docstring); ``seed`` goes to the backend."""
    name, _, rest = spec.partition(":")
    try:
        cls = backend_class(name)
    except HilError as exc:
        raise ChipInputError(f"unknown chip {spec!r}: {exc}. {SPEC_HELP}") from exc
    return cls.from_spec(rest, seed=seed)


def resume_spec(spec: str, info: dict[str, Any]) -> str:
    """``spec`` with what the recorded ``ChipInfo`` pins added (:meth:`hil.Chip.resume_spec`), for resume."""
    name, sep, rest = spec.partition(":")
    try:
        cls = backend_class(name)
    except HilError:
        return spec  # open_chip says what is wrong
    pinned = cls.resume_spec(rest, info)
    return f"{name}:{pinned}" if (sep or pinned) else name


def check_spec(spec: str) -> None:
    """Check a chip spec without opening the chip: the backend exists and, where the backend can
    parse its spec alone (a ``parse_spec`` classmethod, as the emulator has), every part is valid.
    Raises :class:`ChipInputError` as :func:`open_chip` would; for planning (e.g. a sweep's chips)."""
    name, _, rest = spec.partition(":")
    try:
        cls = backend_class(name)
    except HilError as exc:
        raise ChipInputError(f"unknown chip {spec!r}: {exc}. {SPEC_HELP}") from exc
    parse = getattr(cls, "parse_spec", None)
    if callable(parse):
        parse(rest)
