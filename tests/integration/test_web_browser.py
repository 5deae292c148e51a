"""The console in a real browser: Debian's headless Chromium driven by Selenium, against a real
daemon on the demo clips. One tile per camera with an image that changes, an event in the list when
the demo person appears, the false-alarm button storing a verdict the API returns, and a phone-sized
layout without horizontal scrolling.

Screenshots (overview, events, one event) go to the test's folder; with ``EDGEDET_SCREENSHOTS=1``
also to ``docs/`` (that is how the README's images are made).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing
from tests.helpers import REPO, wait_for
from tests.integration.conftest import Daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
EVENTS = {
    "default": {"confirm_frames": 3, "window_frames": 5, "min_score": 0.3, "clear_after_s": 1.5,
                "update_interval_s": 1},
}


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        missing(f"{CHROMIUM} / {CHROMEDRIVER} not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: Any, folder: Path, name: str) -> None:
    path = folder / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a real rendering, not a blank page
    if os.environ.get("EDGEDET_SCREENSHOTS") == "1":
        shutil.copyfile(path, REPO / "docs" / name)


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def test_console_in_a_real_browser(tmp_path: Path, assets: Any, browser: Any,
                                   start_daemon: Callable[..., Daemon]) -> None:
    cameras = {"yard": {"url": str(assets.enter_leave), "loop": True, "realtime": True},
               "gate": {"url": str(assets.clip), "loop": True, "realtime": True, "fps_limit": 4}}
    _proc, _sub, port = start_daemon(cameras, events=EVENTS)
    base = f"http://127.0.0.1:{port}"

    def cameras_ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/api/v1/cameras", timeout=5) as resp:
                return all(c["seq"] is not None for c in json.loads(resp.read()))
        except OSError:
            return False

    wait_for(cameras_ready, 120, "a processed frame from both cameras")

    # overview: one tile per camera, each with a loaded image that changes
    browser.get(f"{base}/#/")
    tiles = "return [...document.querySelectorAll('.tile')].map(t => t.dataset.camera)"
    wait_for(lambda: sorted(js(browser, tiles)) == ["gate", "yard"], 20, "two tiles")
    seqs = ("return Object.fromEntries([...document.querySelectorAll('.tile')].map(t => "
            "[t.dataset.camera, [t.querySelector('img.live').dataset.seq, t.querySelector('img.live').naturalWidth]]))")
    first = wait_for(lambda: (s := js(browser, seqs)) and all(v[0] and v[1] > 0 for v in s.values()) and s, 30,
                     "both tiles showing an image")
    wait_for(lambda: all(js(browser, seqs)[cam][0] != first[cam][0] for cam in first), 30, "both images to change")
    assert js(browser, "return document.querySelector('.tile .state').textContent") in ("up", "frozen")
    shot(browser, tmp_path, "web-overview.png")

    # events: the demo person appears -> an event row; the false-alarm button stores a verdict
    browser.get(f"{base}/#/events")
    row_id = wait_for(lambda: js(browser, "const r = document.querySelector('.event-row'); return r && r.dataset.id"),
                      90, "an event in the list")
    js(browser, "document.querySelector(`.event-row[data-id='${arguments[0]}'] .category`).value = 'glare'", row_id)
    js(browser, "document.querySelector(`.event-row[data-id='${arguments[0]}'] .verdict-false`).click()", row_id)
    verdict = ("const r = document.querySelector(`.event-row[data-id='${arguments[0]}'] .verdict-label`);"
               "return r && r.dataset.verdict")
    wait_for(lambda: js(browser, verdict, row_id) == "false_alarm", 20, "the verdict shown")
    with urllib.request.urlopen(f"{base}/api/v1/events/{row_id}", timeout=5) as resp:
        stored = json.loads(resp.read())
    assert stored["feedback"]["verdict"] == "false_alarm" and stored["feedback"]["category"] == "glare"
    shot(browser, tmp_path, "web-events.png")

    # one event: snapshot, fields, timeline
    browser.get(f"{base}/#/event/{row_id}")
    wait_for(lambda: js(browser, "const i = document.querySelector('img.snap'); return i && i.complete && "
                                 "i.naturalWidth > 0"), 20, "the event's snapshot")
    text = js(browser, "return document.querySelector('main').innerText")
    assert row_id in text and "Timeline" in text and "false alarm" in text
    shot(browser, tmp_path, "web-event.png")

    # system page, then a phone screen: no horizontal scrolling, tiles stacked
    browser.get(f"{base}/#/system")
    wait_for(lambda: "torchscript" in js(browser, "return document.querySelector('main').innerText"), 20,
             "the system page")
    browser.set_window_size(390, 844)
    browser.get(f"{base}/#/")
    wait_for(lambda: len(js(browser, tiles)) == 2, 20, "two tiles on a phone")
    assert js(browser, "return document.documentElement.scrollWidth <= window.innerWidth")
    widths = js(browser, "return [...document.querySelectorAll('.tile')].map(t => t.getBoundingClientRect().width)")
    assert all(w <= js(browser, "return window.innerWidth") for w in widths)
    shot(browser, tmp_path, "web-phone.png")
