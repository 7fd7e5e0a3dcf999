"""``hil serve`` in a real headless browser (Debian's chromium and chromedriver, driven by Selenium).

Skips where chromium or chromedriver is missing, naming the install command; CI (``.ci/run``) installs
both. One server and one browser session serve every test of the module.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hil.system_tools import require
from tests.web.conftest import HOSTILE

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
#: A drift run on the emulator that lasts several seconds and logs a row every few tens of milliseconds.
DRIFT_TIMES = "[" + ",".join(str(round(10.0 * 1.03**k, 1)) for k in range(300)) + "]"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def server(made_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``hil serve`` on a copy of the session's runs, in a subprocess: (base URL, runs folder)."""
    require(CHROMIUM, CHROMEDRIVER)
    folder = tmp_path_factory.mktemp("browser") / "runs"
    shutil.copytree(made_runs, folder)
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "serve", "--runs", str(folder), "--port", "0", "--poll", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, f"hil serve printed {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield m.group(1), folder
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(server: tuple[str, Path]) -> Iterator[object]:
    """One headless Chromium for the module, through Debian's chromedriver (no Selenium Manager, no network)."""
    pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1600",
                "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate, timeout: float, what: str, step: float = 0.1):
    t_end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def test_the_run_list_shows_ids_and_statuses(server: tuple[str, Path], browser) -> None:
    from selenium.webdriver.common.by import By

    url, folder = server
    browser.get(url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")
    seen = {r.get_attribute("data-run-id"): r.find_element(By.CSS_SELECTOR, ".run-status").text for r in rows}
    want = {p.stem for p in folder.glob("*.h5")}
    assert set(seen) == want
    assert sorted(seen.values()) == ["fail", "success", "success"]
    assert browser.execute_script("return window.__pwned") is None  # the hostile comment stayed text
    assert HOSTILE in browser.find_element(By.ID, "runs").text


def test_a_run_page_shows_its_figures_and_stream_plots(server: tuple[str, Path], browser, tmp_path: Path) -> None:
    import httpx
    from selenium.webdriver.common.by import By

    url = server[0]
    rid = httpx.get(f"{url}api/runs", params={"protocol": "drift", "status": "success"}, timeout=30).json()[0]["run_id"]
    browser.get(f"{url}runs/{rid}")
    images = browser.find_elements(By.CSS_SELECTOR, "#figures img")
    assert len(images) >= 3
    _wait(lambda: all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", im) for im in images),
          30, "the figures to load")
    plots = browser.find_elements(By.CSS_SELECTOR, ".stream-plot canvas")
    assert len(plots) == len(browser.find_elements(By.CSS_SELECTOR, "section.stream"))
    section = next(e for e in browser.find_elements(By.CSS_SELECTOR, "section.stream") if e.text.startswith("stream drift_reads"))
    _wait(lambda: section.find_element(By.CSS_SELECTOR, ".rows-info").text == "4 rows", 20, "the drift_reads plot's data")
    assert browser.execute_script("return window.__pwned") is None
    # Hovering a plot reads out the nearest point; dragging zooms; no script error on the way.
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = section.find_element(By.TAG_NAME, "canvas")
    browser.execute_script("arguments[0].scrollIntoView()", canvas)
    readout = canvas.find_element(By.XPATH, "following-sibling::div[@class='readout']")

    def hovered() -> bool:
        ActionChains(browser).move_to_element_with_offset(canvas, 10, 0).move_to_element(canvas).perform()
        return "time after programming [s] = " in readout.text

    _wait(hovered, 20, "the hover readout", step=0.3)
    ActionChains(browser).move_to_element_with_offset(canvas, -200, 0).click_and_hold().move_by_offset(150, 0).release().perform()
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    browser.save_screenshot(str(tmp_path / "run-page.png"))
    assert (tmp_path / "run-page.png").stat().st_size > 10_000


def test_the_live_page_follows_an_emulator_drift_run_without_a_reload(server: tuple[str, Path], browser,
                                                                       tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    url, folder = server
    before = set(folder.glob("*.h5"))
    run = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "run", "drift", "--chip", "emulator:hermes,cores=1,rows=32,cols=32",
         "--set", f"read_times_s={DRIFT_TIMES}", "--set", "reads_per_point=32", "--out", str(folder), "--tag", "live"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    try:
        new = _wait(lambda: set(folder.glob("*.h5")) - before, 60, "the drift run's file")
        rid = next(iter(new)).stem
        browser.get(f"{url}runs/{rid}/live")
        browser.execute_script("window.__same_page = 42")
        counts: list[int] = []

        def ended() -> bool:
            text = browser.find_element(By.ID, "row-count").text
            if text.isdigit() and (not counts or int(text) != counts[-1]):
                counts.append(int(text))
            return browser.find_element(By.ID, "status").text in ("success", "fail", "abort", "incomplete")

        _wait(ended, 90, "the live page's status to leave 'running'", step=0.05)
        assert run.wait(timeout=30) == 0, run.stderr.read()[-2000:]
        assert browser.find_element(By.ID, "status").text == "success", browser.find_element(By.ID, "connection").text
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert browser.execute_script("return window.__same_page") == 42  # no reload
    rows = int(browser.find_element(By.ID, "row-count").text)
    assert len(counts) >= 2 and counts == sorted(counts), counts  # the row count rose while it ran
    print(f"live page row counts seen: {counts}")
    assert rows >= 300 and counts[0] < rows
    assert browser.find_element(By.ID, "finished").is_displayed()
    _wait(lambda: "300 rows" in browser.page_source, 10, "the drift_reads live plot to hold every row")
    browser.save_screenshot(str(tmp_path / "live-page.png"))
    assert (tmp_path / "live-page.png").stat().st_size > 10_000
