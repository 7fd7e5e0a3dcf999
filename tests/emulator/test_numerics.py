"""The emulator's speed paths give the same answers: the dtype table, the stacked small-batch matmul,
the cache-sized ADC chunks, the compiled ADC chain, and the narrowed (int16) journal of MVM results."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import emulator.datapath as datapath
from emulator import EmulatedChip, native, numerics, periphery
from hil import Geometry
from hil.errors import RunFileError
from hil.journal import RecordingChip
from hil.runs import RunReader
from hil.runs.writer import RunWriter

GEO = Geometry(n_cores=3, n_rows=64, n_cols=32)
EXACT = {"numerics": {"matmul_dtype": "float32", "adc_chain": "eager"}}  # the torch chain these tests check


def _chip(seed: int = 4, overrides: dict | None = None) -> EmulatedChip:
    chip = EmulatedChip("hermes", seed=seed, geometry=GEO, overrides=overrides or EXACT)
    w = np.random.default_rng(seed).uniform(-15, 15, (GEO.n_cores, GEO.n_rows, GEO.n_cols)).astype(np.float32)
    chip.program_weights(range(GEO.n_cores), w)
    return chip


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "numerics.json"
    monkeypatch.setenv("HIL_NUMERICS_TABLE", str(path))
    return path


def test_auto_dtype_is_probed_once_then_read_from_the_table(table: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_probe(device: torch.device, min_time_s: float = 0.0) -> dict:
        calls.append(str(device))
        return {"gflops": {"float32": 1.0, "bfloat16": 2.0}, "choice": "bfloat16", "shape": [1], "measured_at": 0}

    monkeypatch.setattr(numerics, "probe", fake_probe)
    cpu = torch.device("cpu")
    assert numerics.resolve("auto", cpu) == (torch.bfloat16, "probe")
    assert numerics.resolve("auto", cpu) == (torch.bfloat16, "table")
    assert calls == ["cpu"] and table.exists()
    assert numerics.resolve("float32", cpu) == (torch.float32, "preset")
    chip = EmulatedChip("hermes", seed=0, geometry=GEO)
    assert chip.matmul_dtype == "bfloat16" and chip.info.details["numerics"]["matmul_dtype"] == "bfloat16"
    pinned = EmulatedChip.from_spec("hermes,cores=2,rows=8,cols=8,matmul=float32,chain=eager")
    assert pinned.matmul_dtype == "float32" and pinned.info.details["numerics"]["adc_chain"] == "eager"
    with pytest.raises(Exception, match="matmul=float32"):
        EmulatedChip.from_spec("hermes,matmul=float16")


def test_first_table_writer_wins_and_no_table_means_float32(table: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    first = {"choice": "float32", "gflops": {}}
    assert numerics.write_entry(cpu, first) == first
    assert numerics.write_entry(cpu, {"choice": "bfloat16"}) == first  # a racing prober adopts the stored one
    assert numerics.resolve("auto", cpu) == (torch.float32, "table")
    assert numerics.write_entry(cpu, {"choice": "bfloat16"}, replace=True)["choice"] == "bfloat16"
    # No chain recorded yet: the first chip takes the native chain where the C kernel builds, and records it.
    first_chain = "native" if native.available() else "eager"
    assert numerics.resolve_adc_chain("auto", cpu) == first_chain
    assert numerics.table_entry(cpu)["adc_chain"] == first_chain
    assert numerics.write_entry(cpu, {"choice": "float32", "adc_chain": "compiled"}, replace=True)
    assert numerics.resolve_adc_chain("auto", cpu) == "compiled"  # a recorded choice (hil bench) is kept
    monkeypatch.setenv("HIL_NUMERICS_TABLE", "off")
    assert numerics.resolve("auto", cpu) == (torch.float32, "no table")
    assert numerics.resolve_adc_chain("auto", cpu) == "eager"


@pytest.mark.parametrize("mode", ["4phase", "1phase"])
def test_stacked_small_batch_matmul_equals_the_separate_matmuls(mode: str) -> None:
    chip = _chip()
    x = torch.from_numpy(np.random.default_rng(1).integers(-127, 128, (GEO.n_cores, 5, GEO.n_rows)).astype(np.int8))
    chip._refresh(chip._all_cores)
    stacked = chip._products(x, (chip._w3,), mode)
    separate = chip._products(x, (chip._w_diff, chip._w_sum, chip._w_var), mode)
    for a, b in zip(stacked, separate, strict=True):
        if a is None:
            assert b is None
            continue
        np.testing.assert_allclose(a.float().numpy(), b.float().numpy(), rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("mode", ["4phase", "1phase"])
def test_chunked_eager_adc_chain_matches_the_reference_chain(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache-sized chunks and in-place ops give the counts of the plain formula."""
    chip = _chip()
    monkeypatch.setattr(datapath, "_ADC_CHUNK", GEO.n_rows * 7)  # several chunks even on this small chip
    rng = np.random.default_rng(2)
    shape = (GEO.n_cores, 7, GEO.n_cols)
    d = torch.from_numpy(rng.normal(0, 3000, shape).astype(np.float32))
    s = d.abs() + torch.from_numpy(rng.uniform(0, 3000, shape).astype(np.float32))
    var = torch.from_numpy(rng.uniform(0, 500, shape).astype(np.float32))
    gen_state = [g.get_state() for g in chip._noise_gens]
    noise = periphery.fill_normal(torch.empty(shape), chip._noise_gens)
    want = periphery.adc_reference(d, s, var, noise, chip._adc_gain, chip._adc_offset, chip.preset, mode)
    for g, st in zip(chip._noise_gens, gen_state, strict=True):
        g.set_state(st)
    monkeypatch.setattr(chip, "_products", lambda *a: (d.clone(), s.clone() if mode == "4phase" else None, var.clone()))
    got = chip._counts(torch.zeros(1), (chip._w3,), chip._adc_gain, chip._adc_offset, mode, chip._all_cores)
    assert got.dtype == torch.int32
    diff = (got - want.to(torch.int32)).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3  # float rounding at a floor, rarely
    assert float(want.abs().mean()) > 10  # the check compared real counts, not zeros


def test_adc_chain_runs_on_any_device_type() -> None:
    """The chain is device-agnostic torch (what the CUDA path runs): 'meta' tensors go through it."""
    chip = _chip()
    shape = (GEO.n_cores, 4, GEO.n_cols)
    t = [torch.empty(shape, device="meta") for _ in range(4)]
    gain, off = chip._adc_gain.to("meta"), chip._adc_offset.to("meta")
    for mode in ("4phase", "1phase"):
        assert periphery.adc_reference(*t, gain, off, chip.preset, mode).shape == shape
    assert periphery.adc_4phase(t[0], t[1].clone(), gain, off, chip.preset).device.type == "meta"
    assert periphery.adc_1phase(t[1].clone(), gain, off, chip.preset).shape == shape


@pytest.mark.parametrize("chain", ["eager", "native"])
def test_a_run_of_cores_and_the_same_cores_gathered_give_the_same_counts(chain: str) -> None:
    """Contiguous core selections use views of the cached matrices, others gather them: the same
    products (noise off, so that row order does not matter)."""
    if chain == "native" and not native.available():
        pytest.skip(str(native.why_unavailable()))
    quiet = {"numerics": {"matmul_dtype": "float32", "adc_chain": chain}, "noise": {"read_noise_scale": 0.0}}
    a, b = _chip(overrides=quiet), _chip(overrides=quiet)
    x = np.random.default_rng(9).integers(-127, 128, (2, 20, GEO.n_rows)).astype(np.int8)
    run = a.mvm(x, cores=[1, 2])
    gathered = b.mvm(x[::-1].copy(), cores=[2, 1])[::-1]
    np.testing.assert_array_equal(run, gathered)
    assert np.abs(run).mean() > 10


def test_same_seed_gives_the_same_counts_across_batch_paths() -> None:
    """A batch of 9 (separate matmuls) and the same vectors as batches of 3 (stacked) agree on the
    noise-free part: with the read noise off the paths differ only by float rounding at a floor."""
    quiet = {"numerics": {"matmul_dtype": "float32"}, "noise": {"read_noise_scale": 0.0}}
    a, b = _chip(overrides=quiet), _chip(overrides=quiet)
    x = np.random.default_rng(3).integers(-127, 128, (9, GEO.n_rows)).astype(np.int8)
    big = a.mvm(x)
    small = np.concatenate([b.mvm(x[i : i + 3]) for i in range(0, 9, 3)], axis=1)
    assert np.abs(big - small).max() <= 1 and (big != small).mean() < 1e-2
    assert np.abs(big).mean() > 10


@pytest.mark.slow
def test_compiled_adc_chain_gives_the_eager_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile of the chain (where a compiler is present) agrees with the eager chain."""
    pytest.importorskip("torch._inductor")
    monkeypatch.setattr(datapath, "COMPILE_MIN_OUTPUTS", 0)
    for dtype in ("float32", "bfloat16"):
        eager = _chip(overrides={"numerics": {"matmul_dtype": dtype, "adc_chain": "eager"}})
        fused = _chip(overrides={"numerics": {"matmul_dtype": dtype, "adc_chain": "compiled"}})
        rng = np.random.default_rng(5)
        for batch, mode in ((1, "4phase"), (12, "4phase"), (12, "1phase")):
            x = rng.integers(-127, 128, (batch, GEO.n_rows)).astype(np.int8)
            ya, yb = eager.mvm(x, mode=mode), fused.mvm(x, mode=mode)
            assert np.abs(ya - yb).max() <= 1 and (ya != yb).mean() < 1e-3, (dtype, batch, mode)


def test_journal_stores_emulator_counts_as_int16_and_reads_them_back(tmp_path: Path) -> None:
    path = tmp_path / "narrow.h5"
    writer = RunWriter(path, {"run_id": "narrow", "protocol": "unit", "geometry_json": GEO.model_dump_json()})
    chip = _chip()
    rec = RecordingChip(chip, writer)
    x = np.random.default_rng(6).integers(-127, 128, (4, GEO.n_rows)).astype(np.int8)
    y = rec.mvm(x)
    ldpu = rec.mvm(x, output="ldpu")
    writer.close(status="success")
    with h5py.File(path, "r") as f:
        assert f["journal/mvm/y"].dtype == np.int16
    with RunReader(path) as r:
        got = r.journal.call(0).fields["y"]
        assert got.dtype == np.int32 and np.array_equal(got, y)
        assert np.array_equal(r.journal.call(1).fields["y"], ldpu)


def test_narrowed_journal_refuses_values_that_do_not_fit(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path / "n.h5", {"run_id": "n", "protocol": "unit", "geometry_json": GEO.model_dump_json()})
    with pytest.raises(RunFileError, match="cannot be stored as float32"):
        writer.narrow_table("mvm", "y", "<f4")
    with pytest.raises(RunFileError, match="allowed: none"):
        writer.narrow_table("mvm", "x", "<i2")
    writer.narrow_table("mvm", "y", "<i2")
    fields = {"x": np.zeros((1, 1, 4), np.int8), "x_shared": 0, "cores": np.array([0]), "output": 0, "mode": 0,
              "y": np.full((1, 1, 4), 40000, np.int32)}
    with pytest.raises(RunFileError, match="40000 does not fit int16"):
        writer.journal("mvm", fields, t_chip=0.0, t_wall=0.0, dt_wall=0.0)
    writer.close(status="fail")
    wide = EmulatedChip("hermes", seed=0, geometry=GEO, overrides={"adc": {"counter_bits": 20}})
    assert wide.journal_result_dtypes == {}  # 20-bit counters: the journal keeps int32


def test_refreshing_only_pulsed_cells_matches_a_whole_core_recompute() -> None:
    """After pulses on a few cells, the next MVM recomputes those cells alone; a whole-core recompute
    at the same time gives the same entries for them and the others agree within the drift tolerance."""
    from hil import PulseKind, grid

    chip = _chip(seed=8)
    chip.sleep(50.0)
    chip._refresh(chip._all_cores)
    rng = np.random.default_rng(9)
    core, row, col = grid(range(GEO.n_cores), range(GEO.n_rows), range(GEO.n_cols))
    sel = rng.random(core.size) < 0.05
    chip.apply_pulses(core[sel], row[sel], col[sel], 0, kind=PulseKind.PARTIAL,
                      amplitude_ua=rng.uniform(200, 600, int(sel.sum())), width_ns=125.0)
    assert chip._dirty.sum() == sel.sum() and np.isfinite(chip._cache_t).all()
    chip._refresh(chip._all_cores)
    assert not chip._dirty.any() and np.isfinite(chip._cache_t).all()  # no whole-core recompute
    partial = [m.clone() for m in (chip._w_diff, chip._w_sum, chip._w_var, chip._w3)]
    chip._invalidate(chip._all_cores)
    chip._refresh(chip._all_cores)
    whole = [chip._w_diff, chip._w_sum, chip._w_var]
    hit = torch.from_numpy(sel.reshape(GEO.n_cores, GEO.n_rows, GEO.n_cols))
    for a, b in zip(partial, whole, strict=False):
        assert torch.equal(a[hit], b[hit])
        np.testing.assert_allclose(a[~hit].numpy(), b[~hit].numpy(), rtol=1e-4, atol=1e-6)
        assert float(a.abs().max()) > 0
    # the stacked transposed copy of the small-batch path holds the same entries
    assert torch.equal(partial[3], torch.cat(partial[:3], -1).transpose(1, 2))
