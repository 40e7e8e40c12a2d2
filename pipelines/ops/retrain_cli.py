"""``deco retrain [run] [--config FILE] [overrides…]`` (one round) and ``deco retrain status`` (the decision history).

``run`` is the default sub-command, so ``deco retrain --config pipeline/retrain`` (the RayCronJob's entrypoint)
keeps working.
"""

from __future__ import annotations

from dataclasses import asdict

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from deco_core.config import ConfigError

CONFIG_OPT = typer.Option("conf/pipeline/retrain.yaml", "--config", "-c", help="Retrain config.")
OVERRIDES = typer.Argument(None, help="Overrides such as retrain.margin=0.02.")
DEFAULT_COMMAND = "run"


class DefaultRunGroup(TyperGroup):
    """A group whose first argument, when it is not a sub-command (nor --help), or no argument, selects ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


retrain_app = typer.Typer(cls=DefaultRunGroup, no_args_is_help=False,
                          help="Scheduled retraining: one round (run, the default) or the decision history (status).")
console = Console(soft_wrap=True)


@retrain_app.command(DEFAULT_COMMAND)
def run_command(config: str = CONFIG_OPT, overrides: list[str] | None = OVERRIDES) -> None:
    """One retraining round: challenger vs champion on a frozen eval set; promote by registry alias."""
    from deco_core.cli import load_config
    from pipelines.ops.retrain import retrain

    try:
        result = retrain(load_config(config, overrides))
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=f"retrain decision: {result.decision}")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in asdict(result).items():
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


@retrain_app.command("status")
def status_command(config: str = CONFIG_OPT, overrides: list[str] | None = OVERRIDES,
                   last: int = typer.Option(10, min=1, help="How many rounds to show, newest first.")) -> None:
    """The last retrain decisions from the registry's history; says so when a scheduled retrain never fired."""
    from deco_core.cli import load_config
    from pipelines.ops.retrain_status import decision_history, history_location

    cfg = load_config(config, overrides)
    try:
        uri, experiment = history_location(cfg)
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None
    name = cfg.tracking.registered_model
    records = decision_history(uri, experiment, name, last)
    if not records:
        console.print(f"no retrain decision recorded for model '{name}' in experiment '{experiment}' at {uri}: "
                      "the scheduled retrain has never fired (a RayCronJob needs the KubeRay operator's RayCronJob "
                      "feature gate)")
        return
    console.print(f"last {len(records)} retrain round(s) of '{name}' in experiment '{experiment}', newest first:")
    for r in records:
        console.print(describe(r), markup=False)


def describe(r) -> str:
    """One line per round: time, decision, versions, scores, margin, and whether champion moved."""
    if r.decision == "none":
        return f"{r.started}  no decision (run {r.run_id} {r.run_status}): the round ended before deciding"
    outcome = "promoted" if r.promoted else "not promoted"
    return (f"{r.started}  {r.decision:<9}  challenger v{r.challenger_version} {r.metric}={r.challenger_score} vs "
            f"champion {_version(r.champion_version)}={r.champion_score}, margin {r.margin}: {outcome}; "
            f"champion now {_version(r.champion_after)}")


def _version(v: str) -> str:
    return v if v in ("none", "-") else f"v{v}"


def register(app: typer.Typer) -> None:
    """Add ``deco retrain`` (run, status) to the CLI."""
    app.add_typer(retrain_app, name="retrain")
