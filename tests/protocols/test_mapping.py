"""Tiling, per-core Gmax mapping, weight sources."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from pydantic import ValidationError

from hil import ChipInputError, Geometry
from protocols.mapping import (
    WeightSpec,
    bitline_currents_ua,
    check_weights,
    core_gmax,
    load_weight_file,
    map_to_conductance,
    merge_tiles,
    select_cores,
    split_tiles,
    tile_layout,
    weight_tiles,
)


def test_tile_layout_matches_the_paper_example() -> None:
    # [NE23 Methods]: 2016 x 224 -> 8 equal tiles of 252 x 224.
    layout = tile_layout((2016, 224))
    assert layout.n_tiles == 8
    assert {t.shape for t in layout.tiles} == {(252, 224)}


def test_split_and_merge_round_trip_with_zero_padding() -> None:
    w = np.random.default_rng(0).normal(size=(300, 520))
    tiles, layout = split_tiles(w)
    assert tiles.shape == (2 * 3, 256, 256)
    assert max(t.shape[1] for t in layout.tiles) - min(t.shape[1] for t in layout.tiles) <= 1
    first = layout.tiles[0]
    assert np.all(tiles[0, first.shape[0]:, :] == 0) and np.all(tiles[0, :, first.shape[1]:] == 0)
    np.testing.assert_array_equal(merge_tiles(tiles, layout), w)


def test_map_to_conductance_uses_each_core_own_wmax() -> None:
    w = np.zeros((3, 4, 4))
    w[0, 0, 0], w[0, 1, 1] = 2.0, -1.0
    w[1, 2, 3] = -0.5
    g, wmax = map_to_conductance(w, np.array([80.0, 160.0, 80.0]))
    assert g[0, 0, 0] == 80.0 and g[0, 1, 1] == -40.0
    assert g[1, 2, 3] == -160.0
    assert np.all(g[2] == 0) and wmax[2] == 1.0  # an all-zero tile stays zero
    np.testing.assert_allclose(g[:2] * wmax[:2, None, None] / np.array([80.0, 160.0])[:, None, None], w[:2])


def test_core_gmax_keeps_the_worst_bitline_current_at_the_limit() -> None:
    w = np.ones((1, 256, 4))
    free = core_gmax(w, 80.0)
    bound = core_gmax(w, 80.0, bitline_limit_ua=100.0)
    assert free[0] == 80.0 and bound[0] < 80.0
    g, _ = map_to_conductance(w, bound)
    assert bitline_currents_ua(g).max() == pytest.approx(100.0)


def test_bitline_currents_of_inputs_take_the_largest_4phase_window() -> None:
    g = np.array([[[80.0], [-80.0]]])  # one positive and one negative cell in a column
    x = np.array([[127, 0], [127, 127]])
    cur = bitline_currents_ua(g, x)
    one = 0.2 * 80.0 / (80 / 10.35)  # one full cell at full input: v_read x G
    np.testing.assert_allclose(cur[0, :, 0], [one, one])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_with_their_position(bad: float) -> None:
    w = np.zeros((3, 3))
    w[1, 2] = bad
    with pytest.raises(ChipInputError, match=r"non-finite.*\(1, 2\)"):
        check_weights(w)


def test_weight_files_npy_and_hdf5(tmp_path) -> None:
    w = np.random.default_rng(1).normal(size=(10, 7))
    np.save(tmp_path / "w.npy", w)
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["layer1/weight"] = w
    np.testing.assert_array_equal(load_weight_file(tmp_path / "w.npy"), w)
    np.testing.assert_array_equal(load_weight_file(tmp_path / "w.h5", "layer1/weight"), w)
    with pytest.raises(ChipInputError, match="layer1/weight"):
        load_weight_file(tmp_path / "w.h5", "nope")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ChipInputError, match="no plain numeric array"):
        load_weight_file(tmp_path / "obj.npy")
    with pytest.raises(ChipInputError, match="does not exist"):
        load_weight_file(tmp_path / "missing.npy")


def test_weight_tiles_from_a_file_and_too_few_cores(tmp_path) -> None:
    geo = Geometry(n_cores=4, n_rows=8, n_cols=8)
    w = np.arange(20 * 8, dtype=float).reshape(20, 8) + 1
    np.save(tmp_path / "w.npy", w)
    spec = WeightSpec(kind="file", path=str(tmp_path / "w.npy"))
    tiles = weight_tiles(spec, geo, 4, np.random.default_rng(0))
    assert tiles.shape == (4, 8, 8) and np.all(tiles[3] == 0)  # 20 rows -> 3 tiles of 7/7/6 rows
    with pytest.raises(ChipInputError, match="needs 3 cores"):
        weight_tiles(spec, geo, 2, np.random.default_rng(0))


def test_random_weights_have_the_requested_sparsity() -> None:
    geo = Geometry(n_cores=2, n_rows=64, n_cols=64)
    w = weight_tiles(WeightSpec(kind="normal", sparsity=0.5), geo, 2, np.random.default_rng(0))
    assert abs(np.mean(w == 0) - 0.5) < 0.03 and np.abs(w).max() <= 3.0


def test_weight_spec_and_core_selection_errors() -> None:
    with pytest.raises(ValidationError, match="needs `path`"):
        WeightSpec(kind="file")
    with pytest.raises(ValidationError):
        WeightSpec(kind="uniform", sparsity=1.0)
    geo = Geometry(n_cores=4, n_rows=8, n_cols=8)
    with pytest.raises(ChipInputError, match=r"contains 4; allowed \[0, 3\]"):
        select_cores([0, 4], geo)
    with pytest.raises(ChipInputError, match="repeats"):
        select_cores([1, 1], geo)
