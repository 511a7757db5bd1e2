"""The deploy material of infra/deploy validates without a cluster or a Docker daemon.

compose.yaml: `docker compose config` (or Debian's `docker-compose config`, which
infra/install-system-deps.sh installs where neither exists). The Kubernetes
manifests: rendered by Kustomize (`kubectl kustomize` where kubectl exists, else
the same resource list read here) and checked in strict mode against the
Kubernetes JSON schemas the kubernetes-validate package ships; KEDA's
ScaledObject, a CRD those schemas lack, against its CRD schema vendored in
tests/schemas (from kedacore/keda).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from kubernetes_validate.utils import validate as validate_kubernetes

from services.settings import Settings

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "infra" / "deploy"
K8S = DEPLOY / "k8s"
KEDA_SCHEMA = ROOT / "tests" / "schemas" / "keda-scaledobject-v1alpha1.json"
# The oldest Kubernetes the manifests are for (the preStop sleep action is 1.30).
KUBERNETES_VERSION = "1.30"
COMMAND_TIMEOUT_S = 60
SETTING = re.compile(r"\bFLASHSALE_[A-Z0-9_]+\b")


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def compose_config(env_file: Path | None) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    # Only the variables compose.yaml reads come from env_file, not from this shell.
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLASHSALE_")}
    for name in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "GATEWAYS", "CONSUMERS"):
        env.pop(name, None)
    args = [*command, "--project-directory", str(DEPLOY), "-f", str(DEPLOY / "compose.yaml")]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    return subprocess.run(
        [*args, "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=DEPLOY,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def test_compose_config_is_valid() -> None:
    done = compose_config(DEPLOY / "env.example")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"kafka", "redis", "postgres", "migrate", "gateway", "consumer", "lb"} <= set(services)
    assert {"prometheus", "grafana", "sale"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert services["gateway"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = compose_config(empty)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr or "FLASHSALE_SECRET" in done.stderr


def render_kustomization() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        done = subprocess.run(
            [kubectl, "kustomize", str(K8S)],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=True,
        )
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    # The subset of Kustomize kustomization.yaml uses: resources and a namespace.
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc and doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            if doc:
                docs.append(doc)
    return docs


def strict(schema: Any) -> Any:
    """What kubeconform's -strict does to a CRD schema: no field it does not name."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


def validate_manifest(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        assert doc["kind"] == "ScaledObject", f"no schema vendored for {doc['kind']}"
        schema = strict(json.loads(KEDA_SCHEMA.read_text()))
        Draft202012Validator(schema).validate(doc)
    else:
        validate_kubernetes(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    docs = render_kustomization()
    gateway = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("gateway")
    )
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    container["readinessProb"] = container.pop("readinessProbe")
    with pytest.raises(Exception, match="readinessProb"):
        validate_manifest(gateway)
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    with pytest.raises(Exception, match="maxReplicas"):
        validate_manifest(scaled)


def test_kubernetes_manifests_validate() -> None:
    docs = render_kustomization()
    docs.append(yaml.safe_load((K8S / "secret.example.yaml").read_text()))
    for doc in docs:
        validate_manifest(doc)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    gateway = by_kind["Deployment", "flashsale-gateway"]["spec"]["template"]["spec"]
    assert gateway["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    hpa = by_kind["HorizontalPodAutoscaler", "flashsale-gateway"]["spec"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    config = by_kind["ConfigMap", "flashsale-config"]["data"]
    scaled = by_kind["ScaledObject", "flashsale-consumer"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "flashsale-consumer"
    assert scaled["maxReplicaCount"] == int(config["FLASHSALE_PARTITIONS"])
    assert by_kind["Job", "flashsale-migrate"]["spec"]["template"]["spec"]["containers"][0][
        "command"
    ] == ["flashsale", "migrate"]
    for name in ("flashsale-gateway", "flashsale-consumer"):
        spec = by_kind["Deployment", name]["spec"]["template"]["spec"]
        refs = [ref for c in spec["containers"] for ref in c["envFrom"]]
        assert {"secretRef": {"name": "flashsale-secrets"}} in refs


def test_every_setting_the_deploy_files_name_exists() -> None:
    """A misspelt FLASHSALE_* variable would be silently ignored by Settings.from_env."""
    known = {"FLASHSALE_" + spec.name.upper() for spec in dataclasses.fields(Settings)}
    files = [
        DEPLOY / "compose.yaml",
        DEPLOY / "Dockerfile",
        DEPLOY / "env.example",
        *K8S.glob("*.yaml"),
    ]
    named = {(path.name, name) for path in files for name in SETTING.findall(path.read_text())}
    assert len(named) > 10
    assert {(file, name) for file, name in named if name not in known} == set()
