"""Static checks of infra/k8s: the Kubernetes manifests' structure, image, resources and secrets.

Every YAML under infra/k8s is parsed and checked for structure, the one image name, secrets
passed only by reference, cluster-internal services and scheduled jobs. The entrypoints the
manifests run, the local service scripts and the Dockerfile are checked in test_infra_commands.py.
No cluster, Docker engine or running service is needed.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
IMAGE = "deco-pipeline:0.1.0"

# Env names that must come from a Secret whatever their value.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL|BACKEND_STORE_URI")
# Values that look like credentials: a URI with user:password@, or a long random-looking string.
SECRET_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@|^[A-Za-z0-9+/=_-]{32,}$")


@functools.cache
def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every object in every YAML file under infra/k8s."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":  # kustomize's own config, not a cluster object
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def manifest_params() -> list[Any]:
    return [pytest.param(f, d, id=f"{f}:{d.get('kind')}:{(d.get('metadata') or {}).get('name')}")
            for f, d in manifests()]  # fmt: skip


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc.get("kind") == kind]


def walk_containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container spec (containers / initContainers lists) at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from walk_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_containers(item)


def ray_cluster_specs() -> list[dict[str, Any]]:
    """The RayCluster specs: standalone, inside the RayJob, inside the RayCronJob's template."""
    specs = [doc["spec"] for doc in objects("RayCluster")]
    specs += [doc["spec"]["rayClusterSpec"] for doc in objects("RayJob")]
    specs += [doc["spec"]["jobTemplate"]["rayClusterSpec"] for doc in objects("RayCronJob")]
    return specs


def secret_env_violations(doc: dict[str, Any]) -> list[str]:
    """Env entries that carry a literal secret, or a secret-named variable not set from a Secret."""
    bad = []
    for container in walk_containers(doc):
        for env in container.get("env", []):
            name, value = env.get("name", ""), env.get("value")
            from_secret = "secretKeyRef" in (env.get("valueFrom") or {})
            if SECRET_NAME.search(name.upper()) and not from_secret:
                bad.append(f"{container.get('name')}: {name} must use valueFrom.secretKeyRef")
            elif isinstance(value, str) and SECRET_VALUE.search(value):
                bad.append(f"{container.get('name')}: {name} has a literal that looks secret")
    return bad


@pytest.mark.parametrize("fname,doc", manifest_params())
def test_every_object_has_version_kind_and_name(fname: str, doc: dict[str, Any]) -> None:
    """Each Kubernetes object declares apiVersion, kind and metadata.name."""
    assert doc.get("apiVersion") and doc.get("kind"), f"{fname}: apiVersion/kind missing"
    assert (doc.get("metadata") or {}).get("name"), f"{fname}: {doc['kind']} has no metadata.name"


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml lists every manifest file and declares the image override point."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert [i["name"] for i in kust["images"]] == [IMAGE.split(":")[0]]
    assert {f for f, _ in manifests()} == files
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob", "Deployment", "Service"} <= kinds


def test_every_container_uses_the_one_image() -> None:
    """Every container of every object runs the single project image."""
    images = {(f, c.get("image")) for f, doc in manifests() for c in walk_containers(doc)}
    assert images and {img for _, img in images} == {IMAGE}, sorted(images, key=str)


def test_ray_groups_request_and_limit_resources() -> None:
    """Every Ray group sets cpu/memory requests and limits; a GPU group asks 8 GPUs and has shm."""
    for spec in ray_cluster_specs():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            for container in walk_containers(group):
                res = container["resources"]
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res[part]), f"{container['name']}: {part}"
        gpu_groups = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in str(g)]
        assert gpu_groups, "no GPU worker group"
        for group in gpu_groups:
            (container,) = group["template"]["spec"]["containers"]
            assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "8"
            assert str(container["resources"]["requests"]["nvidia.com/gpu"]) == "8"
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_ray_version_matches_the_installed_ray() -> None:
    """Every Ray cluster spec and the Dockerfile's base image use the Ray version of the venv."""
    version = importlib.metadata.version("ray")
    assert {spec["rayVersion"] for spec in ray_cluster_specs()} == {version}
    assert f"rayproject/ray:{version}-py311" in DOCKERFILE.read_text()


def test_ray_head_and_mlflow_stay_inside_the_cluster() -> None:
    """No NodePort/LoadBalancer/Ingress; Ray heads are ClusterIP with token auth on."""
    assert not objects("Ingress")
    for svc in objects("Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    for spec in ray_cluster_specs():
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
        assert spec["authOptions"]["mode"] == "token"


@pytest.mark.parametrize("fname,doc", manifest_params())
def test_no_literal_secrets(fname: str, doc: dict[str, Any]) -> None:
    """No env var carries a literal secret; secret-looking names use valueFrom.secretKeyRef."""
    assert secret_env_violations(doc) == [], fname


def test_secret_check_catches_literals() -> None:
    """The secret check flags literal keys and credential URIs, and accepts secretKeyRef."""
    ref = {"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    bad = {"spec": {"containers": [{"name": "c", "env": [
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"},
        {"name": "DB", "value": "postgresql://user:pw@db:5432/mlflow"},
        {"name": "MLFLOW_TRACKING_TOKEN", **ref},
        {"name": "MLFLOW_TRACKING_URI", "value": "http://deco-mlflow:5000"},
    ]}]}}  # fmt: skip
    assert len(secret_env_violations(bad)) == 2


def test_ray_jobs_clean_up_and_cron_runs_are_scheduled() -> None:
    """RayJob templates delete their clusters after a TTL; schedules are 5-field cron strings."""
    (rayjob,) = objects("RayJob")
    (raycron,) = objects("RayCronJob")
    for spec in (rayjob["spec"], raycron["spec"]["jobTemplate"]):
        assert spec["shutdownAfterJobFinishes"] is True
        assert int(spec["ttlSecondsAfterFinished"]) > 0
    for cron in (raycron, *objects("CronJob")):
        assert len(cron["spec"]["schedule"].split()) == 5


def test_cronjob_forbids_overlap_and_targets_the_ray_head() -> None:
    """The CronJob fallback forbids concurrent runs and submits to the RayCluster's head service."""
    (cluster,) = objects("RayCluster")
    (cron,) = objects("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    argv = [*container["command"], *container["args"]]
    assert argv[:3] == ["ray", "job", "submit"]
    head = f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert argv[argv.index("--address") + 1] == head


def test_mlflow_server_is_probed_and_keeps_credentials_in_secrets() -> None:
    """MLflow: /health readiness probe on the served port, store URI from a Secret, S3 artifacts."""
    (deploy,) = objects("Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["mlflow", "server"]
    args = container["args"]
    assert args[args.index("--artifacts-destination") + 1].startswith("s3://")
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[probe["port"]] == int(args[args.index("--port") + 1])
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert {"requests", "limits"} <= set(container["resources"])
    (svc,) = [s for s in objects("Service") if s["metadata"]["name"] == deploy["metadata"]["name"]]
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    # The URI the Ray pods use must pass the server's Host-header check.
    (config,) = objects("ConfigMap")
    host = urllib.parse.urlsplit(config["data"]["MLFLOW_TRACKING_URI"]).netloc
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    assert any(fnmatch.fnmatch(host, pattern) for pattern in allowed), (host, allowed)
