"""An ideal backend for deployment tests: exact conductances, exact integer MVM, the LDPU in FP16."""

from __future__ import annotations

from typing import Any

import numpy as np

import hil
from hil.chip import LdpuRegisters, PulseBatch
from protocols.mapping import COUNTS_PER_US

#: ADC counts per (PWM LSB x verify count): any positive gain; the column affine absorbs it.
IDEAL_GAIN = 0.25


class IdealChip(hil.Chip):
    """``counts = rint(IDEAL_GAIN x @ G)`` with G exactly what ``program_weights`` set (no noise, no drift).

    Only the statistical fast path programs it (pulses are accepted and ignored); verify reads return G.
    """

    resume_by_reexecution = True

    def __init__(self, geometry: hil.Geometry) -> None:
        self.geometry = geometry
        g = geometry
        self._g = np.zeros((g.n_cores, g.n_rows, g.n_cols))
        self._scale = np.ones((g.n_cores, g.n_cols), np.float16)
        self._offset = np.zeros((g.n_cores, g.n_cols), np.float16)
        self._relu = np.zeros(g.n_cores, bool)
        self._t = 0.0

    @property
    def info(self) -> hil.ChipInfo:
        return hil.ChipInfo(backend="ideal", name="ideal test chip")

    def now(self) -> float:
        return self._t

    def _sleep(self, seconds: float) -> None:
        self._t += seconds

    def program_weights(self, cores: Any, g_weight_us: Any, devices_per_weight: int = 1) -> None:
        self._g[np.asarray(cores)] = np.asarray(g_weight_us, dtype=np.float64) * COUNTS_PER_US

    def _apply_pulses(self, batch: PulseBatch) -> None:
        self._t += 1e-6

    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray:
        g = self._g[core, row, col]
        pos = device < self.geometry.n_devices // 2
        first = (device == 0) | (device == self.geometry.n_devices // 2)
        return np.rint(np.where(first, np.where(pos, np.clip(g, 0, None), np.clip(-g, 0, None)), 0.0)).astype(np.int32)

    def _read_cells(self, core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        return np.rint(self._g[core, row, col]).astype(np.int32)

    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> Any:
        xs = np.asarray(x, dtype=np.float64)
        counts = np.rint(IDEAL_GAIN * np.einsum("sbr,src->sbc", xs, self._g[cores]))
        self._t += 1e-6
        if output == "adc":
            return counts.astype(np.int32)
        y = (counts.astype(np.float32) * self._scale[cores][:, None, :].astype(np.float32)).astype(np.float16).astype(np.float32)
        y = (y + self._offset[cores][:, None, :].astype(np.float32)).astype(np.float16).astype(np.float32)
        y = np.where(self._relu[cores][:, None, None] & (y < 0), 0.0, y)
        return np.clip(np.rint(y), -128, 127).astype(np.int8)

    def _set_ldpu(self, cores: np.ndarray, regs: LdpuRegisters) -> None:
        self._scale[cores], self._offset[cores], self._relu[cores] = regs.scale, regs.offset, regs.relu

    def _get_ldpu(self, cores: np.ndarray) -> LdpuRegisters:
        return LdpuRegisters(self._scale[cores].copy(), self._offset[cores].copy(), self._relu[cores].copy())
