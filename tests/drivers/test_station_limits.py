"""Station files: bounded YAML aliases, and the board token from a station file."""

from __future__ import annotations

import time

import pytest

from drivers.board import BoardAuthError, LabChip
from drivers.station import Station, StationFileError, load_station_config
from hil.config import BoundedSafeLoader

from .conftest import SMALL
from .test_station import LIMITS, write

TOKEN = "station-token-0123456789abcdef"


def laughs(levels: int) -> str:
    """A 'billion laughs' document: each level lists the previous one nine times."""
    lines = ["name: x", 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_nested_aliases_are_refused_quickly(tmp_path):
    text = laughs(9)  # about 9**9 = 387 million nodes once expanded, from a few hundred bytes
    assert len(text) < 500
    t0 = time.monotonic()
    with pytest.raises(StationFileError, match=r"refused: the document expands to more than 100000 nodes"):
        load_station_config(write(tmp_path, text))
    assert time.monotonic() - t0 < 1.0


def test_many_aliases_and_recursive_aliases_are_refused(tmp_path):
    many = "name: x\na: &a 1\nb: [" + ",".join(["*a"] * 101) + "]\n"
    with pytest.raises(StationFileError, match="more than 100 aliases"):
        load_station_config(write(tmp_path, many))
    with pytest.raises(StationFileError, match="recursive alias"):
        load_station_config(write(tmp_path, "name: x\na: &a [1, *a]\n"))


def test_a_few_aliases_still_work(tmp_path):
    text = "name: ok\nsimulated: true\n" + LIMITS.replace("limits:", "limits: &lim") + "instruments: {}\nextra_limits: *lim\n"
    with pytest.raises(StationFileError, match="extra_limits: Extra inputs are not permitted"):
        load_station_config(write(tmp_path, text))  # the alias is expanded fine; the unknown key is the error
    assert BoundedSafeLoader.max_aliases == 100


def test_the_board_token_comes_from_the_station_file_and_a_simulated_board_requires_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HIL_BOARD_TOKEN", raising=False)
    monkeypatch.delenv("HIL_BOARD_TOKEN_FILE", raising=False)
    (tmp_path / "board.token").write_text(TOKEN + "\n")
    (tmp_path / "board.token").chmod(0o600)
    text = ("name: tok\nsimulated: true\n" + LIMITS + "board:\n  address: '127.0.0.1:1'\n  token_file: board.token\n"
            f"  emulator: {{seed: 0, cores: {SMALL.n_cores}, rows: {SMALL.n_rows}, cols: {SMALL.n_cols}}}\n")
    config = load_station_config(write(tmp_path, text))
    assert config.board is not None and config.board.token_file == tmp_path / "board.token"  # relative to the file
    with Station(config) as st:
        chip = st.chip()
        assert chip.now() == 0.0
        assert TOKEN not in repr(chip.info.model_dump()) and TOKEN not in repr(st.snapshot()) and TOKEN not in repr(config)
        with pytest.raises(BoardAuthError, match="requires a token"):
            LabChip(chip.address)  # the simulated board asks for it too
