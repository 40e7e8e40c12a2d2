"""Shared fixtures: service plugins (S3, MLflow server), a tiny tokenizer and tiny configs, one Ray instance."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.mlflow_server", "tests.fixtures.ray_cluster"]


@pytest.fixture(scope="session")
def shapes_tokenizer():
    """The tiny pipeline's ShapesWorld tokenizer: the foundation LLM's own (the ids its weights were trained with)."""
    from deco_core.config import compose
    from deco_core.model.tokenizer import load_tokenizer

    return load_tokenizer(compose("pipeline/tiny").model.tokenizer)


@pytest.fixture(scope="session")
def tiny_cfg():
    """The default tiny config, composed from conf/pipeline/tiny.yaml."""
    from deco_core.config import compose

    return compose("pipeline/tiny")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small ShapesWorld shard corpus (pretrain, finetune and validation splits), built once."""
    from deco_core.config import compose
    from deco_core.data.corpus import build_shapes_corpus

    root = tmp_path_factory.mktemp("corpus")
    cfg = compose("pipeline/tiny", [f"data.root={root}", "data.caption_samples=800", "data.instruct_samples=800",
                                    "data.eval_samples=256", "data.format_samples=200",
                                    "data.samples_per_shard=200"])
    return build_shapes_corpus(cfg.data, progress=False)
