"""`voxguard enroll/identify/verify` on bad input, as a user runs them: each case prints one
clear ``voxguard: error: ...`` line naming the problem, exits non-zero and leaves the store
exactly as it was.  (A store made with another embedder: see test_titanet.py.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from voxguard.audio import resample

pytestmark = pytest.mark.an4


def fingerprint(store) -> dict:
    """SHA-256 of the store and its side files (a non-empty WAL, the index).  SQLite's shared
    memory file and an empty WAL (left by readers) hold no data."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.parent.glob(store.name + "*"))
            if not p.name.endswith("-shm") and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, an4_speakers):
    """A store with two speakers, enrolled through the CLI."""
    store = tmp_path_factory.mktemp("cli") / "voxguard.db"
    for spk in ("fash", "mgah"):
        r = run_cli("enroll", "add", spk, *map(str, an4_speakers[spk][:3]), store=store)
        assert r.returncode == 0, r.stderr.decode()
    return store


def assert_refused(r: subprocess.CompletedProcess, *needles: str) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0, (r.stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxguard: error: "), err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def bad_files(tmp_path, an4_speakers) -> dict:
    d = tmp_path / "bad"
    d.mkdir()
    text = d / "notes.wav"
    text.write_text("minutes of the meeting\n" * 50)
    empty = d / "empty.wav"
    empty.write_bytes(b"")
    no_frames = d / "noframes.wav"
    sf.write(no_frames, np.zeros(0, np.float32), 16000)
    blip = d / "blip.wav"
    speech, _ = sf.read(an4_speakers["fash"][4], dtype="float32")
    sf.write(blip, speech[8000:8800], 16000)  # 50 ms
    return {"missing": (d / "missing.wav", "no such file"), "text": (text, "not a readable audio file"),
            "empty": (empty, "empty"), "no_frames": (no_frames, "no audio samples"),
            "short": (blip, "too short: 0.050 s")}


@pytest.mark.parametrize("case", ["missing", "text", "empty", "no_frames", "short"])
def test_bad_audio_is_refused_and_store_untouched(case, bad_files, enrolled, an4_speakers):
    path, why = bad_files[case]
    before = fingerprint(enrolled)
    good = str(an4_speakers["fash"][5])
    # a bad file among good ones aborts the whole `enroll add`: nothing is added
    assert_refused(run_cli("enroll", "add", "fash", good, str(path), store=enrolled), str(path), why)
    assert_refused(run_cli("identify", str(path), store=enrolled), str(path), why)
    if case == "text":  # every command that reads audio refuses it the same way
        for args in (("enroll", "add", "newbie", str(path)), ("verify", good, str(path)),
                     ("enroll", "add-clone", "fash", str(path), "--source", "tts")):
            assert_refused(run_cli(*args, store=enrolled), str(path), why)
    assert fingerprint(enrolled) == before


def test_bad_audio_on_a_new_store_creates_nothing(bad_files, tmp_path):
    store = tmp_path / "new.db"
    path, why = bad_files["text"]
    assert_refused(run_cli("enroll", "add", "x", str(path), store=store), why)
    assert not store.exists()


def test_json_errors(bad_files, enrolled):
    # a file that cannot be used is one JSON line of its own (JSON Lines: one object per input file)
    path, why = bad_files["missing"]
    r = run_cli("--json", "identify", str(path), store=enrolled)
    assert r.returncode == 2
    assert json.loads(r.stdout) == {"file": str(path), "speaker": None, "error": why}
    # errors that are not about one file are one JSON object on stderr
    r = run_cli("--json", "identify", str(path), store=enrolled.parent / "no-such-store.db")
    assert r.returncode != 0 and r.stdout == b""
    err = json.loads(r.stderr)
    assert err["error"] == "StoreError" and "no store at" in err["message"]


def _phone_mp3(src, dest, via: str) -> None:
    """8 kHz stereo MP3 of an AN4 utterance (right channel attenuated)."""
    x, sr = sf.read(src, dtype="float32")
    x8 = resample(x, sr, 8000)
    stereo = np.stack([x8, 0.5 * x8], axis=1)
    if via == "soundfile":
        sf.write(dest, stereo, 8000, format="MP3")
    else:
        wav = dest.with_suffix(".wav")
        sf.write(wav, stereo, 8000)
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-ac", "2", "-ar", "8000",
                        "-c:a", "libmp3lame", "-b:a", "32k", str(dest)], check=True)


@pytest.mark.parametrize("via", ["soundfile", "ffmpeg"])
def test_8k_stereo_mp3_works(via, tmp_path, an4_speakers):
    if via == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    mp3s = []
    for i, spk in enumerate(("fash", "mgah")):
        p = tmp_path / f"{spk}-call.mp3"
        _phone_mp3(an4_speakers[spk][6 + i], p, via)
        info = sf.info(p)
        assert (info.samplerate, info.channels) == (8000, 2)
        mp3s.append(p)
    store = tmp_path / "phone.db"
    r = run_cli("--json", "enroll", "add", "fash", str(mp3s[0]), *map(str, an4_speakers["fash"][:2]), store=store)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["added"] == 3
    r = run_cli("--json", "enroll", "add", "mgah", *map(str, an4_speakers["mgah"][:3]), store=store)
    assert r.returncode == 0, r.stderr.decode()
    r = run_cli("--json", "identify", str(mp3s[1]), store=store)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["duration"] == pytest.approx(sf.info(mp3s[1]).duration, abs=0.1)
    assert out["speakers"][0]["speaker"] == "mgah"  # the resampled phone audio is still recognisable


def test_store_that_is_not_sqlite(tmp_path, an4_speakers):
    junk = tmp_path / "voxguard.db"
    junk.write_bytes(np.random.default_rng(0).bytes(20000))
    before = fingerprint(junk)
    wav = str(an4_speakers["fash"][0])
    data = tmp_path / "data"
    (data / "fash").mkdir(parents=True)
    (data / "fash" / "a.wav").symlink_to(wav)
    for args in (("enroll", "add", "fash", wav), ("enroll", "list"), ("enroll", "stats"),
                 ("enroll", "show", "fash"), ("enroll", "remove", "fash"), ("identify", wav),
                 ("verify", wav, "fash"), ("enroll", "import", str(data), "--layout", "folders")):
        assert_refused(run_cli(*args, store=junk), str(junk), "not an SQLite database")
    assert fingerprint(junk) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "voxguard.db"]


def test_unknown_speaker(enrolled):
    before = fingerprint(enrolled)
    for action in ("show", "remove"):
        assert_refused(run_cli("enroll", action, "nobody", store=enrolled), "unknown speaker 'nobody'")
    assert fingerprint(enrolled) == before
    r = run_cli("--json", "enroll", "list", store=enrolled)
    assert [s["speaker"] for s in json.loads(r.stdout)] == ["fash", "mgah"]


def test_missing_store(tmp_path, an4_speakers):
    store = tmp_path / "nowhere.db"
    for args in (("enroll", "list"), ("identify", str(an4_speakers["fash"][0])), ("enroll", "show", "x")):
        assert_refused(run_cli(*args, store=store), "no store at", str(store))
    assert not store.exists()


def test_readd_and_remove(enrolled, an4_speakers, tmp_path):
    """Re-adding is a no-op; remove deletes and reindexes (on a copy of the shared store)."""
    store = tmp_path / "copy.db"
    shutil.copy(enrolled, store)
    r = run_cli("--json", "enroll", "add", "fash", *map(str, an4_speakers["fash"][:3]), store=store)
    assert r.returncode == 0 and json.loads(r.stdout) == {"speaker": "fash", "kind": "genuine", "added": 0,
                                                          "skipped": 3, "failed": []}
    # verify against an enrolled speaker: a threshold (LLR) above any evidence rejects with exit 1
    r = run_cli("--json", "verify", str(an4_speakers["fash"][5]), "fash", "--threshold", "29", store=store)
    assert r.returncode == 1, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["decision"] == "reject" and out["ref"] == {"speaker": "fash"} and 0.5 < out["cosine"] <= 1.0
    assert out["calibration"].startswith("default:resemblyzer:utterance") and out["threshold_llr"] == 29
    r = run_cli("--json", "enroll", "remove", "fash", store=store)
    assert r.returncode == 0 and json.loads(r.stdout) == {"speaker": "fash", "removed_samples": 3}
    r = run_cli("--json", "identify", str(an4_speakers["fash"][5]), store=store)
    assert [s["speaker"] for s in json.loads(r.stdout)["speakers"]] == ["mgah"]


def test_import_bad_arguments(tmp_path, an4_root):
    store = tmp_path / "v.db"
    assert_refused(run_cli("enroll", "import", str(an4_root), "--layout", "an4", "--per-speaker", "0", store=store),
                   "--per-speaker must be at least 1")
    assert_refused(run_cli("enroll", "import", str(tmp_path / "nope"), store=store), "no such file or directory")
    assert_refused(run_cli("enroll", "import", str(an4_root), "--layout", "an4", "--speakers", "nobody",
                           store=store), "no speakers with audio files")
    assert not store.exists()


def test_cli_changes_are_in_the_audit_trail(enrolled, an4_speakers, tmp_path):
    import getpass

    store = tmp_path / "audited.db"
    shutil.copy(enrolled, store)
    r = run_cli("--json", "enroll", "add", "fash", str(an4_speakers["fash"][6]), "--consent", "FORM-42", store=store)
    assert r.returncode == 0 and json.loads(r.stdout)["added"] == 1, r.stderr.decode()
    r = run_cli("--json", "enroll", "remove", "mgah", "--consent", "ERASE-9", store=store)
    assert r.returncode == 0, r.stderr.decode()
    r = run_cli("--json", "enroll", "audit", store=store)
    rows = json.loads(r.stdout)
    me = f"cli:{getpass.getuser()}"
    # the fixture's own enrollments, the new sample, the removal
    assert [(e["action"], e["speaker"], e["actor"], e["consent"]) for e in rows] == [
        ("enroll", "fash", me, None), ("enroll", "mgah", me, None), ("enroll", "fash", me, "FORM-42"),
        ("remove_speaker", "mgah", me, "ERASE-9")]
    assert len(rows[3]["sample_ids"]) == 3 and len(rows[2]["sample_ids"]) == 1
    r = run_cli("--json", "enroll", "show", "fash", store=store)
    assert json.loads(r.stdout)["samples"][-1]["provenance"] == {"consent": "FORM-42"}
    r = run_cli("enroll", "audit", "--speaker", "mgah", store=store)
    assert r.returncode == 0 and "remove_speaker" in r.stdout.decode() and "ERASE-9" in r.stdout.decode()
    assert "fash" not in r.stdout.decode()
