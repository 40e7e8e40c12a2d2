"""The manifests under infra/k8s as the cluster reads them.

- Core kinds (Deployment, Service, CronJob, ...) against the Kubernetes OpenAPI schemas shipped by
  ``kubernetes-validate``, in strict mode (unknown fields are errors).
- RayCluster / RayJob / RayCronJob against the vendored CRDs of the supported KubeRay release
  (tests/fixtures/kuberay_crds, KubeRay 1.6.2), with unknown fields rejected as ``kubectl apply`` does.
- RayJob / RayCronJob entrypoints through the very shell line KubeRay's submitter runs (``bash -ce``), with
  stand-in ``ray`` and ``deco`` programs that record how they were called: the whole entrypoint must reach
  ``ray job submit`` and nothing may run in the submitter pod itself.
"""

from __future__ import annotations

import copy
import functools
import gzip
import os
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.test_infra import K8S, manifests, objects
from tests.unit.test_infra_commands import shell_commands

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "tests" / "fixtures" / "kuberay_crds"
KUBERAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}
KUBERNETES_VERSION = "1.27.0"  # the oldest Kubernetes infra/k8s/README.md supports


# ------------------------------------------------------------------------------------------ schemas
def strict(schema: Any) -> Any:
    """A copy of a CRD schema where objects with declared properties reject undeclared ones."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """The strict JSON-schema validator of ``kind``'s ray.io/v1 CRD version."""
    path = CRDS / f"ray.io_{KUBERAY_KINDS[kind]}.yaml.gz"
    with gzip.open(path, "rt") as fh:
        crd = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # object meta is checked by the API server itself
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    errors = crd_validator(doc["kind"]).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def core_params() -> list[Any]:
    return [pytest.param(d, id=f"{f}:{d['kind']}:{d['metadata']['name']}")
            for f, d in manifests() if d["kind"] not in KUBERAY_KINDS]  # fmt: skip


def kuberay_params() -> list[Any]:
    return [pytest.param(d, id=f"{f}:{d['kind']}:{d['metadata']['name']}")
            for f, d in manifests() if d["kind"] in KUBERAY_KINDS]  # fmt: skip


@pytest.mark.parametrize("doc", core_params())
def test_core_kinds_match_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    """Every core object validates (strict: no unknown fields) against the Kubernetes API schema."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_core_schema_check_rejects_an_unknown_field() -> None:
    (deploy,) = objects("Deployment")
    bad = copy.deepcopy(deploy)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("doc", kuberay_params())
def test_kuberay_kinds_match_the_vendored_crds(doc: dict[str, Any]) -> None:
    """Every RayCluster, RayJob and RayCronJob validates against the KubeRay 1.6.2 CRD schema."""
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_errors(doc) == []


def test_crd_check_rejects_unknown_and_mistyped_fields() -> None:
    (cron,) = objects("RayCronJob")
    misspelt = copy.deepcopy(cron)
    misspelt["spec"]["scheduel"] = misspelt["spec"].pop("schedule")
    assert any("scheduel" in e for e in crd_errors(misspelt))
    assert any("'schedule' is a required property" in e for e in crd_errors(misspelt))
    (job,) = objects("RayJob")
    mistyped = copy.deepcopy(job)
    mistyped["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("workerGroupSpecs.0.replicas" in e for e in crd_errors(mistyped))


def test_raycronjob_manifest_names_its_feature_gate() -> None:
    """RayCronJob is alpha and off by default: the manifest says which gate to enable and how."""
    text = (K8S / "raycronjob.yaml").read_text()
    assert "RayCronJob feature gate" in text or "FEATURE GATE" in text
    assert "--feature-gates=RayCronJob=true" in text
    assert "KubeRay 1.6" in text


# --------------------------------------------------------------------------------------- entrypoints
def kuberay_submitter_line(entrypoint: str) -> str:
    """The shell line KubeRay 1.6's K8sJobMode submitter runs (ray-operator/controllers/ray/common/job.go):
    the pieces are joined with spaces and the entrypoint is appended verbatim after ``--``."""
    address, job_id = "http://deco-head-svc:8265", "deco-job-1"
    cmd = ["if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";", "then",
           "ray", "job", "submit", "--address", address, "--no-wait", "--submission-id", job_id,
           "--", entrypoint.strip(), ";", "fi", ";", "ray", "job", "logs", "--address", address, "--follow", job_id]
    return " ".join(cmd)


def stub(path: Path, name: str, fail_on: str = "") -> None:
    """A stand-in program that appends its argv (tab-separated) to $CALLS; exits 1 when argv[2] == fail_on."""
    path.write_text("#!/bin/bash\n"
                    f"{{ printf '{name}'; printf '\\t%s' \"$@\"; printf '\\n'; }} >> \"$CALLS\"\n"
                    f"[ -n '{fail_on}' ] && [ \"${{2:-}}\" = '{fail_on}' ] && exit 1\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_submitter(entrypoint: str, tmp_path: Path) -> list[list[str]]:
    """Run KubeRay's submitter line under ``bash -ce`` with stand-in programs; the recorded calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub(bin_dir / "ray", "ray", fail_on="status")  # the job was not submitted before
    stub(bin_dir / "deco", "deco")
    calls = tmp_path / "calls.tsv"
    calls.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls)}
    proc = subprocess.run(["bash", "-ce", "--", kuberay_submitter_line(entrypoint)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in calls.read_text().splitlines()]


def job_entrypoints() -> list[Any]:
    found = [(f, d["spec"]["entrypoint"]) for f, d in manifests() if d["kind"] == "RayJob"]
    found += [(f, d["spec"]["jobTemplate"]["entrypoint"]) for f, d in manifests() if d["kind"] == "RayCronJob"]
    return [pytest.param(e, id=f) for f, e in found]


@pytest.mark.parametrize("entrypoint", job_entrypoints())
def test_whole_entrypoint_reaches_ray_job_submit(entrypoint: str, tmp_path: Path) -> None:
    """Through KubeRay's `bash -ce` line the entire entrypoint is submitted as the Ray job, and nothing of it
    runs in the submitter pod."""
    calls = run_submitter(entrypoint, tmp_path)
    submits = [c for c in calls if c[:3] == ["ray", "job", "submit"]]
    assert len(submits) == 1, calls
    submitted = submits[0][submits[0].index("--") + 1:]
    assert shlex.join(submitted) == shlex.join(shlex.split(entrypoint))  # what Ray's CLI makes the job run
    assert [c for c in calls if c[0] == "deco"] == [], "part of the entrypoint ran in the submitter pod"
    assert len(shell_commands(entrypoint)) == 1 and submitted[0] == "deco"


def test_submitter_check_catches_a_compound_entrypoint(tmp_path: Path) -> None:
    """The check above fails for the `cd X && cmd` shape: only `cd` is submitted, `deco` runs locally."""
    calls = run_submitter("cd /home/ray/deco && deco pipeline run --config pipeline/llava7b", tmp_path)
    (submit,) = [c for c in calls if c[:3] == ["ray", "job", "submit"]]
    assert submit[submit.index("--") + 1:] == ["cd", "/home/ray/deco"]
    assert ["deco", "pipeline", "run", "--config", "pipeline/llava7b"] in calls
