"""The browser client served at ``/``, end to end in headless Chromium (Debian ``chromium``,
driven by Playwright) with a fake microphone playing an AN4 recording of an enrolled
speaker: getUserMedia -> AudioWorklet -> 16-bit PCM over the WebSocket (token in the query)
-> the page shows the speaker's name, the verdict and the summary."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import soxr

from client_support import (SPEAKER, TOKEN, client_store, daemon, free_port, held_out_audio,  # noqa: F401 (fixtures)
                            spare_daemon, write_wav)

pytestmark = pytest.mark.an4

CHROMIUM = os.environ.get("VOXGUARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_COPY = Path("/tmp/voxguard-browser.png")  # for people reviewing a run


@pytest.fixture(scope="module")
def browser(tmp_path_factory, an4_speakers):
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("browser")
    # Chromium's fake capture device wants a 16-bit PCM WAV; 48 kHz like a real microphone
    mic = write_wav(tmp / "mic.wav", soxr.resample(held_out_audio(an4_speakers), 16000, 48000), 48000)
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp / "profile"), executable_path=CHROMIUM, headless=False,
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required"],
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()


def text(page, selector: str) -> str:
    return page.text_content(selector).strip()


def wait_text(page, selector: str, predicate: str, timeout: float = 60_000) -> None:
    """Wait until ``predicate`` (JS, over ``t``: the element's text) holds."""
    page.wait_for_function(f"(() => {{ const t = document.querySelector({selector!r}).textContent; "
                           f"return {predicate}; }})()", timeout=timeout)


def test_page_shows_the_enrolled_speaker(browser, daemon, tmp_path):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{daemon.http}/?token={TOKEN}&claim={SPEAKER}")
    assert page.title() == "voxguard live"
    assert page.input_value("#token") == TOKEN and page.input_value("#claim") == SPEAKER
    page.click("#toggle")
    wait_text(page, "#speaker", f"t === {SPEAKER!r}")
    wait_text(page, "#verdict", "t === 'accept'")
    status = text(page, "#status")
    assert status.startswith("streaming ") and " Hz to resemblyzer" in status and "4 enrolled" in status
    # no known clones, no trained detector, no countermeasure installed: the page says so, never "none"
    assert text(page, "#clone") == "unavailable"
    assert "voxguard models fetch aasist" in text(page, "#clone-detail")
    assert "score 0." in text(page, "#speaker-detail")
    page.wait_for_timeout(1500)  # a few more points on the chart
    shot = tmp_path / "voxguard-browser.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    shutil.copyfile(shot, SCREENSHOT_COPY)
    page.click("#toggle")  # Stop: 'stop', then the summary
    wait_text(page, "#summary", f"t.includes('speaker: {SPEAKER}')")
    wait_text(page, "#status", "t === 'stopped.'")
    assert f"claim {SPEAKER}: ACCEPT" in text(page, "#summary")
    assert errors == []
    page.close()


@pytest.mark.parametrize("case", ["wrong-token", "server-down"])
def test_connection_refused_is_shown(browser, daemon, case):
    page = browser.new_page()
    if case == "wrong-token":
        page.goto(f"{daemon.http}/?token=not-the-right-token")
        needle = "token missing/refused"
    else:
        page.goto(f"{daemon.http}/?url=ws://127.0.0.1:{free_port()}/v1/stream")
        needle = "server down"
    page.click("#toggle")
    wait_text(page, "#status", "t.startsWith('cannot connect')", 30_000)
    assert needle in text(page, "#status")
    assert page.get_attribute("#status", "class") == "error" and text(page, "#toggle") == "Start"
    page.close()


def test_server_shutdown_mid_stream_is_shown(browser, daemon, spare_daemon):
    d = spare_daemon(extra=("--allow-origin", daemon.http))  # a page of another origin must be allowed
    page = browser.new_page()
    page.goto(f"{daemon.http}/?url={d.url}")  # the page from one daemon, the stream to another
    page.click("#toggle")
    wait_text(page, "#speaker", f"t === {SPEAKER!r}")
    d.proc.send_signal(signal.SIGTERM)
    wait_text(page, "#status", "t.includes('server shut down')", 30_000)
    assert f"speaker: {SPEAKER}" in text(page, "#summary")  # the shutdown summary still arrived
    assert page.get_attribute("#status", "class") == "error"
    page.close()
