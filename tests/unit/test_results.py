"""The README's result tables come from published measurements: ``pipelines.experiments.results`` renders docs/results/*.json
into marked README blocks, and a hand edit or a stale render is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.experiments.results import BLOCKS, DOCS, ROOT, ResultsError, check, publish

PUBLISHED = ROOT / DOCS


def _readme(blocks: dict[str, str]) -> str:
    parts = ["# Project", "", "## Results", ""]
    for name, body in blocks.items():
        parts += [f"### {name}", f"<!-- results:{name} -->", body, f"<!-- /results:{name} -->", ""]
    return "\n".join(parts + ["## After", "tail text", ""])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root whose run folders hold the published results, and a README with stale blocks."""
    for block in BLOCKS.values():
        (tmp_path / block.run_dir).mkdir(parents=True)
        shutil.copyfile(PUBLISHED / block.docs_name, tmp_path / block.run_dir / block.json_name)
        for fname in block.figures:
            shutil.copyfile(PUBLISHED / fname, tmp_path / block.run_dir / fname)
    (tmp_path / "README.md").write_text(_readme({name: "stale numbers" for name in BLOCKS}))
    return tmp_path


def test_readme_blocks_match_the_published_results() -> None:
    assert check(ROOT / "README.md") == []
    text = (ROOT / "README.md").read_text()
    for figure in BLOCKS["reproduce"].figures:
        assert f"]({DOCS.as_posix()}/{figure})" in text


def test_publish_copies_results_and_rewrites_only_the_blocks(project: Path) -> None:
    readme = project / "README.md"
    files = publish(list(BLOCKS), readme, root=project)
    assert sorted(f.name for f in files) == sorted(f for b in BLOCKS.values() for f in (b.docs_name, *b.figures))
    assert check(readme, root=project) == []
    text = readme.read_text()
    assert "stale numbers" not in text
    assert text.startswith("# Project\n") and text.rstrip().endswith("tail text")
    assert "#### DeCo pipeline benchmark" in text  # rendered "# ..." moved under the README's "### ..."
    assert "\n# DeCo" not in text
    assert "](docs/results/convergence.png)" in text
    publish(list(BLOCKS), readme, root=project)
    assert readme.read_text() == text  # idempotent


def test_check_catches_a_hand_edited_number(project: Path) -> None:
    readme = project / "README.md"
    publish(list(BLOCKS), readme, root=project)
    text = readme.read_text()
    edited = text.replace("| forward+backward (s) | ", "| forward+backward (s) | 9", 1)  # 0.756 -> 90.756
    assert edited != text
    readme.write_text(edited)
    assert check(readme, root=project) == ["bench"]


def test_missing_marker_and_missing_run_are_named(project: Path) -> None:
    readme = project / "README.md"
    readme.write_text(_readme({"bench": "x"}))
    with pytest.raises(ResultsError, match=r"<!-- results:reproduce -->"):
        publish(["reproduce"], readme, root=project)
    (project / "runs/bench/bench.json").unlink()
    with pytest.raises(ResultsError, match=r"bench\.json not found: run `make bench` first"):
        publish(["bench"], readme, root=project)
    (project / "runs/reproduce/reproduce.json").write_text("[1, 2]")
    readme.write_text(_readme({name: "x" for name in BLOCKS}))
    with pytest.raises(ResultsError, match=r"reproduce\.json: expected a JSON object"):
        publish(["reproduce"], readme, root=project)


def test_a_bare_publish_takes_what_was_measured_and_names_the_rest(project: Path, caplog) -> None:
    from pipelines.experiments.results import measured_blocks

    (project / BLOCKS["reproduce"].run_dir / BLOCKS["reproduce"].json_name).unlink()
    with caplog.at_level("INFO", logger="pipelines.experiments.results"):
        assert sorted(measured_blocks(project)) == ["bench", "tiny"]
    assert "reproduce not measured here (run `make reproduce` first)" in caplog.text
    for block in BLOCKS.values():
        (project / block.run_dir / block.json_name).unlink(missing_ok=True)
    with pytest.raises(ResultsError, match="nothing measured"):
        measured_blocks(project)
