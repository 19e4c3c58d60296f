"""`voxguard datasets an4 prepare|fetch` on a small archive in the real ``an4_sphere.tar.gz``
layout, with NIST Sphere files made from real AN4 utterances."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from voxguard.enroll.importers import iter_layout

pytestmark = pytest.mark.an4

TRAIN = {"fash": 3, "mgah": 2}
TEST = {"fbbh": 2}  # stands in for a test-split speaker


@pytest.fixture(scope="module")
def sphere_archive(tmp_path_factory, an4_speakers):
    """an4_sphere.tar.gz with an4/wav/{an4_clstk,an4test_clstk}/<spk>/<utt>.sph and an4/etc/."""
    base = tmp_path_factory.mktemp("an4src")
    root = base / "an4"
    sources = {}
    lines = {"train": [], "test": []}
    for split_dir, split, speakers in (("an4_clstk", "train", TRAIN), ("an4test_clstk", "test", TEST)):
        for spk, n in speakers.items():
            (root / "wav" / split_dir / spk).mkdir(parents=True)
            for i, wav in enumerate(an4_speakers[spk][:n]):
                data, rate = sf.read(wav, dtype="int16")
                sph = root / "wav" / split_dir / spk / (wav.stem + ".sph")
                # the real archive's Sphere files are big-endian 16-bit PCM; keep one little-endian
                sf.write(sph, data, rate, format="NIST", subtype="PCM_16", endian="BIG" if i else "LITTLE")
                sources[f"{split_dir}/{spk}/{wav.stem}"] = data
                lines[split].append(f"<s> WORDS OF {wav.stem.upper()} </s> ({wav.stem})")
    (root / "etc").mkdir()
    for split, ls in lines.items():
        (root / "etc" / f"an4_{split}.transcription").write_text("\n".join(ls) + "\n")
        (root / "etc" / f"an4_{split}.fileids").write_text("\n".join(k for k in sources if split in k) + "\n")
    archive = base / "an4_sphere.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="an4")
    return archive, root, sources


def check_prepared(out, sources) -> None:
    wavs = sorted((out / "wav").rglob("*.wav"))
    assert len(wavs) == len(sources)
    for key, data in sources.items():
        got, rate = sf.read(out / "wav" / f"{key}.wav", dtype="int16")
        info = sf.info(out / "wav" / f"{key}.wav")
        assert rate == 16000 and info.format == "WAV" and info.subtype == "PCM_16" and info.channels == 1
        np.testing.assert_array_equal(got, data)  # lossless: the same samples as the source
    train = [json.loads(x) for x in (out / "manifests" / "train.json").read_text().splitlines()]
    test = [json.loads(x) for x in (out / "manifests" / "test.json").read_text().splitlines()]
    assert len(train) == sum(TRAIN.values()) and len(test) == sum(TEST.values())
    for item in train + test:
        path = out / item["audio_filepath"]
        assert path.is_file() and not item["audio_filepath"].startswith("/")
        assert item["label"] == path.parent.name
        assert item["duration"] == pytest.approx(sf.info(path).duration, abs=1e-3)
        assert item["text"] == f"WORDS OF {path.stem.upper()}"
    assert (out / "etc" / "an4_train.transcription").is_file()
    assert not list(out.glob("voxguard-an4-*")) and not list(out.rglob("*.tmp"))  # nothing half-done left


def test_prepare_archive(sphere_archive, tmp_path):
    archive, _, sources = sphere_archive
    out = tmp_path / "an4"
    r = run_cli("--json", "datasets", "an4", "prepare", str(archive), "--out", str(out))
    assert r.returncode == 0, r.stderr.decode()
    info = json.loads(r.stdout)
    assert info["files"] == {"an4_clstk": 5, "an4test_clstk": 2} and info["speakers"] == 3
    check_prepared(out, sources)
    # what `enroll import --layout an4` reads: the training speakers
    groups = dict(iter_layout("an4", out))
    assert {k: len(v) for k, v in groups.items()} == TRAIN
    # and the NeMo manifest layout reads both splits' manifests
    assert {k: len(v) for k, v in iter_layout("nemo-manifest", out / "manifests" / "test.json")} == TEST


def test_prepared_output_imports(sphere_archive, tmp_path):
    archive, _, _ = sphere_archive
    out = tmp_path / "an4"
    assert run_cli("datasets", "an4", "prepare", str(archive), "--out", str(out)).returncode == 0
    store = tmp_path / "v.db"
    r = run_cli("--json", "enroll", "import", str(out), "--layout", "an4", store=store)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout) == {"speakers": 2, "added": 5, "skipped": 0, "failed": []}
    r = run_cli("--json", "enroll", "list", store=store)
    assert {s["speaker"]: s["genuine"] for s in json.loads(r.stdout)} == TRAIN


def test_prepare_extracted_folder(sphere_archive, tmp_path):
    _, root, sources = sphere_archive
    out = tmp_path / "out"
    r = run_cli("datasets", "an4", "prepare", str(root), "--out", str(out))
    assert r.returncode == 0, r.stderr.decode()
    assert "3 speakers" in r.stdout.decode()
    check_prepared(out, sources)


def _refused(r, *needles) -> None:
    err = r.stderr.decode()
    assert r.returncode != 0 and err.startswith("voxguard: error: ") and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_corrupt_archives(sphere_archive, tmp_path):
    archive, _, _ = sphere_archive
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    for bad in (truncated, junk):
        out = tmp_path / f"out-{bad.stem}"
        _refused(run_cli("datasets", "an4", "prepare", str(bad), "--out", str(out)), str(bad), "not a readable")
        assert not list(out.rglob("*.wav")) and not list(out.glob("voxguard-an4-*"))

    # a tar that is not AN4, and one that tries to write outside its folder
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        data = b"hello"
        ti = tarfile.TarInfo("readme.txt")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    _refused(run_cli("datasets", "an4", "prepare", str(other), "--out", str(tmp_path / "o2")), "no an4 'wav' folder")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        ti = tarfile.TarInfo("../escaped.txt")
        ti.size = 5
        tar.addfile(ti, io.BytesIO(b"oops!"))
    _refused(run_cli("datasets", "an4", "prepare", str(evil), "--out", str(tmp_path / "o3")), "unsafe path")
    assert not (tmp_path / "escaped.txt").exists()
    _refused(run_cli("datasets", "an4", "prepare", str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path / "o4")),
             "no such file")


def test_fetch_from_file_url(sphere_archive, tmp_path):
    archive, _, sources = sphere_archive
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = tmp_path / "fetched"
    r = run_cli("datasets", "an4", "fetch", "--out", str(out), "--url", archive.as_uri(), "--sha256", digest)
    assert r.returncode == 0, r.stderr.decode()
    check_prepared(out, sources)
    assert not (out / "an4_sphere.tar.gz").exists()  # removed unless --keep-archive

    kept = tmp_path / "kept"
    r = run_cli("datasets", "an4", "fetch", "--out", str(kept), "--url", archive.as_uri(), "--keep-archive")
    assert r.returncode == 0, r.stderr.decode()
    assert (kept / "an4_sphere.tar.gz").read_bytes() == archive.read_bytes()


def test_fetch_checksum_mismatch_and_bad_url(sphere_archive, tmp_path):
    archive, _, _ = sphere_archive
    out = tmp_path / "fetched"
    r = run_cli("datasets", "an4", "fetch", "--out", str(out), "--url", archive.as_uri(), "--sha256", "0" * 64)
    _refused(r, "SHA-256", "does not match", "0" * 64)
    assert not out.exists() or sorted(p.name for p in out.rglob("*")) == []  # no partial download, no output

    r = run_cli("datasets", "an4", "fetch", "--out", str(out), "--url", (tmp_path / "missing.tar.gz").as_uri())
    _refused(r, "cannot download")
    assert not out.exists() or sorted(p.name for p in out.rglob("*")) == []

    # an archive already in OUT is checked against --sha256 too, not trusted blindly
    out.mkdir(exist_ok=True)
    (out / "an4_sphere.tar.gz").write_bytes(b"left over from somewhere")
    r = run_cli("datasets", "an4", "fetch", "--out", str(out), "--url", archive.as_uri(),
                "--sha256", hashlib.sha256(archive.read_bytes()).hexdigest())
    assert r.returncode == 0, r.stderr.decode()
    assert len(list((out / "wav").rglob("*.wav"))) == 7
