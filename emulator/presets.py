"""Emulator presets: every physical constant of the emulated chip, as pydantic models.

Two presets ship: ``hermes`` (default; device statistics of the aihwkit HermesNoiseModel fits on the
IBM HERMES chip, applied per PCM device, g_max 10.35 uS per device) and ``pcm-like`` (the 25 uS
PCM model of Joshi et al. 2020 as published in aihwkit's documentation). Every constant can be
overridden with a nested dict (``EmulatedChip(overrides={"adc": {"gain_sigma": 0.0}})``); a value
outside its physical range is refused with the range in the message.
Source tags are cited in full in ``docs/references.md``; ASSUMPTION marks emulator choices.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from emulator.noise import model_names
from hil.chip import Geometry
from hil.errors import ChipInputError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceModel(_Model):
    """Programming physics of one PCM device (conductances in uS, currents in uA, times in ns)."""

    reset_g_us: float = Field(0.1, ge=0.0, le=2.0, description="mean RESET conductance [uS] (|G_RESET| < 5 counts [NE23])")
    reset_sigma_us: float = Field(0.08, ge=0.0, le=2.0, description="RESET spread [uS] (ASSUMPTION)")
    reset_min_ua: float = Field(600.0, ge=100.0, le=800.0, description="least current of a full RESET [uA]")
    set_g_us: float = Field(12.0, gt=0.5, le=100.0, description="mean SET conductance [uS]; 10th pct ~ g_max (ASSUMPTION)")
    set_d2d_sigma: float = Field(0.11, ge=0.0, le=0.5, description="device-to-device SET spread, relative")
    set_c2c_sigma: float = Field(0.04, ge=0.0, le=0.5, description="cycle-to-cycle SET spread, relative")
    set_max_ua: float = Field(300.0, ge=50.0, le=800.0, description="SET pulses above this melt: act as PARTIAL [uA]")
    set_tau_ns: float = Field(80.0, gt=0.0, le=10_000.0, description="crystallisation time constant of SET [ns]")
    min_effect_ua: float = Field(50.0, ge=0.0, le=200.0, description="pulses below this current change nothing [uA]")
    partial_mid_ua: float = Field(400.0, ge=125.0, le=800.0, description="PARTIAL current giving half of g_set [uA]")
    partial_width_ua: float = Field(80.0, gt=1.0, le=400.0, description="slope of target vs current [uA]")
    partial_tau_ns: float = Field(40.0, gt=0.0, le=10_000.0, description="melt time constant of PARTIAL pulses [ns]")
    partial_kappa_mean: float = Field(0.5, ge=0.0, le=1.0, description="mean fraction of a crystallising step taken")
    partial_kappa_sigma: float = Field(0.2, ge=0.0, le=1.0, description="spread of that fraction")
    partial_noise_scale: float = Field(1.0, ge=0.0, le=10.0, description="pulse noise in units of the fitted sigma_prog")


#: Upper end of ``noise.fast_mvm_scale`` (a study knob, not a physical constant). The fast part is an
#: additive Gaussian per MVM output (variance (x^2) @ (s G Q_s)^2 L(tau_c), no device is sampled, so
#: no clipping at 0 uS biases it), and the counters clip the result: any scale is computable and
#: none breaks the model's formulas. The old bound 10 had no physical reason (``read_noise_scale``
#: <= 10 already multiplied it to 100) and stopped the attack study short of a 5 % accuracy drop
#: (docs/attacks.md). At 100 the hermes fast part is 2.6-4.1x a device's conductance (1.8-3.0 % at
#: the calibrated 0.72, g_max to 0.05 g_max), far beyond measured PCM read noise: a stress range for studies.
MAX_FAST_MVM_SCALE = 100.0


class NoiseModel(_Model):
    """Device noise sources, each with its own scale and recurrence (docs/emulator.md, "Noise sources").

    * programming noise: drawn when a device is programmed (``prog_noise_scale``);
    * drift: nu drawn at programming (``drift_scale``), G(t) = g_p ((t - t_p + t0) / t0) ** -nu;
    * slow 1/f read noise: frozen per device, redrawn on a log grid of its age (``slow_noise_scale``,
      ``slow_redraw_frac``), seen alike by verify reads and MVMs;
    * fast 1/f read noise: fresh on every verify read (``fast_verify_scale``) and MVM (``fast_mvm_scale``);
    * output noise: input-independent Gaussian per column in ADC counts, frozen or per MVM.

    The defaults are the ``hermes`` preset's (see ``HERMES_NOISE``). ``read_noise_scale`` multiplies
    both read-noise parts. The formulas are the physics model's
    (``fit``: a class in ``emulator/noise/``); the split of the 1/f band at ``fast_corner_s`` is in
    ``emulator/noise/recurrence.py``.
    """

    fit: str = Field("hermes-1dev", description="physics model (a registered class in emulator/noise/)")
    g_max_us: float = Field(10.35, gt=0.0, le=100.0, description="conductance the fits are normalised to [uS]")
    t0_s: float = Field(200.0, gt=0.0, le=1e5, description="drift reference time t0 [s]")
    t_read_s: float = Field(512e-9, gt=0.0, le=1e-3, description="read duration of the 1/f noise law [s]")
    prog_noise_scale: float = Field(1.0, ge=0.0, le=10.0, description="programming noise (drawn at programming)")
    drift_scale: float = Field(1.0, ge=0.0, le=10.0, description="drift exponents")
    read_noise_scale: float = Field(1.0, ge=0.0, le=10.0, description="all 1/f read noise (slow and fast parts)")
    slow_noise_scale: float = Field(0.8, ge=0.0, le=10.0, description="slow 1/f part (frozen between redraws)")
    fast_verify_scale: float = Field(0.8, ge=0.0, le=10.0, description="fast 1/f part of verify reads (fresh per read)")
    fast_mvm_scale: float = Field(0.72, ge=0.0, le=MAX_FAST_MVM_SCALE, description="fast 1/f part of MVMs (fresh per MVM)")
    fast_corner_s: float = Field(1e-5, gt=0.0, le=1.0, description="corner time between fast and slow 1/f parts [s]")
    slow_redraw_frac: float = Field(0.1, gt=0.0, le=10.0, description="slow part redrawn when the age grew by this fraction")
    output_noise_counts: float = Field(0.0, ge=0.0, le=1000.0, description="output noise per column, std [ADC counts]")
    output_noise_recurrence: Literal["per_mvm", "frozen"] = Field(
        "per_mvm", description="output noise drawn on every MVM, or once per column (fixed pattern)"
    )

    @field_validator("fit")
    @classmethod
    def _known_fit(cls, value: str) -> str:
        names = model_names()
        if value not in names:
            raise ValueError(f"unknown physics model {value!r}; registered: {', '.join(names)}")
        return value


class AdcModel(_Model):
    """CCO ADC per column: f = A i / (1 + B i) + C in counts/ns (GHz), i in uA [JSSC22 eq. 8]."""

    gain_ghz_per_ua: float = Field(0.035, gt=0.0, le=1.0, description="static gain A, 35 MHz/uA [JSSC22]")
    gain_sigma: float = Field(0.0709, ge=0.0, le=0.5, description="per-ADC gain spread, relative [JSSC22]")
    gain_clip: float = Field(0.21, ge=0.0, le=0.9, description="largest relative gain deviation [JSSC22]")
    nonlinearity_per_ua: float = Field(5e-4, ge=0.0, le=0.1, description="B; 5e-4 bends 100 uA by 5 % (ASSUMPTION)")
    offset_ghz: float = Field(0.0, ge=-1.0, le=1.0, description="C, offset frequency (trimmed ~0 [JSSC22])")
    offset_sigma_ghz: float = Field(0.0, ge=0.0, le=1.0, description="per-ADC offset spread")
    i_sat_ua: float = Field(100.0, gt=1.0, le=1000.0, description="bit-line current where the CCO saturates [uA]")
    counter_bits: int = Field(12, ge=4, le=24, description="ripple counter width [bits]")


class PeripheryModel(_Model):
    """Input PWM, read voltage, read modes, IR drop."""

    v_read_v: float = Field(0.2, ge=0.1, le=0.4, description="read voltage [V] (100-400 mV [NE23])")
    pwm_ns_per_lsb: float = Field(1.0, gt=0.0, le=100.0, description="PWM step [ns/LSB] [NE23]")
    window_ns: float = Field(128.0, gt=0.0, le=10_000.0, description="integration window of one phase [ns]")
    polarity_asymmetry: float = Field(0.03, ge=0.0, le=0.5, description="1-phase: G at V+ is G (1 + a) (ASSUMPTION)")
    ir_drop: bool = Field(False, description="first-order static IR drop (HERMES value unpublished)")
    ir_drop_ohm_per_cell: float = Field(0.35, ge=0.0, le=100.0, description="wire resistance per cell [ohm] [PTO24]")


class VerifyModel(_Model):
    """Verify reads of single devices or unit cells through the column ADC."""

    counts_per_us: float = Field(80 / 10.35, gt=0.0, le=1000.0, description="counts per uS (80 counts ~ 10.35 uS, ASSUMPTION)")
    read_ns: float = Field(768.0, gt=0.0, le=1e6, description="512 ns read pulse + 256 ns precharge [NE23]")
    parallel_per_core: int = Field(256, ge=1, le=4096, description="reads in parallel per core (one per column ADC)")


class TimingModel(_Model):
    """Chip time of operations (advances the virtual clock)."""

    write_heads_per_core: int = Field(32, ge=1, le=4096, description="parallel write heads per core [NE23]")
    pulse_overhead_ns: float = Field(50.0, ge=0.0, le=1e6, description="per pulse slot: trailing edge, settling")
    mvm_4phase_ns: float = Field(520.0, gt=0.0, le=1e6, description="full-chip 4-phase MVM latency [NE23]")
    mvm_1phase_ns: float = Field(133.0, gt=0.0, le=1e6, description="full-chip 1-phase MVM latency [NE23]")


class NumericsModel(_Model):
    """How the emulator computes (not physics)."""

    matmul_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="signal matmuls; auto: the faster one measured on this machine (emulator/numerics.py)"
    )
    noise_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="read-noise variance matmul; auto: as matmul_dtype"
    )
    adc_chain: Literal["auto", "eager", "compiled", "native"] = Field(
        "auto", description="elementwise ADC chain: eager torch ops, one torch.compile kernel, or the C loop of "
        "emulator/adc_kernel.c with its own noise generator (emulator/native.py); auto: what `hil bench` measured "
        "on this machine (eager where it has not)"
    )
    drift_rel_tol: float = Field(1e-3, ge=0.0, le=0.1, description="recompute drifted matrices after dt > tol (t - t_p + t0)")


class EmulatorPreset(_Model):
    """All constants of an emulated chip."""

    name: str = "hermes"
    geometry: Geometry = Geometry()
    device: DeviceModel = DeviceModel()
    noise: NoiseModel = NoiseModel()
    adc: AdcModel = AdcModel()
    periphery: PeripheryModel = PeripheryModel()
    verify: VerifyModel = VerifyModel()
    timing: TimingModel = TimingModel()
    numerics: NumericsModel = NumericsModel()
    ldpu_scale: float = Field(127 / 448, gt=0.0, le=100.0, description="reset value of the LDPU scale registers")


#: ``hermes`` noise split (calibrated to HERMES figures, ASSUMPTION). Device statistics are the
#: HermesNoiseModel fits ([AIHW] hermes.py). The published read noise Q_s sqrt(L(a))
#: is split at tau_c = 10 us into a slow part (frozen, scale 0.8) and a fast part. The scales are fitted
#: to HERMES measurements, not taken from the fit: 0.8 on both verify-read parts makes program-and-verify
#: leave about the 5.1 % weight error spread of [JSSC22] (4.8-5.3 %; at 1.0 it was 5.8 %); the fast MVM
#: scale 0.72 gives the per-MVM noise that leaves the residual MVM error at about 2.2 % ([JSSC22]: 1.94 %),
#: the same per-MVM noise as the earlier all-fresh 0.25 x Q_s sqrt(L(t0)). No output noise (not
#: published separately for HERMES).
HERMES_NOISE = NoiseModel()  # the field defaults are the hermes values

#: ``pcm-like`` noise: aihwkit's PCMLikeNoiseModel exactly ([AIHW] pcm.py, [JOSHI20]),
#: every scale 1: one read has the published variance (Q_s sqrt(L(a)))^2, split at tau_c = 10 us into a
#: slow part (frozen between redraws, like aihwkit's read noise, which is drawn once per drift_weights(t)
#: and not per MVM) and a fast part fresh per read (ASSUMPTION: the split; the total is the model's).
PCM_LIKE_NOISE = NoiseModel(fit="pcm-like", g_max_us=25.0, t0_s=20.0, t_read_s=250e-9,
                            slow_noise_scale=1.0, fast_verify_scale=1.0, fast_mvm_scale=1.0)

PRESETS: dict[str, EmulatorPreset] = {
    "hermes": EmulatorPreset(noise=HERMES_NOISE),
    "pcm-like": EmulatorPreset(
        name="pcm-like",
        device=DeviceModel(set_g_us=29.0, reset_g_us=0.1),
        noise=PCM_LIKE_NOISE,
        verify=VerifyModel(counts_per_us=80 / 25.0),
    ),
}


def _merge(base: dict[str, Any], over: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key not in base:
            raise ChipInputError(f"unknown preset key {path + key!r}; valid keys: {', '.join(sorted(base))}")
        if isinstance(value, dict) and isinstance(base[key], dict):
            out[key] = _merge(base[key], value, f"{path}{key}.")
        else:
            out[key] = value
    return out


def resolve_preset(
    preset: str | EmulatorPreset = "hermes",
    overrides: dict[str, Any] | None = None,
    geometry: Geometry | None = None,
) -> EmulatorPreset:
    """A preset by name (or as given) with ``overrides`` merged in and validated."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ChipInputError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    data = preset.model_dump()
    if geometry is not None:
        data["geometry"] = geometry.model_dump()
    if overrides:
        data = _merge(data, overrides)
    try:
        return EmulatorPreset.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ChipInputError(f"preset value {loc}={err.get('input')!r} is invalid: {err['msg']}") from None


# ---------------------------------------------------------------------------------------------- chip specs
#: Sections of the preset a chip spec part ``SECTION.FIELD=VALUE`` may set (the geometry has its own
#: parts ``cores=``, ``rows=``, ``cols=``).
SPEC_SECTIONS: tuple[str, ...] = ("noise", "device", "adc", "periphery", "verify", "timing", "numerics")


def _section_model(section: str) -> type[_Model]:
    model = EmulatorPreset.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, _Model)
    return model


def _num(value: float) -> str:
    return f"{value:g}"


def field_range(section: str, name: str) -> str:
    """What ``SECTION.NAME`` accepts, in words: ``a number in [0, 100]``, ``one of per_mvm, frozen``, ..."""
    info = _section_model(section).model_fields[name]
    annotation = info.annotation
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    kind = "a whole number" if annotation is int else "a number" if annotation is float else "a name"
    lo = hi = None
    lo_open = hi_open = False
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
    if lo is None and hi is None:
        return kind
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{kind} in {left}{'-inf' if lo is None else _num(lo)}, {'inf' if hi is None else _num(hi)}{right}"


def spec_keys(section: str | None = None) -> list[str]:
    """The ``SECTION.FIELD`` keys a chip spec may set (of one section, or of all)."""
    sections = SPEC_SECTIONS if section is None else (section,)
    return [f"{s}.{name}" for s in sections for name in _section_model(s).model_fields]


def parse_spec_override(key: str, value: str) -> tuple[str, str, Any]:
    """``(section, field, value)`` of a chip spec part ``SECTION.FIELD=VALUE``, the value validated
    (and converted) by the section's pydantic model; :class:`ChipInputError` naming the key, what it
    accepts and how to fix it otherwise. Nothing is built."""
    section, _, name = key.partition(".")
    if section not in SPEC_SECTIONS:
        hint = " (the geometry: cores=N, rows=N, cols=N)" if section == "geometry" else ""
        raise ChipInputError(
            f"unknown emulator spec key {key!r}{hint}; known keys: cores, rows, cols, matmul, chain and SECTION.FIELD "
            f"with SECTION one of {', '.join(SPEC_SECTIONS)} (e.g. noise.fast_mvm_scale=3; docs/emulator.md)."
        )
    model = _section_model(section)
    if name not in model.model_fields:
        raise ChipInputError(
            f"unknown emulator spec key {key!r}; the {section} keys are: "
            f"{', '.join(sorted(spec_keys(section)))}."
        )
    try:
        parsed = getattr(model.model_validate({name: value}), name)
    except ValidationError as exc:
        err = exc.errors()[0]
        info = model.model_fields[name]
        raise ChipInputError(
            f"emulator spec part {key}={value!r} is invalid: {err['msg']}. {key} ({info.description}) takes "
            f"{field_range(section, name)}: write {key}=V with V in that range (the hermes default is {info.default})."
        ) from None
    return section, name, parsed
