"""The native ADC chain (emulator/adc_kernel.c via emulator/native.py): the same counts as the torch
chain for the same noise, a standard normal generator, results independent of threads and batch
path, the read-noise statistics of the eager chain, and a clear error where no compiler is found."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import emulator.datapath as datapath
from emulator import EmulatedChip, native, numerics, periphery
from emulator.spec import resume_spec
from hil import Geometry
from hil.errors import ChipInputError

GEO = Geometry(n_cores=4, n_rows=64, n_cols=37)  # an odd column count: the generator's tail of 4


@pytest.fixture(autouse=True)
def _needs_native() -> None:
    why = native.why_unavailable()
    if why is not None:
        pytest.skip(f"{why} (CI installs gcc in .ci/run)")


def _chip(dtype: str = "float32", chain: str = "native", geometry: Geometry = GEO, seed: int = 3,
          **noise: float) -> EmulatedChip:
    over: dict = {"numerics": {"matmul_dtype": dtype, "adc_chain": chain}}
    if noise:
        over["noise"] = noise
    chip = EmulatedChip("hermes", seed=seed, geometry=geometry, overrides=over)
    w = np.random.default_rng(seed).uniform(-15, 15, (geometry.n_cores, geometry.n_rows, geometry.n_cols))
    chip.program_weights(range(geometry.n_cores), w.astype(np.float32))
    return chip


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["4phase", "1phase"])
@pytest.mark.parametrize("batch", [1, 5, 40])
def test_native_chain_gives_the_reference_counts_for_the_same_noise(dtype: str, mode: str, batch: int) -> None:
    """Given the noise, the C chain computes periphery.adc_reference's counts, on every dtype and on the
    strided views of the stacked small-batch product."""
    chip = _chip(dtype, chain="eager")
    chip._refresh(chip._all_cores)
    x = torch.from_numpy(np.random.default_rng(batch).integers(-127, 128, (GEO.n_cores, batch, GEO.n_rows)).astype(np.int8))
    stacked = batch <= datapath.STACK_MAX_BATCH
    mats = (chip._w3,) if stacked else (chip._w_diff, chip._w_sum, chip._w_var)
    d, s, var = chip._products(x, mats, mode)
    if stacked and mode == "4phase":
        assert d.stride(2) != 1  # the kernel reads the transposed views as they are
    noise = torch.from_numpy(np.random.default_rng(7).standard_normal(d.shape).astype(np.float32))
    want = periphery.adc_reference(d, s, var, noise, chip._adc_gain, chip._adc_offset, chip.preset, mode)
    got = periphery.adc_native(d, s, var, chip._adc_gain, chip._adc_offset, chip.preset, mode, 1, 2, noise=noise)
    assert got.dtype == torch.int32 and got.shape == want.shape
    diff = (got - want.to(torch.int32)).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3  # float rounding at a floor, rarely
    assert float(want.abs().mean()) > 10  # real counts were compared


def test_generator_is_philox4x32_10() -> None:
    """Known answers of Philox4x32-10 (the test vectors published with Random123, Salmon et al. SC11)."""
    assert native.philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert native.philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert native.philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def test_generator_draws_standard_normals() -> None:
    z = native.normals(1 << 20, first=0, nonce=12345, key=678).numpy().astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1.0) < 5 * math.sqrt(0.5 / n)
    assert abs(stats.kurtosis(z, fisher=False) - 3.0) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z[: 1 << 18], "norm").pvalue > 1e-3
    for k, p in ((2.0, 0.0455003), (3.0, 0.0026998), (4.0, 6.334e-5)):  # the tails, not only the moments
        assert abs(np.mean(np.abs(z) > k) - p) < 6 * math.sqrt(p / n), k
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / math.sqrt(n)  # neighbours (a Box-Muller pair) independent
    assert abs(np.corrcoef(z[0::2] ** 2, z[1::2] ** 2)[0, 1]) < 5 / math.sqrt(n / 2)
    # counter-based: a block starting at counter 1000 is the same numbers wherever it is drawn
    again = native.normals(8, first=1000, nonce=12345, key=678).numpy()
    np.testing.assert_array_equal(again, z[4000:4032].astype(np.float32))
    assert not np.array_equal(native.normals(8, first=1000, nonce=12346, key=678).numpy(), again)


def test_counts_do_not_depend_on_the_thread_count() -> None:
    threads = torch.get_num_threads()
    x_big = np.random.default_rng(1).integers(-127, 128, (GEO.n_cores, 300, GEO.n_rows)).astype(np.int8)
    x_small = x_big[:, :3]
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            chip = _chip("bfloat16")
            results.append((chip.mvm(x_big), chip.mvm(x_small), chip.mvm(x_big, mode="1phase")))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_small_batch_kernel_equals_the_matmul_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """In float32 the fused small-batch kernel (products in C) and the matmul path give the same counts
    (same noise counters), for core subsets in any order, shared inputs and both modes; with rows that
    are not a multiple of 32 too."""
    for geometry in (GEO, Geometry(n_cores=3, n_rows=40, n_cols=16)):
        a, b = _chip(geometry=geometry), _chip(geometry=geometry)
        x = np.random.default_rng(2).integers(-127, 128, (3, 5, geometry.n_rows)).astype(np.int8)
        shared = x[0]
        small = [a.mvm(x, cores=[2, 0, 1]), a.mvm(shared, cores=[1, 2]), a.mvm(x, cores=[0, 2, 1], mode="1phase")]
        monkeypatch.setattr(datapath, "STACK_MAX_BATCH", 0)  # every batch through the matmuls and adc_counts
        big = [b.mvm(x, cores=[2, 0, 1]), b.mvm(shared, cores=[1, 2]), b.mvm(x, cores=[0, 2, 1], mode="1phase")]
        monkeypatch.undo()
        for s, g in zip(small, big, strict=True):
            np.testing.assert_array_equal(s, g)
            assert np.abs(s).mean() > 5


def test_bfloat16_small_kernel_agrees_with_the_matmul_path_within_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """In bf16 the small kernel keeps its products in float32 where the matmul path rounds them to
    bf16 (0.4 %): counts agree within one count."""
    a, b = _chip("bfloat16"), _chip("bfloat16")
    x = np.random.default_rng(4).integers(-127, 128, (GEO.n_cores, 6, GEO.n_rows)).astype(np.int8)
    small = a.mvm(x)
    monkeypatch.setattr(datapath, "STACK_MAX_BATCH", 0)
    big = b.mvm(x)
    assert np.abs(small.astype(int) - big).max() <= 1 and np.abs(small).mean() > 5


def test_same_seed_same_counts_and_each_call_draws_new_noise() -> None:
    x = np.random.default_rng(5).integers(-127, 128, (2, GEO.n_rows)).astype(np.int8)
    a, b = _chip(seed=9), _chip(seed=9)
    ya = [a.mvm(x) for _ in range(3)]
    yb = [b.mvm(x) for _ in range(3)]
    for p, q in zip(ya, yb, strict=True):
        np.testing.assert_array_equal(p, q)
    assert (ya[0] != ya[1]).mean() > 0.2  # recurrent read noise: a fresh draw per MVM
    assert (ya[0] != _chip(seed=10).mvm(x)).mean() > 0.2


def test_native_read_noise_has_the_eager_chains_statistics() -> None:
    """Repeated MVMs of one input: per-output mean and spread of the native chain match the torch chain's
    (the two differ in their draws, not in their distribution)."""
    geometry = Geometry(n_cores=2, n_rows=64, n_cols=32)
    x = np.random.default_rng(6).integers(-127, 128, (1, geometry.n_rows)).astype(np.int8)
    reps = 400
    ys = {}
    for chain in ("eager", "native"):
        chip = _chip(chain=chain, geometry=geometry, seed=11, fast_mvm_scale=4.0)  # noise well above a count
        ys[chain] = np.stack([chip.mvm(np.repeat(x, 8, axis=0)) for _ in range(reps // 8)]).reshape(-1, 2, 8, 32)
    e, n = (ys[c].transpose(0, 2, 1, 3).reshape(-1, 2, 32).astype(float) for c in ("eager", "native"))
    sd_e, sd_n = e.std(0), n.std(0)
    assert sd_e.mean() > 2.0  # the comparison is of real noise
    assert abs(sd_n.mean() / sd_e.mean() - 1) < 0.03
    se = np.sqrt(sd_e**2 / e.shape[0] + sd_n**2 / n.shape[0])
    z = (n.mean(0) - e.mean(0)) / se
    assert np.abs(z).max() < 5 and abs(z.mean()) < 3 / math.sqrt(z.size)


def test_output_noise_presets_run_on_the_native_chain() -> None:
    a = EmulatedChip("hermes", seed=1, geometry=GEO, overrides={
        "numerics": {"adc_chain": "native"}, "noise": {"output_noise_counts": 3.0, "output_noise_recurrence": "per_mvm"}})
    x = np.zeros((4, GEO.n_rows), np.int8)
    y = np.concatenate([a.mvm(x), a.mvm(x[:1].repeat(20, 0))], axis=1).astype(float)
    assert 2.0 < y.std() < 4.0 and abs(y.mean()) < 0.5  # only output noise on zero inputs


def test_resume_pins_the_native_chain() -> None:
    info = {"details": {"numerics": {"matmul_dtype": "bfloat16", "adc_chain": "native"}}}
    assert resume_spec("hermes,cores=2", info) == "hermes,cores=2,matmul=bfloat16,chain=native"
    assert resume_spec("hermes,chain=eager", info) == "hermes,chain=eager,matmul=bfloat16"


def test_without_a_compiler_native_is_refused_by_name_and_auto_falls_back(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    why = native.why_unavailable()
    assert why is not None and "apt-get install gcc" in why and "no-such-cc" in why
    with pytest.raises(ChipInputError, match=r"chain=native.*apt-get install gcc"):
        EmulatedChip("hermes", seed=0, geometry=GEO, overrides={"numerics": {"adc_chain": "native"}})
    table = tmp_path / "numerics.json"
    monkeypatch.setenv("HIL_NUMERICS_TABLE", str(table))
    cpu = torch.device("cpu")
    numerics.write_entry(cpu, {"choice": "float32", "adc_chain": "native"})
    chip = EmulatedChip("hermes", seed=0, geometry=GEO)  # the table's choice cannot be built any more
    assert chip.info.details["numerics"]["adc_chain"] == "eager"
    table.unlink()
    numerics.write_entry(cpu, {"choice": "float32"})
    assert numerics.resolve_adc_chain("auto", cpu) == "eager"  # a first chip without a compiler
    assert "apt-get install gcc" in numerics.table_entry(cpu)["adc_chain_source"]


@pytest.mark.parametrize("flags", [[], ["-fopenmp"], ["-march=native"]], ids=["plain", "openmp", "no-openmp"])
def test_other_builds_give_the_same_counts(flags: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The builds a machine may fall back to (no OpenMP: rows split over Python threads; no -march:
    no bf16 dot instruction, portable vector code) give the default build's counts: exactly in
    float32, within a count in bfloat16 (another summation order)."""
    x = np.random.default_rng(8).integers(-127, 128, (GEO.n_cores, 6, GEO.n_rows)).astype(np.int8)
    x_big = np.random.default_rng(8).integers(-127, 128, (GEO.n_cores, 70, GEO.n_rows)).astype(np.int8)
    geo40 = Geometry(n_cores=2, n_rows=40, n_cols=16)  # rows not a multiple of 32: the generic dot
    x40 = np.random.default_rng(8).integers(-127, 128, (2, 3, 40)).astype(np.int8)

    def counts() -> list[np.ndarray]:
        out = []
        for dtype in ("float32", "bfloat16"):
            chip, small = _chip(dtype), _chip(dtype, geometry=geo40)
            out += [chip.mvm(x), chip.mvm(x_big), chip.mvm(x, mode="1phase"), small.mvm(x40)]
        return out

    want = counts()
    monkeypatch.setattr(native, "_ARCH_FLAGS", (flags,))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.available(), native.why_unavailable()
    assert bool(native._lib.hil_adc_openmp()) == ("-fopenmp" in flags)
    assert list((tmp_path / "hil" / "kernels").glob("adc-*.so"))  # built into the cache, not found elsewhere
    assert not list((tmp_path / "hil" / "kernels").glob(".adc-*"))  # no temporary files left
    got = counts()
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        if i < 4:
            np.testing.assert_array_equal(a, b, err_msg=f"float32 #{i}")
        else:
            assert np.abs(a.astype(int) - b).max() <= 1, f"bfloat16 #{i}"


def test_a_build_killed_midway_leaves_nothing_that_lasts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed while compiling leaves its temporary file; the next build removes it once it is
    an hour old, and never takes it for a library."""
    import os
    import time

    kernels = tmp_path / "hil" / "kernels"
    kernels.mkdir(parents=True)
    old, fresh = kernels / ".adc-killed.so", kernels / ".adc-building.so"
    old.write_bytes(b"half a library")
    fresh.write_bytes(b"another build, still running")
    os.utime(old, (time.time() - 7200,) * 2)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.available(), native.why_unavailable()
    assert not old.exists() and fresh.exists()
