"""Packaging hook: ship the repository's top-level ``conf/`` and ``artifacts/`` (the tiny foundation LLM that
``conf/pipeline/tiny.yaml`` loads) inside the installed package as ``deco_core/conf`` and ``deco_core/artifacts``.

The project metadata lives in pyproject.toml; only the package list is computed here, because pyproject's
``packages`` table cannot combine ``find`` with a directory mapped under another name. In a source checkout
``deco_core.config`` reads ``conf/`` in place; an installed wheel (``pip install .``, the Docker image) reads the
copy below ``deco_core/conf``.
"""

from setuptools import find_namespace_packages, find_packages, setup

CONF_PACKAGES = ["deco_core.conf", *(f"deco_core.conf.{group}" for group in find_namespace_packages(where="conf"))]
ARTIFACT_PACKAGES = ["deco_core.artifacts",
                     *(f"deco_core.artifacts.{sub}" for sub in find_namespace_packages(where="artifacts"))]
ARTIFACT_FILES = ["*.json", "*.safetensors"]

setup(
    packages=[*find_packages(include=["deco_core*", "pipelines*"]), *CONF_PACKAGES, *ARTIFACT_PACKAGES],
    package_dir={"deco_core.conf": "conf", "deco_core.artifacts": "artifacts"},
    package_data={**{name: ["*.yaml"] for name in CONF_PACKAGES},
                  **{name: ARTIFACT_FILES for name in ARTIFACT_PACKAGES}},
)
