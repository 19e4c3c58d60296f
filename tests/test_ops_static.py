"""Static checks of the operations files: the systemd unit (``systemd-analyze verify`` and
``security``), the Prometheus configuration and alert rules (``promtool check`` and
``promtool test rules``), and the Grafana dashboard's structure — plus that every
``voxguard_*`` metric the rules and the dashboard use is one the daemon exports.

Needs ``systemd-analyze`` (Debian ``systemd``) and ``promtool`` (Debian ``prometheus``);
the tests that need a missing one skip, saying which.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from voxguard.daemon.metrics import DaemonMetrics

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "voxguard.service"
GPU_DROPIN = REPO / "systemd" / "voxguard-gpu.conf"
ENV_EXAMPLE = REPO / "systemd" / "voxguard.env.example"
PROM = REPO / "ops" / "prometheus"
DASHBOARD = REPO / "ops" / "grafana" / "voxguard-dashboard.json"
UNIT_EXEC = "/opt/voxguard/.venv/bin/voxguard"

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (Debian package systemd)")
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian package prometheus)")


# -- systemd -----------------------------------------------------------------------------------------
def unit_directives(text: str) -> dict[str, list[str]]:
    """``Key`` -> every value it is given (systemd allows repeating keys)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed_copy(tmp_path: Path, dropins: dict[str, str] | None = None) -> Path:
    """The unit in ``tmp_path`` with ExecStart pointing at this venv's real ``voxguard``
    (verify insists that the binary exists), plus drop-ins in ``voxguard.service.d/``."""
    exe = Path(sys.executable).parent / "voxguard"
    assert exe.is_file(), f"{exe} missing: install the package into the venv"
    text = UNIT.read_text()
    assert UNIT_EXEC in text
    unit = tmp_path / "voxguard.service"
    unit.write_text(text.replace(UNIT_EXEC, str(exe)))
    if dropins:
        d = tmp_path / "voxguard.service.d"
        d.mkdir()
        for name, body in dropins.items():
            (d / name).write_text(body)
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          cwd=unit.parent, timeout=60)


@needs_systemd_analyze
def test_unit_verifies_without_a_warning(tmp_path):
    r = verify(installed_copy(tmp_path))
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


@needs_systemd_analyze
def test_unit_with_the_gpu_dropin_verifies_without_a_warning(tmp_path):
    r = verify(installed_copy(tmp_path, {"gpu.conf": GPU_DROPIN.read_text()}))
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


@needs_systemd_analyze
def test_verify_reports_what_the_checks_above_must_catch(tmp_path):
    """The checks above fail on a misspelt key or a broken assignment (systemd only warns)."""
    r = verify(installed_copy(tmp_path, {"bad.conf": "[Service]\nWatchdogSecs=5\nEnvironment=A=b c\n"}))
    assert "Unknown key" in r.stderr and "Invalid environment assignment" in r.stderr, r.stderr
    (tmp_path / "missing").mkdir()
    unit = tmp_path / "missing" / "voxguard.service"
    unit.write_text(UNIT.read_text().replace(UNIT_EXEC, "/nonexistent/voxguard"))
    r = verify(unit)
    assert r.returncode != 0 and "/nonexistent/voxguard" in r.stderr


@needs_systemd_analyze
def test_unit_hardening_exposure_is_low(tmp_path):
    """``systemd-analyze security`` rates the unit at most 2.0 ("OK"; 10 is fully exposed)."""
    unit = installed_copy(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    level = float(re.search(r"Overall exposure level for voxguard\.service: ([\d.]+)", r.stdout).group(1))
    assert level <= 2.0


def test_unit_runs_serve_as_a_notify_service_with_watchdog_and_reload():
    d = unit_directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["ExecStart"][0].split()[:2] == [UNIT_EXEC, "serve"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the daemon's SIGHUP hot reload
    assert "VOXGUARD_STORE=/var/lib/voxguard/voxguard.db" in d["Environment"]
    assert d["StateDirectory"] == ["voxguard"] and d["EnvironmentFile"] == ["-/etc/voxguard/voxguard.env"]
    assert d["User"] != ["root"] and d["CapabilityBoundingSet"] == [""]


def test_env_example_names_only_variables_voxguard_reads():
    """Every ``KEY=`` line (commented or not) is valid EnvironmentFile syntax and every
    ``VOXGUARD_*`` key is read somewhere in the package (or by the unit)."""
    sources = "".join(p.read_text() for d in ("voxguard", "daemon") for p in (REPO / d).rglob("*.py"))
    sources += UNIT.read_text()
    keys = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            assert not m.group(2).startswith(" "), line
            keys.append(m.group(1))
    assert "VOXGUARD_STORE" in keys and "VOXGUARD_TOKEN_FILE" in keys
    for key in keys:
        if key.startswith("VOXGUARD_"):
            assert key in sources, f"{key} in {ENV_EXAMPLE.name} is read by nothing"


# -- Prometheus ----------------------------------------------------------------------------------------
def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=PROM, timeout=120)


@needs_promtool
def test_promtool_check_rules():
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout


@needs_promtool
def test_promtool_check_config():
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_unit_tests_pass():
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@needs_promtool
def test_promtool_unit_tests_fail_when_a_rule_changes(tmp_path):
    """The unit tests are sensitive: raising the latency target breaks them."""
    rules = (PROM / "alerts.yml").read_text()
    assert ") > 0.3\n" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace(") > 0.3\n", ") > 0.6\n"))
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    r = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "VoxguardEventLatencyHigh" in r.stdout + r.stderr


def test_the_required_alerts_exist_and_every_alert_is_unit_tested_both_ways():
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names))
    for required in ("VoxguardDown", "VoxguardEventLatencyHigh", "VoxguardWindowsDropped",
                     "VoxguardStreamErrorRate", "VoxguardCloneSuspicionBurst"):
        assert required in names
    for r in alert_rules():
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
    fires, quiet = set(), set()
    for test in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fires == set(names), f"alerts never tested firing: {set(names) - fires}"
    assert quiet == set(names), f"alerts never tested quiet: {set(names) - quiet}"


# -- metric names ----------------------------------------------------------------------------------------
def exported_series_names() -> set[str]:
    """Every sample name ``DaemonMetrics`` can export (labelled families have no sample
    until first used, so names come from the family type)."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
                "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for family in DaemonMetrics().registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bvoxguard_[a-z_]+\b", text))


def test_rules_and_dashboard_use_only_exported_metrics():
    exported = exported_series_names()
    assert "voxguard_event_latency_seconds_bucket" in exported
    used = metric_names((PROM / "alerts.yml").read_text()) | metric_names(DASHBOARD.read_text())
    assert used - exported == set()
    # and the dashboard shows every metric family the daemon has
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in metric_names(DASHBOARD.read_text())}
    assert families - shown == set()


# -- Grafana -----------------------------------------------------------------------------------------------
def dashboard_targets(dash: dict) -> list[dict]:
    return [t for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_is_importable_as_is():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "voxguard" and dash["title"] and 36 <= dash["schemaVersion"] <= 41
    assert "id" not in dash or dash["id"] is None  # an exported id would clash on import
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cell = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not cell & cells, f"panel {p['title']!r} overlaps another"
        cells |= cell
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))
    for t in dashboard_targets(dash):
        assert t["datasource"]["uid"] == "${datasource}"
        assert t["expr"].count("(") == t["expr"].count(")")
        assert re.findall(r"\$\{?(\w+)", t["expr"]) and set(re.findall(r"\$\{?(\w+)", t["expr"])) <= {
            "job", "instance", "__rate_interval"}
