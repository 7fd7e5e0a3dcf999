"""Emulator chip specs: the part of ``--chip emulator:SPEC`` after the colon, parsed and checked
without building a chip, and pinned to a recorded run's numerics for resume (docs/emulator.md)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from emulator import numerics
from emulator.presets import parse_spec_override
from hil.chip import Geometry
from hil.errors import ChipInputError

#: Short spec keys and the preset fields they set.
SHORTHANDS: dict[str, str] = {"matmul": "numerics.matmul_dtype", "chain": "numerics.adc_chain"}


def parse_spec(spec: str = "") -> tuple[str, Geometry | None, dict[str, dict[str, Any]]]:
    """``(preset, geometry, overrides)`` of a chip spec, every part checked; builds nothing.

    ``PRESET[,cores=N][,rows=N][,cols=N][,matmul=DTYPE][,chain=CHAIN][,SECTION.FIELD=VALUE...]``
    (all parts optional): ``matmul``: float32 (exact), bfloat16 or auto (measured per machine);
    ``chain``: the ADC chain, eager, compiled, native or auto; ``SECTION.FIELD``: any constant of the
    preset's ``noise``, ``device``, ``adc``, ``periphery``, ``verify``, ``timing`` or ``numerics``
    models (``noise.fast_mvm_scale=3``, ``noise.output_noise_recurrence=frozen``), validated by
    that model (docs/emulator.md). A key given twice (``matmul=`` and ``numerics.matmul_dtype=``
    included) is refused.
    """
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    preset = "hermes"
    if parts and "=" not in parts[0]:
        preset = parts.pop(0)
    geo: dict[str, int] = {}
    overrides: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    keys = {"cores": "n_cores", "rows": "n_rows", "cols": "n_cols"}
    for part in parts:
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        full = SHORTHANDS.get(key, key)
        if full in seen:
            raise ChipInputError(f"emulator spec parts {seen[full]!r} and {part!r} both set {full}; give it once.")
        seen[full] = part
        if key in keys:
            if not value.isdigit():
                raise ChipInputError(f"bad emulator spec part {part!r}: {key} takes a whole number, e.g. {key}=4.")
            geo[keys[key]] = int(value)
            continue
        if not eq or "." not in full:
            raise ChipInputError(
                f"bad emulator spec part {part!r}; use cores=N, rows=N, cols=N, matmul=float32|bfloat16|auto, "
                "chain=eager|compiled|native|auto or SECTION.FIELD=VALUE (e.g. noise.fast_mvm_scale=3; docs/emulator.md)."
            )
        try:
            section, name, parsed = parse_spec_override(full, value)
        except ChipInputError:
            if key not in SHORTHANDS:
                raise
            raise ChipInputError(f"bad emulator spec part {part!r}; use matmul=float32|bfloat16|auto "
                                 "or chain=eager|compiled|native|auto.") from None
        overrides.setdefault(section, {})[name] = parsed
    try:
        geometry = Geometry(**geo) if geo else None
    except ValidationError as exc:
        err = exc.errors()[0]
        short = {v: k for k, v in keys.items()}.get(str(err["loc"][0]), str(err["loc"][0]))
        raise ChipInputError(f"bad emulator spec part {short}={err.get('input')!r}: {err['msg']}.") from None
    return preset, geometry, overrides


def resume_spec(spec: str, info: dict[str, Any]) -> str:
    """``spec`` with the recorded numerics pinned (``matmul=``, ``chain=``) where it leaves them open.

    The matmul dtype and the ADC chain are chosen per machine (``emulator/numerics.py``); a resume
    re-executes the journal, so it must make the run's choices, not this machine's. Parts the spec
    names itself (as ``matmul=`` or ``numerics.matmul_dtype=``, ``chain=`` or ``numerics.adc_chain=``)
    win; a run recorded before numerics were recorded pins nothing.
    """
    recorded = (info.get("details") or {}).get("numerics") or {}
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    keys = {p.partition("=")[0].strip() for p in parts if "=" in p}
    keys |= {short for short, full in SHORTHANDS.items() if full in keys}
    pins = {"matmul": recorded.get("matmul_dtype"), "chain": recorded.get("adc_chain")}
    allowed = {"matmul": set(numerics.DTYPES), "chain": set(numerics.CHAINS)}
    extra = [f"{k}={v}" for k, v in pins.items() if k not in keys and isinstance(v, str) and v in allowed[k]]
    return ",".join(parts + extra)
