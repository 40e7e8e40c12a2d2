"""``deco data``: build shard datasets from ShapesWorld or a public format (converters), inspect manifests."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

console = Console()
data_app = typer.Typer(help="Build and inspect WebDataset shard datasets.", no_args_is_help=True)
SHAPES_KINDS = ("caption", "instruct", "vqa", "pope", "mc", "rec", "caption_eval")


def _kwargs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--input {item!r}: expected name=value (e.g. annotation_file=/data/x.json)")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


@data_app.command("build")
def build(
    source: str = typer.Argument(..., help="'shapes' or a converter: llava_pretrain, llava_instruct, refcoco, ..."),
    out: str = typer.Option(..., "--out", help="Output folder: a local path or s3://bucket/prefix."),
    kind: str = typer.Option("caption", help=f"ShapesWorld stream: {', '.join(SHAPES_KINDS)}."),
    n: int = typer.Option(1000, help="ShapesWorld samples to generate."),
    seed: int = typer.Option(0, help="ShapesWorld seed."),
    split: str = typer.Option("train", help="Split name recorded in the manifest (and ShapesWorld split)."),
    inputs: list[str] | None = typer.Option(None, "--input", "-i",
                                               help="Converter argument name=value (repeatable)."),
    samples_per_shard: int = typer.Option(1000, help="Samples per tar shard."),
    endpoint_url: str | None = typer.Option(None, help="S3 endpoint (else $AWS_ENDPOINT_URL)."),
) -> None:
    """Write shards + manifest.parquet (atomic per shard, manifest last)."""
    from deco_core.data.shards import write_shards
    from deco_core.data.storage import StorageConfig

    storage = StorageConfig(endpoint_url=endpoint_url)
    if source == "shapes":
        from deco_core.data.shapes import SHAPES_GENERATORS

        key = {"caption": "caption", "instruct": "instruct"}.get(kind, kind)
        if key not in SHAPES_GENERATORS:
            raise typer.BadParameter(f"--kind {kind!r}; valid: {', '.join(sorted(SHAPES_GENERATORS))}")
        samples = SHAPES_GENERATORS[key][0](n, seed=seed, split=split)
        stats = None
    else:
        from deco_core.data.convert import ConversionStats, get_converter

        try:
            convert = get_converter(source.replace("-", "_"))  # llava-pretrain == llava_pretrain
        except KeyError as exc:
            raise typer.BadParameter(str(exc)) from None
        stats = ConversionStats()
        samples = convert(**_kwargs(inputs), stats=stats)
    manifest = write_shards(samples, out, source=source if source != "shapes" else f"shapes-{kind}", split=split,
                            samples_per_shard=samples_per_shard, storage=storage, progress=True)
    table = Table(title=f"{out}")
    table.add_column("shards", justify="right")
    table.add_column("samples", justify="right")
    table.add_column("bytes", justify="right")
    table.add_row(str(len(manifest.rows)), f"{manifest.total_samples:,}", f"{manifest.total_bytes:,}")
    console.print(table)
    if stats is not None:
        console.print(f"conversion: {stats.summary()}")


@data_app.command("inspect")
def inspect(uri: str = typer.Argument(..., help="Shard folder (local or s3://)."),
            verify: bool = typer.Option(False, help="Recompute sha256 of every shard and read every member to its end.")
            ) -> None:
    """Show a dataset's manifest (and, with --verify, check every shard's bytes, checksum and tar content)."""
    from deco_core.data.shards import ShardError, read_manifest, verify_manifest

    try:
        manifest = verify_manifest(uri) if verify else read_manifest(uri)
    except ShardError as exc:
        console.print(f"[red]{'verify failed' if verify else 'bad manifest'}:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    table = Table(title=manifest.uri)
    for col in ("shard", "samples", "bytes", "source", "split"):
        table.add_column(col)
    for row in manifest.rows:
        table.add_row(row.url, str(row.samples), f"{row.bytes:,}", row.source, row.split)
    console.print(table)
    console.print(f"{manifest.total_samples:,} samples" + (" — checksums and tar content verified" if verify else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
