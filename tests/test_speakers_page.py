"""The speakers page (``/speakers``) in headless Chromium (Debian ``chromium``, driven by
Playwright) against the real daemon: it lists and searches the enrolled speakers, enrolls an
uploaded AN4 recording, and erases a speaker only once the confirmation is accepted."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from daemon_support import DaemonProcess, build_store

pytestmark = [pytest.mark.an4, pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = os.environ.get("VOXGUARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ENROLL = "page-enroll-token-0123456789"
STREAM = "page-stream-token-0123456789"
SCREENSHOT_COPY = Path("/tmp/voxguard-speakers.png")  # for people reviewing a run


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, embedder, an4_speakers):
    d = tmp_path_factory.mktemp("page")
    names = build_store(d / "vg.db", embedder, an4_speakers, speakers=sorted(an4_speakers)[:2])
    tokens = d / "tokens"
    tokens.write_text(f"{ENROLL} enroll\n{STREAM} stream\n")
    process = DaemonProcess(d / "vg.db", extra=("--token-file", str(tokens)))
    yield process, names
    process.kill()


@pytest.fixture(scope="module")
def chromium():
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def rows(page) -> list[str]:
    return page.eval_on_selector_all("#list tr", "rs => rs.map(r => r.dataset.speaker)")


def api_status(daemon, path: str) -> int:
    req = urllib.request.Request(f"{daemon.http}{path}", headers={"Authorization": f"Bearer {ENROLL}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_list_search_upload_and_erase(daemon, chromium, an4_speakers, tmp_path):
    from PIL import Image

    process, names = daemon
    newcomer = sorted(an4_speakers)[3]
    page = chromium.new_page(viewport={"width": 1100, "height": 600})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{process.http}/speakers?token={ENROLL}")
    assert page.title() == "voxguard speakers"
    page.wait_for_function("document.querySelectorAll('#list tr').length === 2", timeout=30_000)
    assert rows(page) == names
    # search
    page.fill("#q", names[1][1:3].upper())
    page.wait_for_function(f"[...document.querySelectorAll('#list tr')].every(r => r.dataset.speaker.toLowerCase()"
                           f".includes({names[1][1:3]!r}))", timeout=10_000)
    assert names[1] in rows(page)
    page.fill("#q", "")
    page.wait_for_function("document.querySelectorAll('#list tr').length === 2", timeout=10_000)
    # upload a recording
    page.fill("#name", newcomer)
    page.set_input_files("#file", str(an4_speakers[newcomer][0]))
    page.fill("#consent", "PAGE-1")
    page.click("#upload")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('enrolled')", timeout=60_000)
    assert f"enrolled {newcomer}: sample" in page.text_content("#status")
    page.wait_for_selector(f'#list tr[data-speaker="{newcomer}"]', timeout=10_000)
    assert api_status(process, f"/v1/speakers/{newcomer}") == 200
    # an undecodable file is refused, with the reason shown
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 200)
    page.fill("#name", "junk")
    page.set_input_files("#file", str(junk))
    page.click("#upload")
    page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=60_000)
    assert "422" in page.text_content("#status") and api_status(process, "/v1/speakers/junk") == 404
    assert "/tmp" not in page.text_content("#status")  # no server-side file name in the reason
    # the screenshot: every row carries a bar (accent blue) of its stored seconds
    shot = tmp_path / "speakers.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    box = page.locator(f'#list tr[data-speaker="{newcomer}"] .bar').bounding_box()
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    bar = pixels[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    blue = (np.abs(bar - np.array([0x4F, 0xB3, 0xFF])).sum(axis=2) < 60).sum()
    assert blue >= 0.8 * box["width"] * box["height"] - 10, f"the row's bar is not drawn ({blue} blue pixels)"
    # erase: dismissed first (nothing happens), then confirmed
    row = f'#list tr[data-speaker="{newcomer}"] button.delete'
    page.once("dialog", lambda d: d.dismiss())
    page.click(row)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('kept')", timeout=10_000)
    assert api_status(process, f"/v1/speakers/{newcomer}") == 200 and newcomer in rows(page)
    messages = []
    page.once("dialog", lambda d: (messages.append(d.message), d.accept()))
    page.click(row)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('erased')", timeout=30_000)
    assert newcomer in messages[0] and "cannot be undone" in messages[0]
    assert api_status(process, f"/v1/speakers/{newcomer}") == 404
    page.wait_for_function(f"!document.querySelector('#list tr[data-speaker=\"{newcomer}\"]')", timeout=10_000)
    assert errors == []
    page.close()


def test_the_page_needs_an_enroll_token(daemon, chromium):
    process, _ = daemon
    page = chromium.new_page()
    resp = page.goto(f"{process.http}/speakers?token={STREAM}")
    assert resp.status == 403 and json.loads(page.text_content("body"))["missing_scope"] == "enroll"
    page.close()
