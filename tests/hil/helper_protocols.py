"""Small deterministic protocols for the run tests (registered on import; not installed).

``test-steps`` makes a fixed sequence of chip calls and logs after each step. With the environment
variable ``HIL_TEST_KILL_AT_STEP=K`` the process SIGKILLs itself at the start of step K (after
``HIL_TEST_KILL_WAIT_S`` seconds, to let the writer flush or not): a real crash at a known point.
``HIL_TEST_INTERRUPT_AT_STEP=K`` raises KeyboardInterrupt there instead (an in-process Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil import Chip, PulseKind, RunLog, register_protocol

SMALL_CHIP = "emulator:hermes,cores=2,rows=16,cols=16"


class StepsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(12, ge=1, le=100_000)
    devices: int = Field(6, ge=1, le=1000)
    batch: int = Field(4, ge=1, le=256)
    mvm: bool = True
    sleep_s: float = Field(10.0, ge=0.0)


@register_protocol("test-steps", StepsConfig, description="deterministic chip calls, step by step (tests)")
def steps(chip: Chip, config: StepsConfig, run: RunLog) -> dict[str, Any]:
    kill_at = int(os.environ.get("HIL_TEST_KILL_AT_STEP", "-1"))
    interrupt_at = int(os.environ.get("HIL_TEST_INTERRUPT_AT_STEP", "-1"))
    g = chip.geometry
    rng = run.rng("steps")
    total = 0
    for i in range(config.steps):
        if i == kill_at:
            time.sleep(float(os.environ.get("HIL_TEST_KILL_WAIT_S", "0")))
            os.kill(os.getpid(), signal.SIGKILL)
        if i == interrupt_at:
            raise KeyboardInterrupt  # as if Ctrl-C arrived between two steps
        n = config.devices
        core = rng.integers(0, g.n_cores, n)
        row, col, dev = rng.integers(0, g.n_rows, n), rng.integers(0, g.n_cols, n), rng.integers(0, g.n_devices, n)
        amp = rng.uniform(150.0, 650.0, n)
        chip.apply_pulses(core, row, col, dev, kind=PulseKind.PARTIAL, amplitude_ua=amp, width_ns=125.0)
        counts = chip.read_devices(core, row, col, dev)
        if config.mvm:
            x = rng.integers(-127, 128, (config.batch, g.n_rows)).astype(np.int8)
            y = chip.mvm(x, [int(core[0])])[0]
        else:
            y = np.zeros((config.batch, g.n_cols), dtype=np.int32)
        chip.sleep(config.sleep_s)
        t = chip.now()
        total += int(counts.sum())
        run.log("steps", step=i, counts=counts[None], y=y[None], t_chip=t)
        run.progress(i + 1, config.steps, "steps")
    return {"steps": config.steps, "counts_sum": total}


class FailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after_calls: int = Field(2, ge=0)
    kind: str = Field("error", pattern="^(error|interrupt)$")


@register_protocol("test-fail", FailConfig, description="raises after some chip calls (tests)")
def fail(chip: Chip, config: FailConfig, run: RunLog) -> dict[str, Any]:
    for i in range(config.after_calls):
        chip.read_cells([0], [i % chip.geometry.n_rows], [0])
    run.log("before", i=config.after_calls)
    if config.kind == "interrupt":
        raise KeyboardInterrupt
    raise RuntimeError("boom: the protocol failed on purpose")
