"""Specification tests for the `deco` command line (pipelines/cli.py, built on the library pieces in
deco_core/cli.py): help text and `deco model summary`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipelines.cli import app


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
    """`deco model summary` (tiny config) prints the three modules and the default's M visual tokens (36)."""
    result = runner.invoke(app, ["model", "summary"])
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    for module in ("vision", "projector", "llm"):
        assert module in out
    assert "visual tokens: 36" in out
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


# ------------------------------------------------------------------------------------------- user errors
def _one_error_line(result, code: int) -> str:
    """The command ended with ``code`` and printed exactly one line and no traceback; returns that line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_unknown_stage_is_one_line(runner, tmp_path):
    """`deco pipeline run --stages pretrian` names the stage and the valid ones; nothing runs."""
    line = _one_error_line(runner.invoke(app, ["pipeline", "run", "--stages", "pretrian",
                                               f"pipeline.root={tmp_path / 'r'}"]), 2)
    assert "'pretrian'" in line and "valid: prepare_data, pretrain, finetune" in line
    assert not (tmp_path / "r").exists()


def test_mistyped_config_is_named_as_given(runner):
    """A mistyped --config path is named as typed (not conf/conf/…) with the valid names, on one line."""
    line = _one_error_line(runner.invoke(app, ["pipeline", "run", "--config", "conf/pipeline/tiyn.yaml"]), 2)
    assert "conf/pipeline/tiyn.yaml" in line and "conf/conf" not in line and "tiny" in line


def test_unreachable_address_is_one_line_and_debug_shows_the_error(runner, tmp_path):
    """An unreachable --address is one line (exit 3); with the global --debug the error itself propagates."""
    from pipelines.ops.submit import SubmitError
    from tests.fixtures.mlflow_server import free_port

    args = ["pipeline", "submit", "--address", f"127.0.0.1:{free_port()}", f"pipeline.root={tmp_path}"]
    assert "cannot reach the Ray Jobs API" in _one_error_line(runner.invoke(app, args), 3)
    debug = runner.invoke(app, ["--debug", *args])
    assert debug.exit_code != 0 and isinstance(debug.exception, SubmitError)


def test_submit_refuses_a_relative_root_in_one_line(runner):
    """`deco pipeline submit` with the tiny config's relative root names pipeline.root and its value."""
    line = _one_error_line(runner.invoke(app, ["pipeline", "submit", "--address", "127.0.0.1:1"]), 3)
    assert "'pipeline.root' = 'runs/tiny'" in line and "absolute path" in line


# ---------------------------------------------------------------------------------------- summary output
def test_summary_table_keeps_paths_whole_and_rounds_losses(monkeypatch):
    """The final table folds long paths instead of cutting them with …, shows losses to 4 significant digits,
    and the `mlflow ui` command is one unwrapped line."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    import pipelines.cli as pcli
    from pipelines.workflow.context import StageReport

    path = "/a/very/long/pipeline/root/that/does/not/fit/finetune/0123456789/model/export-directory"
    out = io.StringIO()
    monkeypatch.setattr(pcli, "console", Console(file=out, width=80))
    pcli.console.print(pcli.results_table([StageReport("finetune", "completed",
                                                       {"model": path, "final_loss": 1.23456789012345}, 12.0)]))
    uri = f"sqlite:///{path}/mlruns.db"
    pcli._where_to_look(SimpleNamespace(pipeline=SimpleNamespace(root=path)), SimpleNamespace(tracking_uri=uri))
    text = out.getvalue()
    assert "…" not in text and "final_loss=1.235" in text and "1.2345" not in text
    cells = "".join(line.split("│")[-2].strip() for line in text.splitlines() if line.count("│") >= 5)
    assert f"model={path}" in cells
    assert f"browse runs: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000" in text.splitlines()
