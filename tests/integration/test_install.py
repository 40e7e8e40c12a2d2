"""A non-editable install (``pip install .``, as the Docker image does) composes configs and loads models from any
directory: conf/ ships inside the package, a user's own config tree resolves its groups, and loading an exported
model needs no config files at all.

The project is installed with ``--no-deps`` into a temporary target (the venv keeps its own install), and every
check runs in a fresh interpreter whose working directory is outside the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "deco_core", "pipelines", "conf", "artifacts")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed non-editable into a temporary site directory (built from a copy of the sources)."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / name)
    site = base / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return site


def run_outside(site: Path, cwd: Path, code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports only the installed copy, from ``cwd``; returns stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_installed_package_composes_builtin_configs_from_any_directory(installed, tmp_path):
    out = run_outside(installed, tmp_path, """
        import deco_core, deco_core.config as c
        from deco_core.config import compose
        print("package", deco_core.__file__)
        print("conf", c.CONF_DIR)
        for ref in ("pipeline/llava7b", "pipeline/tiny", "conf/pipeline/tiny.yaml"):
            cfg = compose(ref)
            print(ref, cfg.model.projector.name, cfg.pretrain.deepspeed, cfg.finetune.deepspeed)
    """)
    assert f"package {installed}" in out
    assert f"conf {installed / 'deco_core' / 'conf'}" in out
    assert "pipeline/llava7b deco zero2 zero3" in out
    assert "pipeline/tiny deco" in out and "conf/pipeline/tiny.yaml deco" in out


def test_installed_package_loads_the_foundation_builds_it_ships(installed, tmp_path):
    """pipeline/tiny names artifacts/foundation/tiny/{llm,vision} relative to the project: installed, those are the
    copies inside the package, whatever the working folder."""
    out = run_outside(installed, tmp_path, """
        from deco_core.config import compose
        from deco_core.model.deco import DecoModel
        cfg = compose("pipeline/tiny")
        print("llm", cfg.model.llm.path)
        print("tokenizer", cfg.model.tokenizer.path)
        print("vision", cfg.model.vision.path)
        model = DecoModel.from_config(cfg.model)
        print("params", sum(p.numel() for p in model.llm.parameters()))
    """)
    shipped = installed / "deco_core" / "artifacts" / "foundation" / "tiny" / "llm"
    assert f"llm {shipped}" in out and f"tokenizer {shipped}" in out
    assert f"vision {shipped.parent / 'vision'}" in out
    assert "params " in out


def test_user_config_path_resolves_its_own_groups_then_the_builtin_ones(installed, tmp_path):
    tree = tmp_path / "myconf"
    (tree / "pipeline").mkdir(parents=True)
    (tree / "projector").mkdir()
    (tree / "projector" / "wide_deco.yaml").write_text("name: deco\nnum_tokens: 4\n")
    (tree / "pipeline" / "mine.yaml").write_text(textwrap.dedent("""
        defaults:
          model: model/tiny
          model.projector: projector/wide_deco
          pretrain: train/pretrain_tiny
          finetune: train/finetune_tiny
          data: data/shapes_tiny
          eval: eval/shapes
        pipeline:
          name: mine
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_outside(installed, elsewhere, f"""
        from deco_core.config import ConfigError, compose
        cfg = compose({str(tree / "pipeline" / "mine.yaml")!r})
        print("user", cfg.pipeline.name, cfg.model.projector.name, cfg.model.projector.num_tokens)
        try:
            compose("conf/pipeline/tiyn.yaml")
        except ConfigError as exc:
            print("error", exc)
    """)
    assert "user mine deco 4" in out
    error = next(line for line in out.splitlines() if line.startswith("error"))
    assert "conf/pipeline/tiyn.yaml" in error and "conf/conf" not in error
    assert "valid there: llava7b, retrain, tiny" in error


def test_exported_model_loads_without_any_config_files(installed, tmp_path, tiny_cfg, shapes_tokenizer):
    import torch

    from deco_core.model.deco import DecoModel

    model_dir = tmp_path / "model"
    model = DecoModel.from_config(tiny_cfg.model, shapes_tokenizer).eval()
    model.save_pretrained(model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = model(input_ids=ids).logits[0, -1, :5].tolist()
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    shutil.rmtree(site / "deco_core" / "conf")  # loading must not need conf/ (nor a training config)
    out = run_outside(site, tmp_path, f"""
        import torch
        from deco_core.model.deco import DecoModel
        model = DecoModel.from_pretrained({str(model_dir)!r})
        print("logits", model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits[0, -1, :5].tolist())
    """)
    got = [float(x) for x in out.split("logits", 1)[1].strip().strip("[]").split(",")]
    assert got == pytest.approx(expected, abs=1e-5)
