"""The library side of the ``deco`` command line: the global options, the ``model`` sub-app, config loading and
one-line errors, and the data / eval / analyze sub-apps (``register_subcommands``). The ``deco`` root itself,
with the pipeline, train and retrain commands, is assembled by the orchestration layer on top of this module;
``app`` here is the library-only command line."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from deco_core.logs import setup_logging

app = typer.Typer(help="DeCo pipeline: data, training, evaluation and analysis on Ray + DeepSpeed + MLflow.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
model_app = typer.Typer(help="Inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console()
log = logging.getLogger(__name__)

CONFIG_OPT = typer.Option("pipeline/tiny", "--config", "-c", help="Config file or ref under conf/.")
OVERRIDES_ARG = typer.Argument(None, help="Overrides such as pretrain.lr=3e-4 or model.projector=qformer.")


#: Set by the global --debug flag: user errors then raise with their full traceback instead of one line.
STATE = {"debug": False}


def main_options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
                 debug: bool = typer.Option(False, "--debug", help="Full tracebacks for errors (else one line).")) -> None:
    """Global options: logging level and --debug (set on whichever root app uses this callback)."""
    STATE["debug"] = debug
    setup_logging(level=logging.DEBUG if verbose else None)


def fail(message: str, code: int) -> typer.Exit:
    """Print one unwrapped error line; the caller raises the returned Exit (re-raise the error under --debug)."""
    console.print(message, soft_wrap=True)
    return typer.Exit(code)


def load_config(config: str | Path, overrides: list[str] | None):
    """Compose a config, turning config errors into a clean CLI error."""
    from deco_core.config import ConfigError, compose

    try:
        return compose(config, overrides or [])
    except ConfigError as exc:
        if STATE["debug"]:
            raise
        raise fail(f"[red]config error:[/red] {exc}", 2) from None


@model_app.command("summary")
def model_summary(config: str = CONFIG_OPT, overrides: list[str] | None = OVERRIDES_ARG) -> None:
    """Per-module parameter counts (trainable / frozen per stage) and the visual token count."""
    from deco_core.model.deco import DecoModel

    cfg = load_config(config, overrides)
    model = DecoModel.from_config(cfg.model)
    table = Table(title=f"DecoModel — projector '{cfg.model.projector.name}'")
    for col in ("module", "parameters", "pretrain trainable", "finetune trainable"):
        table.add_column(col, justify="right" if col != "module" else "left")
    stages = {}
    for stage in ("pretrain", "finetune"):
        t = getattr(cfg, stage)
        stages[stage] = model.freeze_for_stage(stage, t.train_vision, t.train_projector, t.train_llm)
    for name in ("vision", "projector", "llm"):
        total = stages["pretrain"][name][1]
        table.add_row(name, f"{total:,}", f"{stages['pretrain'][name][0]:,}", f"{stages['finetune'][name][0]:,}")
    console.print(table)
    n = model.vision.num_patches
    console.print(f"patches: {n} ({model.vision.grid_size}×{model.vision.grid_size}) -> visual tokens: "
                  f"{model.num_image_tokens}")


EXPORT_FORMATS = ("llava",)  # beside the native save_pretrained directory every stage already writes


@model_app.command("export")
def model_export(model_dir: Path = typer.Argument(..., help="An exported DeCo model (a stage's export folder)."),
                 out_dir: Path = typer.Argument(..., help="Where to write the converted checkpoint."),
                 fmt: str = typer.Option("llava", "--format", "-f",
                                         help="llava: transformers LlavaForConditionalGeneration (mlp projector)")) -> None:
    """Convert an exported model for other serving stacks (``--format llava``: plain transformers LLaVA)."""
    if fmt not in EXPORT_FORMATS:
        console.print(f"[red]--format {fmt!r}:[/red] expected one of {', '.join(EXPORT_FORMATS)}")
        raise typer.Exit(2)
    from deco_core.model.deco import DecoModel
    from deco_core.model.export_llava import save_llava

    try:
        model = DecoModel.from_pretrained(model_dir)
        save_llava(model, out_dir)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]export failed:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"wrote {fmt} checkpoint to {out_dir}: load it with "
                  f"LlavaForConditionalGeneration.from_pretrained({str(out_dir)!r})")


SUBCOMMAND_MODULES = ("deco_core.cli_data", "deco_core.cli_eval", "deco_core.cli_analyze")


def register_subcommands(target: typer.Typer | None = None) -> None:
    """Attach the library sub-apps that live in other modules to ``target`` (default: this module's ``app``); each
    module keeps its heavy imports inside commands."""
    import importlib

    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(target or app)


app.callback()(main_options)
register_subcommands()


if __name__ == "__main__":
    app()
