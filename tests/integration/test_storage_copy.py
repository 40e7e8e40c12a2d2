"""`copy_dir` is the one folder copy between local disk and a URI (`copy_file` the one file copy under it): both
directions against a real local S3 endpoint (moto's server mode), local to local, a selection of entries, and
clear errors for nothing to copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from deco_core.data.storage import copy_dir, copy_file, get_filesystem, local_copy

pytestmark = pytest.mark.integration


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "report" / "img").mkdir(parents=True)
    (src / "scores.json").write_text('{"a": 1}')
    (src / "report" / "index.html").write_text("<html/>")
    (src / "report" / "img" / "chart.png").write_bytes(b"\x89PNG")
    (src / "ray_parts").mkdir()
    (src / "ray_parts" / "part-0").write_bytes(b"x")
    return src


def test_round_trip_through_s3_keeps_every_file(s3_server, s3_bucket, folder: Path, tmp_path: Path) -> None:
    """Upload then download gives back the same files and bytes; local_copy's temp folder is gone afterwards."""
    uri = f"{s3_bucket}/copy/model"
    assert copy_dir(folder, uri, s3_server.storage) == uri
    back = tmp_path / "back"
    copy_dir(uri, back, s3_server.storage)
    assert _tree(back) == _tree(folder)
    with local_copy(uri, s3_server.storage) as path:
        assert _tree(Path(path)) == _tree(folder)
    assert not Path(path).exists()


def test_selected_entries_only(s3_server, s3_bucket, folder: Path, tmp_path: Path) -> None:
    """``names`` copies just those files and sub-folders (here: the eval results without Ray's parts)."""
    uri = f"{s3_bucket}/copy/eval"
    copy_dir(folder, uri, s3_server.storage, names=["scores.json", "report"])
    fs, path = get_filesystem(uri, s3_server.storage)
    keys = sorted(k.split(path, 1)[1].lstrip("/") for k in fs.find(path))
    assert keys == ["report/img/chart.png", "report/index.html", "scores.json"]
    local = tmp_path / "local-copy"
    copy_dir(folder, local, names=["report"])
    assert sorted(_tree(local)) == ["report/img/chart.png", "report/index.html"]


def test_nothing_to_copy_names_the_source(s3_server, s3_bucket, tmp_path: Path) -> None:
    """An empty prefix or a missing folder raises FileNotFoundError naming it; URI to URI is refused."""
    with pytest.raises(FileNotFoundError, match="no files under this prefix"):
        copy_dir(f"{s3_bucket}/nothing-here", tmp_path / "x", s3_server.storage)
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        copy_dir(tmp_path / "missing-folder", f"{s3_bucket}/y", s3_server.storage)
    with pytest.raises(ValueError, match="one side must be a local folder"):
        copy_dir(f"{s3_bucket}/a", f"{s3_bucket}/b", s3_server.storage)


def test_copy_file_both_directions_and_local(s3_server, s3_bucket, folder: Path, tmp_path: Path) -> None:
    """One file up to an exact key, back down into a new folder, and local to local; URI to URI is refused."""
    src = folder / "report" / "img" / "chart.png"
    uri = f"{s3_bucket}/files/chart.png"
    assert copy_file(src, uri, s3_server.storage) == uri
    fs, path = get_filesystem(uri, s3_server.storage)
    assert fs.cat_file(path) == src.read_bytes()
    down = tmp_path / "down" / "deeper" / "chart.png"
    copy_file(uri, down, s3_server.storage)
    assert down.read_bytes() == src.read_bytes()
    local = tmp_path / "local" / "chart.png"
    copy_file(src, local)
    assert local.read_bytes() == src.read_bytes()
    with pytest.raises(ValueError, match="one side must be a local file"):
        copy_file(uri, f"{s3_bucket}/files/other.png", s3_server.storage)
