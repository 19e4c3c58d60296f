"""A real Prometheus server (loopback, ephemeral port, tmp TSDB, 1 s scrapes, the alert rules
of ``ops/prometheus/alerts.yml`` loaded) scraping a real ``voxguard serve`` with a store of
3 AN4 speakers, under a short load of concurrent real-time AN4 streams over WebSockets.

Through Prometheus's HTTP API, every Grafana dashboard query and every alert expression
evaluates without error, the key series are non-empty and the rules are loaded healthy.
Needs the Debian ``prometheus`` package (skips without it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from daemon_support import DaemonProcess, build_store, free_port, held_out
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxguard.audio import load_audio

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "ops" / "grafana" / "voxguard-dashboard.json"
SPEAKERS = 3
FILES = 3
STREAMS = 4
STREAM_SECONDS = 8.0
CHUNK_SECONDS = 0.1
# what Grafana would substitute with job=voxguard, instance=All, a 1 s scrape interval
TEMPLATE_VALUES = {"$__rate_interval": "30s", "$job": "voxguard", "$instance": ".*"}

pytestmark = [
    pytest.mark.an4, pytest.mark.slow, pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (Debian package "
                                                                   "prometheus)"),
]


def http_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def query(self, expr: str) -> list[dict]:
        """Instant query; fails the test on any error Prometheus reports."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = http_json(url)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"query failed ({e.code}): {expr}\n{e.read().decode()}") from None
        assert body["status"] == "success", (expr, body)
        assert not body.get("warnings"), (expr, body["warnings"])
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


# -- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory, embedder, an4_speakers):
    path = tmp_path_factory.mktemp("prom_store") / "vg.db"
    names = build_store(path, embedder, an4_speakers, speakers=sorted(an4_speakers)[:SPEAKERS], files=FILES)
    return path, names


@pytest.fixture(scope="module")
def daemon_port(store):
    path, _ = store
    process = DaemonProcess(path)
    yield process.port
    try:
        process.terminate()
    except subprocess.TimeoutExpired:
        process.kill()
    print(process.log_tail())  # shown by pytest when a test failed


@pytest.fixture(scope="module")
def prometheus(daemon_port, tmp_path_factory):
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "voxguard",
                            "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(work / "prometheus.log", "w+")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"prometheus did not become ready:\n{log.read()[-3000:]}")
        time.sleep(0.2)
    yield Prometheus(base)
    proc.terminate()
    proc.wait(30)
    log.seek(0)
    print(log.read()[-3000:])


def pcm16(paths: list[Path], seconds: float) -> bytes:
    audio = np.concatenate([load_audio(p).samples for p in paths])[: int(seconds * 16000)]
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def real_time_stream(url: str, stream_id: str, pcm: bytes, claimed: str | None = None) -> list[dict]:
    """Stream ``pcm`` (16 kHz s16le) at real-time pace, stop, and collect the events."""
    start = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, "stream_id": stream_id}
    if claimed:
        start["claimed_speaker"] = claimed
    events: list[dict] = []
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps(start))

        async def read():
            try:
                async for msg in ws:
                    events.append(json.loads(msg))
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        step = int(CHUNK_SECONDS * 16000) * 2
        t0 = time.monotonic()
        for i, off in enumerate(range(0, len(pcm), step)):
            await ws.send(pcm[off:off + step])
            await asyncio.sleep(max(0.0, t0 + (i + 1) * CHUNK_SECONDS - time.monotonic()))
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 60)
    return events


async def bad_stream(url: str) -> list[dict]:
    events = []
    async with connect(url) as ws:
        await ws.send("this is not JSON")
        try:
            async for msg in ws:
                events.append(json.loads(msg))
        except ConnectionClosed:  # closed with 4400
            pass
    return events


@pytest.fixture(scope="module")
def load(daemon_port, prometheus, store, an4_speakers):
    """STREAMS concurrent real-time streams (one per enrolled speaker, one claiming a speaker
    with an unenrolled voice) plus one stream with a protocol error; then waits until
    Prometheus has scraped the end of it."""
    _, names = store
    unknown = sorted(an4_speakers)[SPEAKERS]
    plan = [(f"s{i}", pcm16(held_out(an4_speakers, n, FILES)[:6], STREAM_SECONDS), None)
            for i, n in enumerate(names)]
    plan.append(("impostor", pcm16(an4_speakers[unknown][:6], STREAM_SECONDS), names[0]))
    assert len(plan) == STREAMS
    url = f"ws://127.0.0.1:{daemon_port}/v1/stream"
    wait_for(prometheus, 'up{job="voxguard"} == 1', "Prometheus did not scrape the idle daemon")

    async def run():
        return await asyncio.gather(*(real_time_stream(url, sid, pcm, claimed) for sid, pcm, claimed in plan),
                                    bad_stream(url))

    results = asyncio.run(run())
    wait_for(prometheus, f'sum(voxguard_streams_total{{job="voxguard"}}) >= {STREAMS + 1} '
                         'and sum(voxguard_active_streams{job="voxguard"}) == 0',
             "Prometheus did not scrape the end of the load")
    return results


def wait_for(prometheus: Prometheus, expr: str, failure: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not prometheus.query(expr):
        assert time.monotonic() < deadline, failure
        time.sleep(0.5)


# -- tests -----------------------------------------------------------------------------------------------
def test_the_load_ran_through_the_daemon(load):
    *good, bad = load
    for events in good:
        types = [e["type"] for e in events]
        assert types[0] == "ready" and types[-1] == "summary" and "identity" in types
    assert bad[-1]["type"] == "error" and bad[-1]["code"] == "invalid_json"


def test_target_is_up_and_rules_are_loaded_healthy(prometheus, load):
    targets = http_json(f"{prometheus.base}/api/v1/targets")["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [("voxguard", "up")]
    groups = http_json(f"{prometheus.base}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert [r["name"] for r in rules] == expected
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r
    firing = http_json(f"{prometheus.base}/api/v1/alerts")["data"]["alerts"]
    assert "VoxguardDown" not in {a["labels"]["alertname"] for a in firing}


def test_every_alert_expression_evaluates(prometheus, load):
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            prometheus.query(rule["expr"])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr with the template variables substituted) for every panel target,
    and the template variable queries."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in TEMPLATE_VALUES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            out.append((panel["title"], expr))
    return out


def test_every_dashboard_query_evaluates_and_the_key_panels_have_data(prometheus, load):
    results = {}
    for title, expr in dashboard_queries():
        results.setdefault(title, []).append(prometheus.query(expr))
    for title in ("Active streams", "Throughput", "Event latency", "Embedding latency (per batch)",
                  "Search latency (per batch)", "Batch size", "Events by type", "Errors by code", "Speech ratio",
                  "Queue depth", "Model and index", "Enrolled speakers", "Windows / s", "p95 event latency"):
        assert all(results[title]), f"panel {title!r} has a query with no data: {results[title]}"
    events = {r["metric"]["type"] for r in results["Events by type"][0]}
    assert {"ready", "speech_start", "identity", "verification", "summary", "error"} <= events
    errors = {r["metric"]["code"]: float(r["value"][1]) for r in results["Errors by code"][0]}
    assert errors.pop("invalid_json") > 0 and set(errors.values()) == {0.0}
    model = results["Model and index"][0][0]["metric"]
    assert model["embedder"] == "resemblyzer" and model["device"] == "cpu"


def test_key_series(prometheus, load):
    sel = '{job="voxguard"}'
    assert prometheus.value(f"max_over_time(voxguard_active_streams{sel}[5m])") >= STREAMS
    assert prometheus.value(f"voxguard_active_streams{sel}") == 0
    assert prometheus.value(f"voxguard_index_speakers{sel}") == SPEAKERS
    windows = prometheus.value(f"voxguard_windows_embedded_total{sel}")
    assert windows >= STREAMS * 5  # > 1 window per second of speech on each stream
    latency = prometheus.value('voxguard_event_latency_seconds_bucket{job="voxguard", le="+Inf"}')
    assert latency >= STREAMS * 5
    assert prometheus.value('voxguard_events_total{job="voxguard", type="identity"}') == latency
    audio = prometheus.value(f"voxguard_audio_seconds_total{sel}")
    assert STREAMS * (STREAM_SECONDS - 1) <= audio <= STREAMS * STREAM_SECONDS + 1
    p95 = prometheus.value('histogram_quantile(0.95, sum by (le) (voxguard_event_latency_seconds_bucket'
                           '{job="voxguard"}))')
    assert 0 < p95 <= 5.0  # inside the histogram's finite buckets
