"""Specification tests for the `deco` command line (deco_core/cli.py): help text and `deco model summary`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from deco_core.cli import app


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _flat(text: str) -> str:
    """Collapse whitespace so rich's line wrapping cannot split an expected phrase."""
    return " ".join(text.split())


@pytest.fixture()
def fast_tokenizer(monkeypatch, shapes_tokenizer):
    """Reuse the session tokenizer instead of rebuilding the ShapesWorld one inside the command."""
    monkeypatch.setattr("deco_core.model.tokenizer.build_shapes_tokenizer", lambda *a, **k: shapes_tokenizer)


def test_help_lists_model(runner):
    """`deco --help` exits 0 and lists the `model` sub-command."""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "model" in result.output


def test_model_help_lists_summary(runner):
    """`deco model --help` lists the `summary` command."""
    result = runner.invoke(app, ["model", "--help"])
    assert result.exit_code == 0, result.output
    assert "summary" in result.output


def test_model_summary_default(runner, fast_tokenizer):
    """`deco model summary` (tiny config) prints the three modules and 16 visual tokens."""
    result = runner.invoke(app, ["model", "summary"])
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    for module in ("vision", "projector", "llm"):
        assert module in out
    assert "visual tokens: 16" in out
    assert "patches: 144" in out


def test_model_summary_group_override(runner, fast_tokenizer):
    """The group override model.projector=mlp keeps every patch: 144 visual tokens."""
    result = runner.invoke(app, ["model", "summary", "model.projector=mlp"])
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    assert "projector 'mlp'" in out
    assert "visual tokens: 144" in out


def test_model_summary_explicit_config(runner, fast_tokenizer):
    """--config accepts a ref under conf/ plus a plain dotted override."""
    result = runner.invoke(app, ["model", "summary", "--config", "pipeline/retrain", "model.projector.num_tokens=4"])
    assert result.exit_code == 0, result.output
    assert "visual tokens: 4" in _flat(result.output)


@pytest.mark.parametrize("override, key", [("pretrain.lrr=1", "pretrain.lrr"), ("pretrain.lr=abc", "pretrain.lr")])
def test_model_summary_bad_override_exits_2(runner, override, key):
    """A bad override exits with code 2 and names the offending key."""
    result = runner.invoke(app, ["model", "summary", override])
    assert result.exit_code == 2
    assert "config error" in result.output
    assert key in _flat(result.output)
