"""The items panel in a real browser: headless Chromium + chromedriver (Debian's packages; CI installs them in
.ci/run) driven by selenium. Checks the DOM (counts table, item cards, thumbnails that loaded) and saves a
screenshot under the test's tmp dir."""
from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from trashcam.edge.server import PreviewServer
from trashcam.edge.sources import Frame
from trashcam.edge.web_items import ItemsView

LABELS = ["glass", "paper", "plastic"]


def find(*names: str) -> str | None:
    for n in names:
        p = shutil.which(n) or (n if Path(n).exists() else None)
        if p:
            return p
    return None


CHROMIUM = find("chromium", "/usr/bin/chromium", "chromium-browser")
DRIVER = find("chromedriver", "/usr/bin/chromedriver")


def block(colour) -> np.ndarray:
    img = np.zeros((120, 160, 3), np.uint8)
    img[20:100, 40:120] = colour
    return img


@pytest.fixture
def served():
    srv = PreviewServer("127.0.0.1:0", {"variant": "tflite-int8"})
    view = ItemsView(LABELS, keep=3, info={"variant": "tflite-int8"}, status=lambda: {"items": {"state": "empty"}})
    view.register(srv)
    srv.frame(Frame(0, 0.0, block((90, 90, 90))), {"fps": 5.0, "frames": 1, "decision": None})
    items = [("glass", (40, 200, 60), False), ("uncertain", (250, 170, 0), False), ("paper", (230, 230, 230), True),
             ("glass", (40, 120, 220), False)]
    for n, (label, colour, timeout) in enumerate(items, 1):
        view.add({"id": f"r-{n:06d}", "seq": n, "label": label, "confidence": 0.9 - n / 10, "timeout": timeout},
                 block(colour))
    yield srv, view
    srv.close()


def test_items_json_thumbnails_and_status(served):
    srv, view = served
    with urllib.request.urlopen(srv.url + "items.json", timeout=5) as r:
        j = json.load(r)
    assert j["total"] == 4 and j["counts"] == {"glass": 2, "paper": 1, "plastic": 0, "uncertain": 1}
    assert [i["id"] for i in j["items"]] == ["r-000004", "r-000003", "r-000002"]  # newest first, last 3 kept
    with urllib.request.urlopen(srv.url + "thumb?id=r-000004", timeout=5) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and r.read(2) == b"\xff\xd8"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(srv.url + "thumb?id=r-000001", timeout=5)  # rolled out of the last 3
    assert e.value.code == 404
    with urllib.request.urlopen(srv.url + "status", timeout=5) as r:
        s = json.load(r)
    assert s["items"] == {"state": "empty"} and s["variant"] == "tflite-int8"


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
def test_page_in_headless_chromium(served, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (the [dev] extra)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv, _ = served
    opts = Options()
    opts.binary_location = CHROMIUM
    opts.page_load_strategy = "eager"  # the MJPEG <img> never finishes loading: do not wait for `load`
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900",
              f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.set_page_load_timeout(20)
        driver.get(srv.url)
        wait = WebDriverWait(driver, 15)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#items .item")) == 3)
        # every thumbnail decoded (naturalWidth > 0), i.e. /thumb served real JPEGs
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#items img')].every(i => i.complete && i.naturalWidth > 0)"))
        # read the DOM in one script: the page re-renders every second, so element handles go stale
        dom = driver.execute_script("""return {
            cards: [...document.querySelectorAll('#items .item')].map(c => ({id: c.dataset.id,
                     label: c.querySelector('.label').textContent, text: c.textContent})),
            counts: Object.fromEntries([...document.querySelectorAll('#counts tr')].map(
                     r => [r.dataset.label, Number(r.querySelector('.count').textContent)]))}""")
        assert [c["id"] for c in dom["cards"]] == ["r-000004", "r-000003", "r-000002"]
        assert [c["label"] for c in dom["cards"]] == ["glass", "paper", "uncertain"]
        assert "timeout" in dom["cards"][1]["text"] and "timeout" not in dom["cards"][0]["text"]
        assert dom["counts"] == {"glass": 2, "paper": 1, "plastic": 0, "uncertain": 1}
        assert driver.find_element(By.ID, "total").text == "4 items"
        wait.until(lambda d: '"state": "empty"' in d.find_element(By.ID, "s").text)
        shot = tmp_path / "items_page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 5000
    finally:
        driver.quit()
