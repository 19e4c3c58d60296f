"""The pretrained countermeasure in the real daemon, over loopback with the real client: every stream's
voiced audio is checked (first verdict after one context, re-checks, a final check), the events and the
summary say which spans were checked, and without an installed model every surface says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import AASIST_DIR, aasist_available, run_cli
from daemon_support import DaemonProcess, build_store
from client_support import write_wav

from voxguard.audio import load_audio
from voxguard.protocol import SCHEMAS

pytestmark = [pytest.mark.an4, pytest.mark.slow,
              pytest.mark.skipif(not aasist_available(), reason="../shared/models/aasist not found")]

VITS = AASIST_DIR.parents[1] / "datasets" / "vits-vctk" / "wav" / "p249.flac"


@pytest.fixture(scope="module")
def store(tmp_path_factory, embedder, an4_speakers):
    path = tmp_path_factory.mktemp("cm-daemon") / "store.db"
    names = build_store(path, embedder, an4_speakers)
    return path, names


def stream_json(url: str, wav, *args) -> list[dict]:
    r = run_cli("stream", str(wav), "--url", url, "--no-pace", "--json", *args, env={"VOXGUARD_TOKEN": ""},
                timeout=300)
    assert r.returncode in (0, 1), r.stderr.decode()
    events = [json.loads(line) for line in r.stdout.decode().splitlines()]
    jsonschema = pytest.importorskip("jsonschema")
    for e in events:
        jsonschema.validate(e, SCHEMAS[e["type"]])
    return events


def test_every_span_of_a_lossless_stream_is_checked(store, tmp_path):
    path, names = store
    d = DaemonProcess(path, env={"VOXGUARD_MODELS": str(AASIST_DIR)})
    try:
        wav = write_wav(tmp_path / "vits.wav", load_audio(VITS).samples)
        events = stream_json(d.url, wav, "--claim", names[0])
        ready, summary = events[0], events[-1]
        assert ready["countermeasure"]["available"] is True
        assert ready["countermeasure"]["calibration"].startswith("aasist@51d2d9cf0738")
        assert ready["clone_detection"]["available"] is True
        checks = [e for e in events if e["type"] == "clone_suspicion" and e.get("check")]
        kinds = [e["check"]["kind"] for e in checks]
        assert kinds[0] == "first" and "recheck" in kinds, (kinds, summary["clone"])
        spans = [(e["check"]["start"], e["check"]["end"]) for e in checks]
        assert all(a < b for a, b in spans)
        # contexts of a lossless stream do not overlap, except the final one (the uncovered tail)
        body = [s for s, e in zip(spans, checks) if e["check"]["kind"] != "final"]
        assert all(body[i][1] <= body[i + 1][0] + 1e-3 for i in range(len(body) - 1))
        for e in checks:
            assert e["evidence"]["contributions"]["countermeasure"] == e["llr"]
            assert e["speaker"] == names[0]
        cm = summary["clone"]["countermeasure"]
        assert cm["checks"] == len(checks) and cm["skipped"] == 0  # lossless: nothing superseded
        assert cm["coverage"] >= 0.9 and cm["first_verdict_at_voiced_s"] <= 10.0
        assert summary["clone"]["level"] != "unavailable"
        # the metrics count the checks and the audio they covered
        import urllib.request

        text = urllib.request.urlopen(d.http + "/metrics", timeout=10).read().decode()
        assert 'voxguard_countermeasure_checks_total{outcome="ok"} ' + f"{float(len(checks))}" in text
    finally:
        d.terminate()


def test_short_audio_gets_no_verdict_and_no_model_says_so(store, tmp_path, an4_speakers):
    path, names = store
    short = load_audio(an4_speakers[names[1]][-1]).samples[: int(1.5 * 16000)]
    wav = write_wav(tmp_path / "short.wav", short)
    d = DaemonProcess(path, env={"VOXGUARD_MODELS": str(AASIST_DIR)})
    try:
        events = stream_json(d.url, wav)
        cm = events[-1]["clone"]["countermeasure"]
        assert cm["checks"] == 0 and "minimum" in cm["verdict"]
        assert not [e for e in events if e.get("check")]
    finally:
        d.terminate()
    d = DaemonProcess(path)  # conftest: no model installed
    try:
        events = stream_json(d.url, wav)
        ready = events[0]
        assert ready["countermeasure"]["available"] is False
        assert "voxguard models fetch aasist" in ready["countermeasure"]["reason"]
        # a store without known clones or a trained detector, and no model: nothing weighs clone evidence
        assert ready["clone_detection"] == {"available": False, "sources": [],
                                            "reason": ready["clone_detection"]["reason"]}
        assert "voxguard models fetch" in ready["clone_detection"]["reason"]
        r = run_cli("stream", str(wav), "--url", d.url, "--no-pace", env={"VOXGUARD_TOKEN": ""}, timeout=120)
        assert "no clone countermeasure" in r.stdout.decode()
    finally:
        d.terminate()


def test_a_named_countermeasure_that_is_not_installed_is_refused(store):
    path, _ = store
    r = run_cli("serve", "--store", str(path), "--port", "0", "--countermeasure", "aasist-l", timeout=120)
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert len(err) >= 1 and "aasist-l" in err[-1] and "voxguard models fetch aasist-l" in err[-1]


def test_check_fuses_the_countermeasure(store, tmp_path):
    path, names = store
    wav = write_wav(tmp_path / "vits.wav", load_audio(VITS).samples)
    # names[1] (fbbh) has 9.5 s of stored voiced audio: two contexts for its own reference; names[0] (fash)
    # has 1.5 s, too little for one: no speaker-relative evidence, said by its absence
    r = run_cli("check", str(wav), "--claimed", names[1], "--json", store=path,
                env={"VOXGUARD_MODELS": str(AASIST_DIR)})
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout.decode().splitlines()[0])
    ev = out["clone"]["evidence"]
    assert out["clone"]["level"] != "unavailable" and ev["countermeasure"].startswith("aasist@")
    assert "countermeasure" in ev["contributions"] and "countermeasure_speaker" in ev["values"]
    assert out["clone"]["llr"] == pytest.approx(sum(ev["contributions"].values()), abs=2e-3)
    # without a model and without known clones: unavailable, and it says what to install
    r = run_cli("check", str(wav), "--json", store=path)
    out = json.loads(r.stdout.decode().splitlines()[0])
    assert out["clone"]["level"] == "unavailable" and "voxguard models fetch" in out["clone"]["evidence"]["reason"]
