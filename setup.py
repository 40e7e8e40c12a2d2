"""Packaging hook: ship the repository's top-level ``conf/`` inside the installed package as ``deco_core/conf``.

The project metadata lives in pyproject.toml; only the package list is computed here, because pyproject's
``packages`` table cannot combine ``find`` with a directory mapped under another name. In a source checkout
``deco_core.config`` reads ``conf/`` in place; an installed wheel (``pip install .``, the Docker image) reads the
copy below ``deco_core/conf``.
"""

from setuptools import find_namespace_packages, find_packages, setup

CONF_PACKAGES = ["deco_core.conf", *(f"deco_core.conf.{group}" for group in find_namespace_packages(where="conf"))]

setup(
    packages=[*find_packages(include=["deco_core*", "pipelines*"]), *CONF_PACKAGES],
    package_dir={"deco_core.conf": "conf"},
    package_data={name: ["*.yaml"] for name in CONF_PACKAGES},
)
