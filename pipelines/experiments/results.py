"""``make results`` / ``python -m pipelines.experiments.results publish|check``: carry measured results into the README.

``publish`` copies each result's JSON (and its figures) from the run folder into ``docs/results/`` and rewrites
the README block between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` by rendering that JSON with
the same function that wrote the run's own markdown, headings moved under the README's section and figure links
pointed at ``docs/results/``. ``check`` renders the committed JSON again and fails when a README block differs,
so the README's tables can only come from a measured run, never from typing.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from deco_core.data.convert.common import load_json
from pipelines.experiments.bench.tables import bench_markdown
from pipelines.experiments.reproduce.tables import reproduce_markdown
from pipelines.workflow.summary import tiny_markdown

log = logging.getLogger(__name__)
_console = Console(markup=False, highlight=False)
ROOT = Path(__file__).resolve().parents[2]
DOCS = Path("docs/results")
HEADING_SHIFT = 3  # a rendered "# Title" becomes "#### Title" under the README's "### ..." subsection


@dataclass(frozen=True)
class ResultBlock:
    """One published result: where the run writes it, its JSON, the figures it links, its renderer."""

    run_dir: str
    json_name: str
    figures: tuple[str, ...]
    render: Callable[[dict[str, Any]], str]
    produced_by: str
    published_as: str = ""  # the file name under docs/results (default: json_name)

    @property
    def docs_name(self) -> str:
        return self.published_as or self.json_name


# fmt: off
BLOCKS: dict[str, ResultBlock] = {  # README marker name -> result
    "tiny":      ResultBlock("runs/tiny/workflow", "summary.json", (), tiny_markdown, "make run",
                             published_as="tiny.json"),
    "bench":     ResultBlock("runs/bench",     "bench.json",     (),                   bench_markdown,     "make bench"),
    "reproduce": ResultBlock("runs/reproduce", "reproduce.json", ("convergence.png",), reproduce_markdown, "make reproduce"),
}
# fmt: on


class ResultsError(RuntimeError):
    """A result file or README marker is missing, or the README disagrees with the published results."""


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- results:{name} -->", f"<!-- /results:{name} -->"


def _load(path: Path) -> dict[str, Any]:
    try:
        data = load_json(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ResultsError(str(exc)) from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def render_block(name: str, json_dir: Path, link_dir: Path = DOCS) -> str:
    """README text of result ``name`` from ``<json_dir>/<json>``: headings shifted, figure links under ``link_dir``."""
    block = BLOCKS[name]
    text = block.render(_load(json_dir / block.docs_name))
    text = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + HEADING_SHIFT) + " ", text, flags=re.M)
    for figure in block.figures:
        text = text.replace(f"]({figure})", f"]({link_dir.as_posix()}/{figure})")
    return text.strip() + "\n"


def _span(readme_text: str, name: str, readme: Path) -> tuple[int, int]:
    """Character span of the block between the markers of ``name`` (exclusive of the markers)."""
    begin, end = _markers(name)
    i, j = readme_text.find(begin), readme_text.find(end)
    if i < 0 or j < 0 or j < i or readme_text.count(begin) != 1 or readme_text.count(end) != 1:
        raise ResultsError(f"{readme}: expected exactly one '{begin}' followed by one '{end}'")
    return i + len(begin), j


def publish(names: list[str], readme: Path, docs: Path = DOCS, root: Path = ROOT) -> list[Path]:
    """Copy each result from its run folder into ``root/docs`` and rewrite its README block; returns the files."""
    text = readme.read_text()
    written = []
    for name in names:
        block = BLOCKS[name]
        src = root / block.run_dir
        for fname in (block.json_name, *block.figures):
            if not (src / fname).is_file():
                raise ResultsError(f"{src / fname} not found: run `{block.produced_by}` first")
        (root / docs).mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copyfile(src / block.json_name, root / docs / block.docs_name)))
        for fname in block.figures:
            written.append(Path(shutil.copyfile(src / fname, root / docs / fname)))
        start, stop = _span(text, name, readme)
        rendered = render_block(name, root / docs, docs)
        text = text[:start] + "\n" + rendered + text[stop:]
        log.info("results: published %s (%s) into %s", name, ", ".join(block.figures + (block.docs_name,)), readme)
    tmp = readme.with_suffix(readme.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(readme)
    return written


def measured_blocks(root: Path = ROOT) -> list[str]:
    """The results whose run folder holds a measured JSON (what a bare ``make results`` publishes); the others are
    named in the log with the command that measures them."""
    present = [name for name, b in BLOCKS.items() if (root / b.run_dir / b.json_name).is_file()]
    for name in BLOCKS.keys() - set(present):
        log.info("results: %s not measured here (run `%s` first); its README block stays as it is", name,
                 BLOCKS[name].produced_by)
    if not present:
        raise ResultsError(f"nothing measured under {root}: run `make run`, `make bench` or `make reproduce` first")
    return present


def check(readme: Path, docs: Path = DOCS, root: Path = ROOT) -> list[str]:
    """Names of the README blocks that differ from a fresh render of the published JSON (empty: all agree)."""
    text = readme.read_text()
    stale = []
    for name, block in BLOCKS.items():
        start, stop = _span(text, name, readme)
        for figure in block.figures:
            if not (root / docs / figure).is_file():
                raise ResultsError(f"{root / docs / figure} not found (linked from the README's {name} block)")
        rendered = render_block(name, root / docs, docs)
        if text[start:stop].strip() != rendered.strip():
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> None:
    from deco_core.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments.results", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["publish", "check"])
    parser.add_argument("names", nargs="*", help=f"results to publish: {', '.join(BLOCKS)} (default: all)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    setup_logging()
    unknown = sorted(set(args.names) - set(BLOCKS))
    if unknown:
        parser.error(f"unknown result(s) {', '.join(unknown)}; expected some of {', '.join(BLOCKS)}")
    if args.action == "publish":
        files = publish(list(args.names) or measured_blocks(), args.readme)
        _console.print(f"published {len(files)} file(s) into {DOCS} and updated {args.readme}")
        return
    stale = check(args.readme)
    if stale:
        raise SystemExit(f"README results out of date for: {', '.join(stale)} "
                         f"(run `python -m pipelines.experiments.results publish {' '.join(stale)}`)")
    _console.print(f"README results agree with {DOCS}")


if __name__ == "__main__":
    main()
