"""deploy/: every Kubernetes manifest validates against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors), and the manifests say what the
daemon needs — probes on /readyz and /healthz, a drain window longer than the daemon's
shutdown, secrets for tokens and the store URL, a Prometheus scrape, an autoscaler, a GPU
variant."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the [test] extra)")

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "deploy").rglob("*.yaml"))
K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest we support (preStop sleep) and the newest schema we have


def documents() -> list[tuple[Path, dict]]:
    out = []
    for path in MANIFESTS:
        out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in documents() if d["kind"] == kind]


def test_there_are_manifests():
    kinds = {d["kind"] for _, d in documents()}
    assert {"Deployment", "Service", "Secret", "HorizontalPodAutoscaler"} <= kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_is_valid(path, version):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kv.validate(doc, version, strict=True)  # raises ValidationError


def test_the_validator_catches_broken_manifests():
    dep = by_kind("Deployment")[0]
    for breakage in (lambda d: d["spec"].__setitem__("replicas", "two"),
                     lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("readinessprobe", {}),
                     lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name")):
        bad = copy.deepcopy(dep)
        breakage(bad)
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, K8S_VERSIONS[0], strict=True)


def _container(dep: dict) -> dict:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def test_deployments_probe_drain_and_take_secrets():
    deps = by_kind("Deployment")
    assert {d["metadata"]["name"] for d in deps} == {"voxguard", "voxguard-gpu"}
    for dep in deps:
        pod = dep["spec"]["template"]["spec"]
        c = _container(dep)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        # the daemon's shutdown takes at most 90 s (daemon/server.py SHUTDOWN_TIMEOUT) after preStop
        from voxguard.daemon.server import SHUTDOWN_TIMEOUT

        pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] >= pre + SHUTDOWN_TIMEOUT
        env = {e["name"]: e for e in c["env"]}
        assert env["VOXGUARD_STORE"]["valueFrom"]["secretKeyRef"]["key"] == "store-url"
        token_file = c["args"][c["args"].index("--token-file") + 1]
        mount = next(m for m in c["volumeMounts"] if token_file.startswith(m["mountPath"]))
        vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert vol["secret"]["secretName"] == env["VOXGUARD_STORE"]["valueFrom"]["secretKeyRef"]["name"]
        assert "--host" in c["args"] and c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
        assert ann["prometheus.io/port"] == str(c["ports"][0]["containerPort"])
    gpu = next(d for d in deps if d["metadata"]["name"] == "voxguard-gpu")
    assert _container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "cuda" in _container(gpu)["args"]


def test_service_and_autoscaler_point_at_the_daemon():
    (svc,) = by_kind("Service")
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind("Deployment")]
    assert all(svc["spec"]["selector"].items() <= lab.items() for lab in labels)
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "voxguard"}
    assert hpa["spec"]["minReplicas"] >= 2
