"""`deco eval`: evaluate an exported model on registered tasks through Ray Data actors, print a score table.

ShapesWorld tasks without data get a frozen eval set built under `<out>/data` (config `data.eval_samples`,
`eval.seed`); public benchmarks need converted shards: `--data TASK=URI` or config `eval.data`.
Example: deco eval --model runs/tiny/finetune/model --tasks shapes-vqa,shapes-rec --out runs/tiny/eval
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
log = logging.getLogger(__name__)


def parse_data_args(items: list[str] | None) -> dict[str, str]:
    """['shapes-vqa=/d/vqa', ...] -> {'shapes-vqa': '/d/vqa'}; a malformed item raises naming it."""
    out = {}
    for item in items or []:
        task, sep, uri = item.partition("=")
        if not sep or not task.strip() or not uri.strip():
            raise typer.BadParameter(f"--data {item!r}: expected TASK=URI, e.g. shapes-vqa=runs/data/vqa")
        out[task.strip()] = uri.strip()
    return out


def _init_ray(cfg) -> None:
    """Connect to `ray.address`, or start a local Ray with the configured logical CPUs (2-core plan)."""
    import ray

    if ray.is_initialized():
        return
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, log_to_driver=False)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=cfg.ray.object_store_memory_mb * 1024**2, runtime_env={"env_vars": env})


def _print_scores(result: dict, tasks: list[str]) -> None:
    from deco_core.eval.tasks import get_task

    table = Table(title="Evaluation")
    for col in ("task", "group", "primary", "score", "n"):
        table.add_column(col, justify="left" if col in ("task", "group", "primary") else "right")
    for name in tasks:
        task, scores = get_task(name), result["tasks"][name]
        table.add_row(name, task.group, task.primary, f"{scores[task.primary]:.4f}", f"{int(scores['n'])}")
    console.print(table)
    groups = Table(title="Groups (mean primary score)")
    groups.add_column("group")
    groups.add_column("score", justify="right")
    for group, value in result["groups"].items():
        groups.add_row(group, f"{value:.4f}")
    console.print(groups)
    console.print(f"report: {result['report']}\npredictions: {result['predictions']}")


def eval_command(
    model: str = typer.Option(..., "--model", "-m", help="Exported model folder (local or s3://)."),
    tasks: str | None = typer.Option(None, "--tasks", "-t", help="Comma-separated tasks (default: eval.tasks)."),
    data: list[str] | None = typer.Option(None, "--data", "-d", help="TASK=URI of converted shards; repeatable."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Output folder (predictions, report)."),
    config: str = typer.Option("pipeline/tiny", "--config", "-c", help="Config file or ref under conf/."),
    limit: int | None = typer.Option(None, "--limit", help="At most this many questions per task."),
    track: bool = typer.Option(False, "--track/--no-track", help="Log metrics and artifacts to MLflow."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (implies --track)."),
    overrides: list[str] | None = typer.Argument(None, help="Config overrides such as eval.batch_size=16."),
) -> None:
    """Evaluate MODEL on the tasks, log to MLflow if asked, and print per-task and per-group scores."""
    from deco_core.cli import load_config
    from deco_core.eval.runner import build_shapes_eval_shards, evaluate
    from deco_core.eval.tasks import get_task

    cfg = load_config(config, overrides)
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else list(cfg.eval.tasks)
    try:
        task_objs = [get_task(n) for n in names]
    except KeyError as exc:
        console.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(2) from None
    data_uris = {**cfg.eval.data, **parse_data_args(data)}
    missing_public = [t.name for t in task_objs if t.name not in data_uris and not t.shapes_stream]
    if missing_public:
        console.print(f"[red]error:[/red] no --data TASK=URI for {missing_public} (public benchmarks need "
                      "converted shards; see `deco data`)")
        raise typer.Exit(2)
    if limit is not None:
        cfg.eval.limit = limit
    to_build = [t.name for t in task_objs if t.name not in data_uris]
    if to_build:
        console.print(f"building the frozen ShapesWorld eval set for {to_build} under {out / 'data'}")
        data_uris.update(build_shapes_eval_shards(str(out / "data"), cfg.data.eval_samples, cfg.eval.seed,
                                                  to_build, storage=cfg.data.storage, shapes=cfg.data.shapes))
    if tracking_uri:
        cfg.tracking.tracking_uri, track = tracking_uri, True
    _init_ray(cfg)
    result = evaluate(model, names, data_uris, out, cfg.eval, cfg.tracking if track else None, cfg.data.storage)
    _print_scores(result, names)


def register(app: typer.Typer) -> None:
    """Add `deco eval` to the main CLI."""
    app.command("eval")(eval_command)
