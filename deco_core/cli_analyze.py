"""`deco analyze`: R-GAE relevance maps for one image and prompt, and the ShapesWorld locality score.

Examples:
  deco analyze relevance --model runs/tiny/finetune/model --image cat.png --prompt "What colour is it?" --out out/
  deco analyze locality --model runs/tiny/finetune/model --out runs/tiny/analysis --n 32
The work itself lives in deco_core.analysis.run (also the workflow's analyze stage).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from deco_core.analysis.run import load_cpu_model, relevance_files, run_analysis

console = Console()


# -------------------------------------------------------------------------------------------- commands
def relevance_command(
    model: str = typer.Option(..., "--model", "-m", help="Exported model folder (local or s3://)."),
    image: Path = typer.Option(..., "--image", "-i", help="Image file (PNG/JPEG)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="User question; '<image>\\n' is prepended if absent."),
    answer: str | None = typer.Option(None, "--answer", "-a", help="Answer to explain (default: generate)."),
    out: Path = typer.Option(Path("runs/analysis"), "--out", "-o", help="Output folder."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="Generation budget when --answer is absent."),
) -> None:
    """Text-to-Query, Query-to-Patch and Text-to-Patch maps for one image and prompt (PNG + JSON)."""
    try:
        written = relevance_files(load_cpu_model(model), image, prompt, answer, out, max_new_tokens)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"answer: {written['result'].answer!r}")
    for path in written["files"]:
        console.print(f"wrote {path}")


def locality_command(
    model: str = typer.Option(..., "--model", "-m", help="Exported model folder (local or s3://)."),
    out: Path = typer.Option(Path("runs/analysis"), "--out", "-o", help="Output folder."),
    n: int = typer.Option(32, "--n", help="Number of ShapesWorld probes (fixed set)."),
    seed: int = typer.Option(0, "--seed", help="Probe-set seed."),
) -> None:
    """Locality of the answer's relevance on the named object's box (ShapesWorld probes): JSON + figure."""
    try:
        result = run_analysis(model, out, n, seed)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    s = result["scores"]
    console.print(f"mass in box {s['mass_in_box']:.3f} (uniform {s['uniform_baseline']:.3f}, mass_lift "
                  f"{s['mass_lift']:.2f}); pointing hit rate {s['pointing_hit_rate']:.3f} over {s['num_samples']}")
    for path in result["files"]:
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add the `analyze` sub-app (relevance, locality) to the main CLI."""
    analyze_app = typer.Typer(help="R-GAE relevance analysis.", no_args_is_help=True)
    analyze_app.command("relevance")(relevance_command)
    analyze_app.command("locality")(locality_command)
    app.add_typer(analyze_app, name="analyze")


__all__ = ["register", "run_analysis"]
