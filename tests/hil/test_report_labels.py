"""Generic report panels use the declarations: x column, labelled axes with units, labelled colour
bars, string values in the order logged; every figure carries the run id."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hil.report import _panel, make_report, stamp_run_id
from hil.runs import RunStart, RunWriter
from hil.runs.reader import StreamInfo


def png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG."""
    data = path.read_bytes()
    pos, out = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"tEXt":
            k, _, v = body.partition(b"\0")
            out[k.decode()] = v.decode("latin-1")
        elif kind == b"zTXt":
            k, _, rest = body.partition(b"\0")
            out[k.decode()] = zlib.decompress(rest[1:]).decode("latin-1")
        pos += 12 + n
    return out


def test_panels_are_labelled_with_the_declared_units() -> None:
    info = StreamInfo(units={"amp": "uA", "counts": "ADC counts"}, long_names={"counts": "verify read"},
                      dims={"counts": ("device",), "amp": (), "stage": ()}, row_dim="row", x="amp")
    x = np.array([100.0, 200.0, 300.0])
    fig = Figure()
    ax = fig.add_subplot(1, 3, 1)
    _panel(ax, "counts", np.arange(6).reshape(3, 2), info, x, "amp [uA]")
    assert ax.get_xlabel() == "amp [uA]" and ax.get_ylabel() == "verify read [ADC counts]"
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), x)
    ax = fig.add_subplot(1, 3, 2)
    _panel(ax, "counts", np.arange(60).reshape(30, 2), info, np.arange(30.0), "amp [uA]")
    assert ax.get_ylabel() == "device" and fig.axes[-1].get_ylabel() == "verify read [ADC counts]"  # the colour bar
    ax = fig.add_subplot(1, 3, 3)
    _panel(ax, "stage", np.array(["before", "after", "before", "drift"]), info, x, "")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["before", "after", "drift"]


def test_every_figure_of_a_report_carries_the_run_id(tmp_path: Path, cli) -> None:
    w = RunWriter(tmp_path / "labelled.h5", RunStart(run_id="labelled", protocol="not-installed"))
    w.declare("s", units={"t_s": "s"}, x="t_s")
    for i in range(5):
        w.log("s", t_s=float(i * i), v=float(i))
    w.close(status="success")
    paths, _ = make_report(tmp_path / "labelled.h5", tmp_path / "png")
    assert paths and all(png_text(p)["Source"] == "hil run labelled" for p in paths)
    run = cli("run", "mvm-sweep", "--chip", "emulator:hermes,cores=2,rows=16,cols=16", "--set", "batch=8", "--set", "repeats=1",
              "--out", str(tmp_path), "--json")
    report = cli("report", run.json()["path"], "--json")
    assert report.code == 0 and report.json()["warnings"] == []
    for p in map(Path, report.json()["plots"]):
        assert png_text(p).get("Source") == f"hil run {run.json()['run_id']}", p.name
    stamp_run_id(p, "again")  # stamping twice keeps a valid PNG
    assert png_text(p)["Source"] == "hil run again"
