"""Kustomize base and overlay: render, validate core objects offline, check the semantics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamd.daemon import SHUTDOWN_MARGIN_S

KUSTOMIZE_ROOT = Path(__file__).resolve().parents[2] / "config" / "kubernetes"
BASE = KUSTOMIZE_ROOT / "base"
OVERLAY = KUSTOMIZE_ROOT / "overlays" / "second-stream"
KUBECTL = shutil.which("kubectl")
# The oldest Kubernetes we claim (persistentVolumeClaimRetentionPolicy is on by default from
# 1.27) and the kubectl on the build image.
K8S_VERSIONS = ["1.27.0", "1.32.0"]
FLUSH_TIMEOUT_S = 15  # kafka.flush_timeout default
TOKEN_MOUNT = "/run/secrets/x"

Manifest = dict[str, Any]


def _render(root: Path) -> list[Manifest]:
    if KUBECTL is not None:
        out = subprocess.run(
            [KUBECTL, "kustomize", str(root)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]
    if root != BASE:
        pytest.skip("kubectl is absent: overlays need kustomize to render")
    docs: list[Manifest] = []
    for name in ("service.yaml", "statefulset.yaml"):
        docs.extend(doc for doc in yaml.safe_load_all((root / name).read_text()) if doc)
    return docs


@pytest.fixture(scope="module", params=[BASE, OVERLAY], ids=["base", "second-stream"])
def rendered(request: pytest.FixtureRequest) -> list[Manifest]:
    return _render(request.param)


def _one(docs: list[Manifest], kind: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _container(docs: list[Manifest]) -> Manifest:
    containers = _one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Manifest = containers[0]
    return container


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_strictly(rendered: list[Manifest], version: str) -> None:
    core = [d for d in rendered if "monitoring.coreos.com" not in d["apiVersion"]]
    assert {d["kind"] for d in core} >= {"StatefulSet", "Service"}
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_is_not_vacuous(rendered: list[Manifest]) -> None:
    statefulset = yaml.safe_load(yaml.safe_dump(_one(rendered, "StatefulSet")))
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSIONS[-1], strict=True)


def test_single_stream_holder(rendered: list[Manifest]) -> None:
    spec = _one(rendered, "StatefulSet")["spec"]
    assert spec["replicas"] == 1
    assert spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
    service = _one(rendered, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert spec["serviceName"] == service["metadata"]["name"]
    selector = spec["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert spec["template"]["metadata"]["labels"].items() >= selector.items()


def test_probes_and_grace_period(rendered: list[Manifest]) -> None:
    pod = _one(rendered, "StatefulSet")["spec"]["template"]["spec"]
    container = _container(rendered)
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9464}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", 9464)
    # The daemon exits within flush_timeout + SHUTDOWN_MARGIN_S; SIGKILL must come later.
    assert pod["terminationGracePeriodSeconds"] >= FLUSH_TIMEOUT_S + SHUTDOWN_MARGIN_S + 10


def test_hardening(rendered: list[Manifest]) -> None:
    pod = _one(rendered, "StatefulSet")["spec"]["template"]["spec"]
    container = _container(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # STREAMD_* service env vars vs overrides
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    resources = container["resources"]
    assert resources["limits"]["memory"] == "256Mi"
    assert set(resources["requests"]) >= {"memory", "cpu"}
    assert not any(e["name"].endswith("BEARER_TOKEN") for e in container.get("env", []))


def test_volumes(rendered: list[Manifest]) -> None:
    spec = _one(rendered, "StatefulSet")["spec"]
    mounts = {m["name"]: m for m in _container(rendered)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert mounts["spool"]["mountPath"] == "/var/lib/streamd"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert mounts["x-token"]["mountPath"] == TOKEN_MOUNT
    assert mounts["x-token"]["readOnly"] is True
    assert "secretName" in volumes["x-token"]["secret"]
    assert mounts["config"]["mountPath"] == "/etc/streamd"
    assert "configMap" in volumes["config"]


def test_generated_objects_are_wired(rendered: list[Manifest]) -> None:
    if KUBECTL is None:
        pytest.skip("kubectl is absent: generators are not rendered")
    volumes = {
        v["name"]: v for v in _one(rendered, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    }
    secret = _one(rendered, "Secret")
    config_map = _one(rendered, "ConfigMap")
    assert volumes["x-token"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert set(secret["data"]) == {"x_bearer_token"}
    assert set(config_map["data"]) == {"streamd.toml", "rules.toml"}


def test_config_map_is_a_valid_streamd_config(
    rendered: list[Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged streamd.toml loads with streamd's own loader, as the pod would."""
    if KUBECTL is None:
        pytest.skip("kubectl is absent: generators are not rendered")
    config = pytest.importorskip("streamd.config")
    config_map = _one(rendered, "ConfigMap")
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    env = {e["name"]: e["value"] for e in _container(rendered).get("env", []) if "value" in e}
    settings = config.load_settings(tmp_path / "streamd.toml", environ=env)
    assert settings.http.listen == "0.0.0.0:9464"
    assert str(settings.spool.dir) == "/var/lib/streamd/spool"
    assert str(settings.x.bearer_token_file) == f"{TOKEN_MOUNT}/x_bearer_token"
    assert settings.kafka.flush_timeout <= FLUSH_TIMEOUT_S
    assert settings.rules.resolved_rules(tmp_path)
    args = _container(rendered)["args"]
    assert args == ["run", "-c", "/etc/streamd/streamd.toml"]


def test_overlay_is_a_distinct_stream() -> None:
    if KUBECTL is None:
        pytest.skip("kubectl is absent: overlays need kustomize to render")
    base, overlay = _render(BASE), _render(OVERLAY)
    base_names = {(d["kind"], d["metadata"]["name"]) for d in base}
    overlay_names = {(d["kind"], d["metadata"]["name"]) for d in overlay}
    assert not base_names & overlay_names
    assert all(name.endswith("-second") or "-second-" in name for _, name in overlay_names)
    base_sel = _one(base, "StatefulSet")["spec"]["selector"]["matchLabels"]
    overlay_sel = _one(overlay, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert base_sel != overlay_sel
    assert _one(base, "Secret")["data"] != _one(overlay, "Secret")["data"]
    env = {e["name"]: e["value"] for e in _container(overlay)["env"]}
    assert env["STREAMD_KAFKA__TOPIC"] != "x.tweets"
    monitor = _one(overlay, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == overlay_sel


def test_pod_monitor_structure() -> None:
    """kubernetes_validate has no schemas for CRDs: check the PodMonitor by hand."""
    if KUBECTL is None:
        pytest.skip("kubectl is absent: overlays need kustomize to render")
    overlay = _render(OVERLAY)
    monitor = _one(overlay, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
    port_names = {p["name"] for p in _container(overlay)["ports"]}
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    pod_labels = _one(overlay, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= monitor["spec"]["selector"]["matchLabels"].items()
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, K8S_VERSIONS[-1], strict=True)
