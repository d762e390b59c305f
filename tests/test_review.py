"""The /review page (edge/review.py): listing, confinement to the capture folder, relabel over HTTP, and a
headless-Chromium check of the page itself (screenshot, DOM, one click that relabels)."""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from trashcam.edge.capture import CaptureSink
from trashcam.edge.review import CaptureFolder, ReviewError, ReviewPage

LABELS = ["glass", "metal"]


def fill(root: Path, n: int = 3) -> list[Path]:
    t = [1_700_000_000.0]

    def clock():
        t[0] += 1
        return t[0]
    cap = CaptureSink(root, "all", clock=clock)
    out = []
    for i in range(n):
        p = 0.5 + 0.1 * i
        out.append(cap.capture(np.full((30, 40, 3), 40 * i, np.uint8),
                               {"label": "glass", "probs": {"glass": p, "metal": 1 - p}, "confidence": p,
                                "score": 10.0 - i, "uncertain": True}))
    return out


@pytest.fixture
def served(tmp_path):
    from trashcam.edge.server import PreviewServer
    root = tmp_path / "cap"
    paths = fill(root)
    srv = PreviewServer("127.0.0.1:0")
    page = ReviewPage(CaptureFolder(root, LABELS))
    page.register(srv)
    yield srv, root, paths
    srv.close()


def http(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(base, body, ctype="application/json", headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http(base + "review/relabel", data, {"Content-Type": ctype, **(headers or {})}, "POST")


def test_listing_orders_and_counts_corrupt_sidecars(tmp_path):
    root = tmp_path / "cap"
    paths = fill(root)
    (root / "glass" / "broken.jpg").write_bytes(paths[0].read_bytes())
    (root / "glass" / "broken.json").write_text("{not json")
    items, corrupt = CaptureFolder(root, LABELS).items("newest")
    assert corrupt == 1 and [i["id"] for i in items] == [f"glass/{p.name}" for p in reversed(paths)]
    items, _ = CaptureFolder(root, LABELS).items("uncertain")
    assert [i["score"] for i in items] == [10.0, 9.0, 8.0]


def test_paths_are_confined(tmp_path):
    root = tmp_path / "cap"
    paths = fill(root, 1)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    (root / "glass" / "link.jpg").symlink_to(outside)
    (root / "evil").symlink_to(tmp_path)
    f = CaptureFolder(root, LABELS)
    for bad in ("../secret.jpg", "glass/../../secret.jpg", "/etc/passwd", "glass/link.jpg", "evil/secret.jpg",
                "glass", "glass/x.json", f"glass/{paths[0].name}/..", 5, None):
        with pytest.raises(ReviewError):
            f.resolve(bad)
    assert f.resolve(f"glass/{paths[0].name}") == paths[0].resolve()


def test_relabel_over_http(served):
    srv, root, paths = served
    base = srv.url
    st, body = http(base + "review/items?order=uncertain")
    assert st == 200 and json.loads(body)["count"] == 3
    st, body = http(base + "review/image?thumb=1&id=glass/" + paths[0].name)
    assert st == 200 and body[:2] == b"\xff\xd8"
    item = f"glass/{paths[0].name}"
    # unknown class: 400, nothing moves
    st, _ = post(base, {"id": item, "label": "cardboard"})
    assert st == 400 and paths[0].is_file()
    # a form post (not JSON) and a cross-origin request are refused
    assert post(base, b"id=x&label=metal", "application/x-www-form-urlencoded")[0] == 400
    assert post(base, {"id": item, "label": "metal"}, headers={"Origin": "http://evil.example"})[0] == 403
    assert post(base, {"id": "../../etc/passwd", "label": "metal"})[0] == 400
    assert http(base + "review/relabel")[0] == 405  # GET cannot relabel
    st, body = post(base, {"id": item, "label": "metal"}, headers={"Origin": base.rstrip("/")})
    assert st == 200, body
    moved = root / "metal" / paths[0].name
    assert moved.is_file() and not paths[0].exists() and not paths[0].with_suffix(".json").exists()
    side = json.loads(moved.with_suffix(".json").read_text())
    assert side["label"] == "metal" and side["predicted"] == "glass" and side["reviewed"] is True
    st, _ = post(base, {"id": f"glass/{paths[1].name}", "label": "_foreign"})
    assert st == 200 and (root / "_foreign" / paths[1].name).is_file()


CHROME, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.mark.skipif(not (os.path.exists(CHROME) and os.path.exists(DRIVER)),
                    reason=f"headless browser test needs {CHROME} and {DRIVER} (apt: chromium chromium-driver)")
def test_review_page_in_headless_chromium(served, tmp_path):
    pytest.importorskip("selenium", reason="selenium is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv, root, paths = served
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROME
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        drv.set_window_size(900, 700)
        drv.get(srv.url + "review?order=uncertain")
        # the list is re-rendered after each relabel: an element read mid-render is stale, so retry
        wait = WebDriverWait(drv, 20, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".item")) == 3)
        wait.until(lambda d: all(i.get_property("naturalWidth") > 0 for i in d.find_elements(By.CSS_SELECTOR, ".item img")))
        shot = tmp_path / "review.png"
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        out = os.environ.get("TRASHCAM_SCREENSHOTS")
        if out:
            shutil.copy(shot, Path(out) / "review.png")
        first = drv.find_elements(By.CSS_SELECTOR, ".item")[0]
        target = first.get_attribute("data-id")
        assert target == f"glass/{paths[0].name}"  # score 10: the most uncertain first
        labels = [b.text for b in first.find_elements(By.TAG_NAME, "button")]
        assert labels == ["glass", "metal", "_foreign"]
        first.find_element(By.CSS_SELECTOR, "button[data-label='metal']").click()
        wait.until(lambda d: (root / "metal" / paths[0].name).is_file())
        wait.until(lambda d: any(e.get_attribute("data-id") == f"metal/{paths[0].name}"
                                 for e in d.find_elements(By.CSS_SELECTOR, ".item")))
        assert not paths[0].exists()
    finally:
        drv.quit()
