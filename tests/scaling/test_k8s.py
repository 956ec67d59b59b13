"""The Kubernetes manifests parse and agree with the code: every document loads, each Deployment
runs a real service module with environment variables that service reads, and its ports, gRPC
probes, Services and the KEDA ScaledObject match what the service's config class makes of that
environment, so the manifests cannot drift from the services."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from services.ingest.config import IngestConfig
from services.monitor.config import MonitorConfig
from services.processor.config import ProcessorConfig
from services.query.config import QueryConfig
from services.scaler.config import ScalerConfig

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CONFIGS: dict[str, Any] = {
    "ingest": IngestConfig,
    "processor": ProcessorConfig,
    "query": QueryConfig,
    "monitor": MonitorConfig,
    "scaler": ScalerConfig,
}
SHARED_SOURCES = ("auditmesh/config.py", "auditmesh/validation.py")


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def variables_read(service: str) -> set[str]:
    """AUDITMESH_* names the service's config reads (its config module and the shared readers;
    the scaler's config builds names from a prefix)."""
    text = "".join((ROOT / p).read_text() for p in (f"services/{service}/config.py", *SHARED_SOURCES))
    names = set(re.findall(r'"(AUDITMESH_[A-Z0-9_]+)"', text))
    names |= {f"AUDITMESH_SCALER_{n}" for n in re.findall(r'\b[ni]\("([A-Z0-9_]+)"', text)}
    return names


def environment(container: dict[str, Any], by_name: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env, $(VAR) expanded;
    a field reference becomes a sample pod address)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(by_name[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            env.update(by_name[("Secret", source["secretRef"]["name"])]["stringData"])
    for item in container.get("env", []):
        value = item.get("value")
        if value is None:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", item
            value = "10.1.2.3"
        env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(value))
    return env


def test_every_manifest_matches_the_services_config() -> None:
    """Images, commands, environment, ports, probes, Services and the ScaledObject agree with
    the services' config classes and with each other."""
    docs = documents()
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == set(CONFIGS)
    shared = by_name[("ConfigMap", "auditmesh-config")]["data"]
    read_by_any = set().union(*(variables_read(s) for s in CONFIGS))
    assert set(shared) <= read_by_any, set(shared) - read_by_any
    configs: dict[str, Any] = {}
    ports: dict[str, dict[str, int]] = {}
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"auditmesh:{version}"
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert (ROOT / "services" / name / "__main__.py").exists()
        env = environment(container, by_name)
        own = {item["name"] for item in container.get("env", [])} - {"POD_IP"}
        assert own <= variables_read(name), f"{name} reads none of {own - variables_read(name)}"
        cfg = CONFIGS[name].from_env(env)
        configs[name] = cfg
        assert cfg.host == "0.0.0.0"
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        ports[name] = named
        assert named == {"grpc": cfg.port, "metrics": cfg.metrics_port}, name
        assert "EXPOSE" in dockerfile and str(cfg.port) in dockerfile
        readiness = container["readinessProbe"]
        assert readiness["grpc"]["port"] == cfg.port, name
        liveness = container["livenessProbe"]
        assert liveness.get("grpc", {}).get("port", cfg.port) == cfg.port
        assert liveness.get("tcpSocket", {}).get("port", "grpc") in ("grpc", cfg.port)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        service = by_name[("Service", name)]
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert named[port["targetPort"]] == port["port"], (name, port)
    scaler: ScalerConfig = configs["scaler"]
    assert scaler.actuator == "keda"
    for name in ("ingest", "processor"):
        assert configs[name].scaler_target == f"scaler:{scaler.port}"
        assert configs[name].membership_prefix == scaler.membership_prefix
    assert configs["processor"].advertise == f"10.1.2.3:{configs['processor'].port}"
    monitor: MonitorConfig = configs["monitor"]
    assert dict(monitor.targets) == {
        "ingest": f"ingest:{ports['ingest']['metrics']}",
        "query": f"query:{ports['query']['metrics']}",
    }
    scaled = by_name[("ScaledObject", "processor")]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "processor"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "external"
    host, _, port = trigger["metadata"]["scalerAddress"].rpartition(":")
    assert host.split(".")[0] == "scaler" and int(port) == scaler.port
    assert scaled["spec"]["minReplicaCount"] == scaler.engine.policy.min_replicas
    assert scaled["spec"]["maxReplicaCount"] == scaler.engine.policy.max_replicas
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    grace = deployments["processor"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > configs["processor"].drain_wait_s + 10, "a drain must fit in the grace period"
