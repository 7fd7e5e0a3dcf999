"""The HERMES kernel-approximation measurements [KRN24] and the band-level comparison with a run.

``data/hermes/ibm_hermes_kernel_approx_results.json`` (MIT, Copyright (c) 2024 International Business
Machines; ``data/LICENSES.md``): ``datasets.<ds>.{hardware,fp}_{err,acc}.<rff|orf|sorf>.<rbf|arccos0>."1".."5"``,
10 values each (seeds 0..9), measured on the IBM HERMES chip (``hardware_*``) beside the floating-point reference.

The comparison is band-level, not value-level (the paper's data sets are not ours). A summary is consistent
with HERMES when (:func:`compare`):

1. ``fp_slope``: the floating-point error falls as s^-1/2 (log-log slope -0.5 +- 0.15);
2. ``floor_in_band``: the chip's error floor ``sqrt(err_chip^2 - err_fp^2)`` at k = 5 (from the seed means, as the
   band is) lies inside the HERMES floors for the same map and kernel over the data sets with 8 <= d <= 16, widened
   by a factor 2 either way; ``where`` says below / inside / above, ``interval`` is the floor's ~95 % interval from
   the seed spread (:func:`floor_sq_se`) and ``consistent`` whether that interval meets the band;
3. ``ratio_rises``: the ratio of chip to floating-point error is larger at the largest k than at the smallest;
4. ``accuracy_gap``: the chip's ridge accuracy is within 2 points of floating point at every k.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

from protocols.datafiles import data_path

FILE = ("hermes", "ibm_hermes_kernel_approx_results.json")
BAND_D = (8, 16)
WIDEN = 2.0
SLOPE_TOL = 0.15
ACC_GAP_PT = 2.0


@lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    """The JSON document (cached)."""
    with open(data_path(*FILE), encoding="utf-8") as f:
        return json.load(f)


def band_datasets(ref: dict[str, Any] | None = None) -> list[str]:
    """The HERMES data sets with input dimension in ``BAND_D``."""
    ref = ref or load()
    dims = ref["_meta"]["input_dims_d"]
    return [n for n, d in dims.items() if d is not None and BAND_D[0] <= d <= BAND_D[1]]


def curves(dataset: str, approximation: str, kernel: str, ref: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Seed means over k = 1..5: ``hw_err``, ``fp_err``, ``hw_acc``, ``fp_acc`` (each (5,)), and ``k``."""
    ds = (ref or load())["datasets"][dataset]
    ks = ["1", "2", "3", "4", "5"]
    out = {f"{w}_{q}": np.array([np.mean(ds[f"{'hardware' if w == 'hw' else 'fp'}_{q}"][approximation][kernel][k]) for k in ks])
           for w in ("hw", "fp") for q in ("err", "acc")}
    out["k"] = np.arange(1, 6)
    return out


def floor(hw: np.ndarray | float, fp: np.ndarray | float) -> np.ndarray:
    """The chip's error floor ``sqrt(max(hw^2 - fp^2, 0))``."""
    return np.sqrt(np.maximum(np.asarray(hw) ** 2 - np.asarray(fp) ** 2, 0.0))


def floor_sq_se(hw: Any, fp: Any) -> float:
    """Standard error of ``mean(hw)^2 - mean(fp)^2`` over paired seeds (delta method; nan below 2 seeds).

    ``hw`` and ``fp`` are the per-seed chip and floating-point errors of the same maps. With the chip's error
    mostly a different random draw of the map (a static weight error), the seed-to-seed spread of the errors
    (~10 % of the error at k = 5) makes a floor of a few 0.01 statistically indistinguishable from 0 with 3 seeds.
    """
    h, f = np.asarray(hw, float), np.asarray(fp, float)
    if h.size < 2:
        return float("nan")
    g = 2.0 * h.mean() * h - 2.0 * f.mean() * f
    return float(np.std(g, ddof=1) / np.sqrt(h.size))


def floor_interval(hw: float, fp: float, sq_se: float, z: float = 2.0) -> tuple[float, float]:
    """(low, high) of the floor for ``hw^2 - fp^2 +- z sq_se`` (z = 2: about 95 %); (floor, floor) without an se."""
    d2 = hw**2 - fp**2
    if not np.isfinite(sq_se):
        f = float(np.sqrt(max(d2, 0.0)))
        return f, f
    return float(np.sqrt(max(d2 - z * sq_se, 0.0))), float(np.sqrt(max(d2 + z * sq_se, 0.0)))


def floor_band(approximation: str, kernel: str, k: int = 5, ref: dict[str, Any] | None = None) -> tuple[float, float]:
    """(low, high): the HERMES floors at ``k`` over :func:`band_datasets`, widened by ``WIDEN`` either way."""
    ref = ref or load()
    cs = [curves(n, approximation, kernel, ref) for n in band_datasets(ref)]
    fl = [float(floor(c["hw_err"][k - 1], c["fp_err"][k - 1])) for c in cs]
    return min(fl) / WIDEN, max(fl) * WIDEN


def fp_slope(s: np.ndarray, fp_err: np.ndarray) -> float:
    """Least-squares slope of log(error) against log(s)."""
    return float(np.polyfit(np.log(np.asarray(s, float)), np.log(np.asarray(fp_err, float)), 1)[0])


def compare(rows: list[dict[str, Any]], ref: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Checks per ``<approximation>/<kernel>`` from per-k seed means.

    ``rows``: dicts with ``approximation``, ``kernel``, ``k``, ``s``, ``fp_err``, ``chip_err``, ``fp_acc``,
    ``chip_acc`` (one per k; means over seeds). Returns, per pair, each check's value, bound and ``ok``,
    and ``ok`` for the pair (all checks that could be made).
    """
    ref = ref or load()
    out: dict[str, dict[str, Any]] = {}
    pairs = sorted({(r["approximation"], r["kernel"]) for r in rows})
    for ap, ke in pairs:
        rs = sorted((r for r in rows if r["approximation"] == ap and r["kernel"] == ke), key=lambda r: r["k"])
        k = np.array([r["k"] for r in rs])
        s = np.array([r["s"] for r in rs])
        fp = np.array([r["fp_err"] for r in rs])
        hw = np.array([r["chip_err"] for r in rs])
        checks: dict[str, Any] = {}
        if len(rs) >= 2:
            slope = fp_slope(s, fp)
            checks["fp_slope"] = {"value": slope, "bound": [-0.5 - SLOPE_TOL, -0.5 + SLOPE_TOL],
                                  "ok": bool(abs(slope + 0.5) <= SLOPE_TOL)}
            ratio = hw / fp
            checks["ratio_rises"] = {"value": [float(ratio[0]), float(ratio[-1])], "ok": bool(ratio[-1] > ratio[0])}
        if 5 in k:
            i = int(np.flatnonzero(k == 5)[0])
            lo, hi = floor_band(ap, ke, 5, ref)
            f = float(floor(hw[i], fp[i]))
            flo, fhi = floor_interval(float(hw[i]), float(fp[i]), float(rs[i].get("floor_sq_se", float("nan"))))
            where = "inside" if lo <= f <= hi else ("below" if f < lo else "above")
            checks["floor_in_band"] = {"value": f, "bound": [lo, hi], "interval": [flo, fhi], "where": where,
                                       "consistent": bool(fhi >= lo and flo <= hi), "ok": bool(lo <= f <= hi)}
        gap = max(abs(r["fp_acc"] - r["chip_acc"]) * 100 for r in rs)
        checks["accuracy_gap"] = {"value": float(gap), "bound": ACC_GAP_PT, "ok": bool(gap <= ACC_GAP_PT)}
        checks["ok"] = all(c["ok"] for c in checks.values())
        out[f"{ap}/{ke}"] = checks
    return out
