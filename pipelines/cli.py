"""The ``deco`` root command line (``deco = "pipelines.cli:app"``): the library's pieces from deco_core.cli (global
options, ``model``, ``data``, ``eval``, ``analyze``) plus the orchestration commands defined here: ``deco pipeline
run|status|submit``, ``deco train pretrain|finetune`` and ``deco retrain``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.table import Table

from deco_core import cli as core_cli

console = Console()
log = logging.getLogger(__name__)
pipeline_app = typer.Typer(help="The stage DAG: run, inspect, submit to a cluster.", no_args_is_help=True)
train_app = typer.Typer(help="Run one training stage (and any upstream stage not done yet).", no_args_is_help=True)
CONFIG_OPT = typer.Option("conf/pipeline/tiny.yaml", "--config", "-c", help="Pipeline config file or conf ref.")
OVERRIDES = typer.Argument(None, help="Overrides such as finetune.max_steps=200 or model.projector=qformer.")


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A held root, an unreachable service or a refused submission ends the command with its one-line message."""
    from pipelines.ops.submit import SubmitError
    from pipelines.workflow.lock import RootLocked
    from pipelines.workflow.probe import ServiceUnreachable

    try:
        yield
    except (RootLocked, ServiceUnreachable, SubmitError) as exc:
        if core_cli.STATE["debug"]:
            raise
        raise core_cli.fail(f"[red]error:[/red] {exc}", 3) from None


def check_stages(stages: str | None, valid: list[str]) -> list[str] | None:
    """The ``--stages`` selection as a list (None: all); an unknown name ends the command with one line, code 2."""
    if not stages:
        return None
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in valid]
    if unknown or not chosen:
        raise core_cli.fail(f"[red]error:[/red] --stages {stages!r}: unknown stage(s) "
                            f"{', '.join(unknown) or '(none given)'}; valid: {', '.join(valid)}", 2)
    return chosen


def _compose(config: str, overrides: list[str] | None):
    return core_cli.load_config(config, overrides)


def _value(value) -> str:
    """Floats to 4 significant digits (losses, scores); everything else as it is, paths in full."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def results_table(reports) -> Table:
    table = Table(title="workflow")
    for col in ("stage", "status", "seconds", "key outputs"):
        table.add_column(col, overflow="fold")  # fold long paths instead of cutting them with "…"
    for r in reports:
        keys = [f"{k}={_value(v)}" for k, v in r.outputs.items()
                if k in ("model", "steps", "final_loss", "val_loss", "report", "version", "out_dir")
                or k.startswith(("eval/group", "locality", "mass_lift", "pointing"))]
        table.add_row(r.name, r.status, f"{r.seconds:.0f}" if r.seconds else "-", "\n".join(keys))
    return table


def _where_to_look(cfg, wf) -> None:
    console.print(f"outputs under [bold]{cfg.pipeline.root}[/bold]; MLflow: [bold]{wf.tracking_uri}[/bold]",
                  soft_wrap=True)
    if wf.tracking_uri.startswith("sqlite:"):  # one unwrapped line, so it can be copied as a command
        console.print(f"browse runs: mlflow ui --backend-store-uri {wf.tracking_uri} --host 127.0.0.1 --port 5000",
                      soft_wrap=True, markup=False, highlight=False)


@pipeline_app.command("run")
def run(config: str = CONFIG_OPT, overrides: list[str] | None = OVERRIDES,
        stages: str | None = typer.Option(None, help="Comma-separated stages to run (default: all)."),
        force: bool = typer.Option(False, help="Rerun stages even when their outputs are cached.")) -> None:
    """Run the workflow: completed stages with matching fingerprints are skipped."""
    from pipelines.workflow.runner import Workflow

    cfg = _compose(config, overrides)
    only = check_stages(stages, cfg.pipeline.stages)
    wf = Workflow(cfg)
    with one_line_errors():
        reports = wf.run(only=only, force=force)
    console.print(results_table(reports))
    _where_to_look(cfg, wf)


@pipeline_app.command("status")
def status(config: str = CONFIG_OPT, overrides: list[str] | None = OVERRIDES) -> None:
    """Show each stage's state (done / stale / failed / running / interrupted / pending) and its outputs."""
    from pipelines.workflow.probe import ServiceUnreachable, storage_problems
    from pipelines.workflow.runner import Workflow

    wf = Workflow(_compose(config, overrides))
    with one_line_errors():
        for problem in storage_problems(wf.cfg):
            raise ServiceUnreachable(problem.line())
    table = Table(title=f"pipeline {wf.cfg.pipeline.name} ({wf.cfg.pipeline.root})")
    for col in ("stage", "state", "fingerprint", "outputs"):
        table.add_column(col)
    colours = {"done": "green", "stale": "yellow", "failed": "red", "running": "cyan", "interrupted": "magenta"}
    for row in wf.status():
        outs = "\n".join(f"{k}={v}" for k, v in row["outputs"].items() if isinstance(v, str) and "/" in v)
        c = colours.get(row["status"], "white")
        table.add_row(row["stage"], f"[{c}]{row['status']}[/{c}]", row["fingerprint"], outs)
    console.print(table)


@pipeline_app.command("submit")
def submit(config: str = CONFIG_OPT, overrides: list[str] | None = OVERRIDES,
           address: str = typer.Option(..., help="Ray dashboard address, e.g. http://HEAD:8265."),
           stages: str | None = typer.Option(None, help="Comma-separated stages (default: all)."),
           wait: bool = typer.Option(True, help="Stream logs and wait for each job.")) -> None:
    """Run the stages as Ray Jobs on a cluster, one job per stage, in order."""
    from pipelines.ops.submit import submit_pipeline

    cfg = _compose(config, overrides)
    with one_line_errors():
        jobs = submit_pipeline(address, config, overrides or [],
                               check_stages(stages, cfg.pipeline.stages) or cfg.pipeline.stages, wait=wait)
    table = Table(title=f"jobs on {address}")
    for col in ("stage", "job id", "status"):
        table.add_column(col)
    for job in jobs:
        table.add_row(job.stage, job.job_id, job.status)
    console.print(table)
    if jobs:
        console.print(f"MLflow parent run: {jobs[0].parent_run_id}", soft_wrap=True)
    if any(j.status == "FAILED" for j in jobs):
        raise typer.Exit(1)


def _train(stage: str, config: str, overrides: list[str] | None) -> None:
    from pipelines.workflow.runner import Workflow

    cfg = _compose(config, overrides)
    upstream = {"pretrain": ["prepare_data", "pretrain"], "finetune": ["prepare_data", "pretrain", "finetune"]}
    wf = Workflow(cfg)
    with one_line_errors():
        reports = wf.run(only=upstream[stage])
    out = reports[-1].outputs
    t = getattr(cfg, stage)
    table = Table(title=f"{stage} summary")
    table.add_column("field")
    table.add_column("value")
    for key in ("steps", "final_loss", "val_loss", "wall_s", "model", "checkpoint", "mlflow_run"):
        table.add_row(key, str(out.get(key)))
    if out.get("wall_s"):
        table.add_row("samples/s", f"{out['steps'] * t.global_batch_size / out['wall_s']:.1f} (incl. startup)")
    console.print(table)
    _where_to_look(cfg, wf)


@train_app.command("pretrain")
def pretrain(config: str = CONFIG_OPT, overrides: list[str] | None = OVERRIDES) -> None:
    """Alignment stage (plain template on captions)."""
    _train("pretrain", config, overrides)


@train_app.command("finetune")
def finetune(config: str = CONFIG_OPT, overrides: list[str] | None = OVERRIDES) -> None:
    """Instruction stage (vicuna_v1), from the pretrain export."""
    _train("finetune", config, overrides)


def register(app: typer.Typer) -> None:
    """Attach ``pipeline``, ``train`` and ``retrain`` to a root app."""
    from pipelines.ops.retrain_cli import register as register_retrain

    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(train_app, name="train")
    register_retrain(app)


def build_app() -> typer.Typer:
    """The ``deco`` root: global options, the library sub-apps, then the orchestration commands."""
    root = typer.Typer(help="DeCo pipeline: data, training, evaluation and analysis on Ray + DeepSpeed + MLflow.",
                       no_args_is_help=True, pretty_exceptions_show_locals=False)
    root.callback()(core_cli.main_options)
    root.add_typer(core_cli.model_app, name="model")
    core_cli.register_subcommands(root)
    register(root)
    return root


app = build_app()


if __name__ == "__main__":
    app()
