"""The lab chip over the real driver path: LabChip -> pyvisa-py -> TCP -> emulator board server."""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
import pytest
import torch

import hil
from drivers.board import LabChip, normalize_address
from drivers.instrument import default_resource_manager
from emulator import EmulatedChip
from emulator.server import ServerThread
from hil.chips import backend_class
from hil.errors import ChipCommunicationError, ChipInputError
from hil.protocol import MemoryRunLog

from .conftest import SMALL, free_port, start_server_process
from .helpers import MiniConfig, mini_protocol, same_logs


@pytest.fixture
def served():
    """A board server (in a thread) with a small emulated chip of seed 11, and a lab chip on it."""
    with ServerThread(EmulatedChip(seed=11, geometry=SMALL)) as srv:
        chip = LabChip(srv.address, timeout_s=20)
        yield srv, chip
        chip.close()


def test_protocol_is_bit_identical_in_process_and_over_the_socket(served):
    srv, lab = served
    local_run, lab_run = MemoryRunLog(seed=4), MemoryRunLog(seed=4)
    expected = mini_protocol(EmulatedChip(seed=11, geometry=SMALL), MiniConfig(), local_run)
    got = mini_protocol(lab, MiniConfig(), lab_run)
    assert got == expected
    same_logs(local_run, lab_run)
    assert lab_run.column("final", "y_adc").dtype == np.int32 and lab_run.column("final", "y_ldpu").dtype == np.int8
    assert srv.server.stats["replayed"] == 0 and srv.server.stats["errors"] == 0


def test_bit_identical_through_a_separate_server_process(server_process):
    port = free_port()
    server_process.append(start_server_process(port, seed=2))
    lab = LabChip(f"127.0.0.1:{port}", timeout_s=30)
    local = EmulatedChip(seed=2, geometry=SMALL)
    runs = []
    for chip in (local, lab):
        run = MemoryRunLog(seed=9)
        runs.append((mini_protocol(chip, MiniConfig(rounds=2), run), run))
    lab.close()
    assert runs[0][0] == runs[1][0]
    same_logs(runs[0][1], runs[1][1])


def test_the_real_program_verify_protocol_runs_over_the_socket(served):
    pv = pytest.importorskip("protocols.program_verify")
    _, lab = served
    cfg = pv.ProgramVerifyConfig(max_iterations=4, eval_inputs=32)
    out = {}
    for name, chip in (("local", EmulatedChip(seed=11, geometry=SMALL)), ("lab", lab)):
        run = MemoryRunLog(seed=1)
        summary = pv.program_verify_protocol(chip, cfg, run)
        summary.pop("wall_s", None)
        out[name] = (summary, run)
    assert out["local"][0] == out["lab"][0]
    same_logs(out["local"][1], out["lab"][1])


def test_torch_in_torch_out_and_identical(served):
    _, lab = served
    local = EmulatedChip(seed=11, geometry=SMALL)
    x = torch.randint(-127, 128, (4, SMALL.n_rows), dtype=torch.int8)
    y_lab, y_local = lab.mvm(x, cores=[1]), local.mvm(x, cores=[1])
    assert isinstance(y_lab, torch.Tensor) and y_lab.dtype == torch.int32
    assert torch.equal(y_lab, torch.as_tensor(y_local))


def test_info_geometry_and_idn(served):
    srv, lab = served
    assert lab.geometry == SMALL
    info = lab.info
    assert info.backend == "lab" and info.serial == "seed=11"
    assert info.details["board_backend"] == "emulator" and info.details["boot_id"] == srv.server.boot_id
    res = default_resource_manager().open_resource(srv.address, read_termination="\n", write_termination="\n")
    try:
        assert res.query("*IDN?").startswith("hil,emulator board,seed=11,")
    finally:
        res.close()


def test_bad_input_is_refused_before_anything_is_sent(served):
    _, lab = served
    sent = lab.stats["requests"]
    with pytest.raises(ChipInputError, match="core=2 is out of range"):
        lab.apply_pulses([2], 0, 0, 0, kind=hil.PulseKind.SET, amplitude_ua=125.0, width_ns=250.0)
    with pytest.raises(ChipInputError, match="x contains 200"):
        lab.mvm(np.full((1, SMALL.n_rows), 200))
    with pytest.raises(hil.SafetyLimitError, match=r"write-head limit of 800\.0 uA"):
        lab.apply_pulses([0], 0, 0, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=900.0, width_ns=100.0)
    assert lab.stats["requests"] == sent


def test_board_side_errors_come_back_as_the_same_exceptions(served):
    _, lab = served
    with pytest.raises(ChipInputError, match=r"cores=5 is out of range; allowed \[0, 1\]"):
        lab._request("LDPU.GET", {"cores": np.array([5])})
    with pytest.raises(ChipCommunicationError, match=r"refused FROB \(UNKNOWN\): unknown command 'FROB'"):
        lab._request("FROB")
    with pytest.raises(ChipCommunicationError, match=r"\(PROTOCOL\): SLEEP needs parameter 's'"):
        lab._request("SLEEP")
    assert lab.now() == 0.0  # still usable afterwards


def test_station_limit_below_the_chips_own(served):
    srv, _ = served
    trips = []
    lab = LabChip(srv.address, max_pulse_ua=300.0, trip_handler=lambda chip, why: trips.append(why))
    with pytest.raises(hil.SafetyLimitError, match=r"pulse 1: amplitude_ua=350\.0 exceeds the station write-head limit of 300\.0"):
        lab.apply_pulses([0, 0], [0, 1], 0, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=[200.0, 350.0], width_ns=125.0)
    assert len(trips) == 1
    lab.close()


def test_backend_registry_and_spec(served, caplog):
    srv, _ = served
    cls = backend_class("lab")
    assert cls is LabChip
    with caplog.at_level(logging.WARNING, logger="drivers.board"):
        chip = cls.from_spec(f"127.0.0.1:{srv.port}", seed=12)
    assert "requested seed 12, but the board's emulator runs seed 11" in caplog.text
    assert chip.now() == 0.0
    chip.close()
    with pytest.raises(ChipCommunicationError, match="is closed"):
        chip.now()


@pytest.mark.parametrize(("text", "expected"), [("127.0.0.1:5025", "TCPIP0::127.0.0.1::5025::SOCKET"), ("TCPIP0::h::1::SOCKET", "TCPIP0::h::1::SOCKET")])
def test_address_forms(text, expected):
    assert normalize_address(text) == expected


def test_bad_address():
    with pytest.raises(ChipInputError, match="neither 'HOST:PORT' nor a VISA address"):
        LabChip("localhost")


def test_no_board_fails_clearly_after_the_reconnect_budget():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ChipCommunicationError, match=rf"board at TCPIP0::127.0.0.1::{port}::SOCKET did not answer HELLO .* attempt\(s\) over 0.5 s; last error: ConnectionRefusedError"):
        LabChip(f"127.0.0.1:{port}", reconnect_timeout_s=0.5)
    assert time.monotonic() - t0 < 3.0


def test_a_silent_board_times_out_as_configured():
    listener = socket.create_server(("127.0.0.1", 0))
    conns = []
    threading.Thread(target=lambda: [conns.append(listener.accept()) for _ in range(100)], daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(ChipCommunicationError, match="did not answer HELLO"):
        LabChip(f"127.0.0.1:{listener.getsockname()[1]}", connect_timeout_s=0.2, reconnect_timeout_s=0.3)
    elapsed = time.monotonic() - t0
    listener.close()
    assert 0.2 <= elapsed < 3.0
    assert len(conns) >= 2  # it retried on a fresh connection


def test_bad_timeouts_are_refused():
    with pytest.raises(ChipInputError, match=r"timeout_s=0\.0 is out of range"):
        LabChip("127.0.0.1:1", timeout_s=0.0)


@pytest.mark.parametrize("fast_io", [True, False])
def test_large_messages_identical_with_and_without_the_fast_socket_path(served, fast_io):
    srv, _ = served
    lab = LabChip(srv.address, fast_io=fast_io)
    local = EmulatedChip(seed=11, geometry=SMALL)
    rng = np.random.default_rng(5)
    c, r, k, d = hil.grid([0, 1], range(SMALL.n_rows), range(SMALL.n_cols), range(4))
    amps = rng.uniform(150.0, 650.0, c.size)  # float64 that float32 cannot hold: 8 bytes per pulse, > 64 KiB
    x = rng.integers(-127, 128, (2, 1500, SMALL.n_rows)).astype(np.int8)  # 96 KiB request, 384 KiB reply
    for chip in (local, lab):
        chip.apply_pulses(c, r, k, d, kind=hil.PulseKind.PARTIAL, amplitude_ua=amps, width_ns=125.0)
    y_local, y_lab = local.mvm(x), lab.mvm(x)
    assert y_lab.dtype == np.int32 and y_lab.flags.writeable and y_lab.flags.owndata
    np.testing.assert_array_equal(y_lab, y_local)
    y2 = lab.mvm(x[:, :10])  # a later reply must not overwrite the earlier array (reused receive buffer)
    np.testing.assert_array_equal(y_lab, y_local)
    np.testing.assert_array_equal(y2, local.mvm(x[:, :10]))
    lab.close()


def test_bench_smoke_reports_identical_results_and_timings():
    from tests.benchmarks.bench_drivers import run_bench

    out = run_bench(cores=2, rows=32, cols=32, batches=(1, 8), calls={1: 3, 8: 3})
    assert out["bit_identical"] is True
    assert [(r["batch"], r["inputs"]) for r in out["results"]] == [(1, "shared"), (1, "per_core"), (8, "shared"), (8, "per_core")]
    for r in out["results"]:
        assert 0 < r["board_exec_s"] < r["lab_call_s"] and r["inproc_call_s"] > 0
        assert r["lab_mvm_per_s"] == pytest.approx(1 / r["lab_call_s"])
    assert out["programming"]["pulses"] == 2 * 32 * 32 * 2


def test_hil_emulate_forwards_to_the_server_and_refuses_bad_arguments(capsys):
    from hil.cli import main as hil_main

    assert hil_main(["emulate", "--port", "70000"]) == 2
    assert "--port 70000 is not a TCP port" in capsys.readouterr().err
    assert hil_main(["emulate", "--port", "0", "--preset", "no-such-preset"]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err


def test_server_command_line_serves_until_terminated(server_process):
    import signal

    port = free_port()
    proc = start_server_process(port, seed=4)
    server_process.append(proc)
    chip = LabChip(f"127.0.0.1:{port}")
    assert chip.info.serial == "seed=4"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    chip.close()
