"""Static checks of the commands infra/ runs: manifest entrypoints, local service scripts, the Dockerfile.

Entrypoints in the Kubernetes manifests must name real `deco` subcommands, modules and configs;
the local service scripts must parse, be strict and bind loopback only; the Dockerfile pins its
base image and torch. No cluster, Docker engine or running service is needed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_infra import DOCKERFILE, ROOT, manifests, walk_containers

LOCAL = ROOT / "infra" / "local"

# The `deco` CLI surface the manifests may use: subcommand -> allowed sub-subcommands (empty: none).
CLI_COMMANDS: dict[str, set[str]] = {
    "pipeline": {"run", "submit", "status"},
    "train": {"pretrain", "finetune"},
    "eval": set(),
    "retrain": set(),
    "data": {"build"},
}
STAGES = ("prepare_data", "pretrain", "finetune", "evaluate", "analyze", "register")
PLANNED_MODULES = {"pipelines.workflow.job", "pipelines.ops.retrain"}
PLANNED_CONFIGS = {f"conf/pipeline/{n}.yaml" for n in ("tiny", "llava7b", "retrain")}
KNOWN_PROGRAMS = {"cd", "deco", "python", "python3", "ray", "mlflow", "bash", "sh"}


def shell_commands(text: str) -> list[list[str]]:
    """Split a shell line into simple commands (argv lists) at &&, ||, ; and |."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def expand(argv: list[str]) -> list[list[str]]:
    """Unwrap `bash -c STRING` and `ray job submit ... -- ENTRYPOINT` into the commands they run."""
    if len(argv) >= 3 and argv[0] in ("bash", "sh") and argv[1] == "-c":
        return [c for cmd in shell_commands(argv[2]) for c in expand(cmd)]
    if argv[:3] == ["ray", "job", "submit"] and "--" in argv:
        return [argv[: argv.index("--")], *expand(argv[argv.index("--") + 1 :])]
    return [argv]


def entrypoint_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every command the manifests run: Ray job entrypoints and container commands."""
    found = []
    for fname, doc in manifests():
        lines = [doc["spec"].get("entrypoint")] if doc.get("kind") == "RayJob" else []
        if doc.get("kind") == "RayCronJob":
            lines.append(doc["spec"]["jobTemplate"].get("entrypoint"))
        for line in filter(None, lines):
            found += [(fname, c) for cmd in shell_commands(line) for c in expand(cmd)]
        for container in walk_containers(doc):
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv:
                found += [(fname, c) for c in expand(argv)]
    return found


def command_problems(argv: list[str]) -> tuple[list[str], list[str]]:
    """(errors, not-yet-written planned names) for one command."""
    errors: list[str] = []
    pending: list[str] = []
    program = argv[0]
    if program not in KNOWN_PROGRAMS:
        errors.append(f"unknown program {program!r} in {argv}")
    if program == "deco":
        sub = argv[1] if len(argv) > 1 else ""
        if sub not in CLI_COMMANDS:
            errors.append(f"`deco {sub}` is not a CLI subcommand (valid: {sorted(CLI_COMMANDS)})")
        elif CLI_COMMANDS[sub] and (len(argv) < 3 or argv[2] not in CLI_COMMANDS[sub]):
            errors.append(f"`deco {sub}` needs one of {sorted(CLI_COMMANDS[sub])}: {argv}")
    if program.startswith("python") and "-m" in argv:
        module = argv[argv.index("-m") + 1]
        as_path = ROOT / Path(*module.split("."))
        if not (as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file()):
            (pending if module in PLANNED_MODULES else errors).append(f"module {module}")
    if "--config" in argv:
        config = argv[argv.index("--config") + 1]
        if not ((ROOT / config).is_file() or (ROOT / "conf" / f"{config}.yaml").is_file()):  # a path or a ref
            (pending if config in PLANNED_CONFIGS else errors).append(f"config {config}")
    return errors, pending


def test_entrypoints_name_real_commands_modules_and_configs() -> None:
    """Commands in the manifests use real `deco` subcommands, modules on disk and config files."""
    commands = entrypoint_commands()
    assert any(argv[:2] == ["deco", "retrain"] for _, argv in commands)
    assert any(argv[:3] == ["deco", "pipeline", "run"] for _, argv in commands)
    errors, pending = [], []
    for fname, argv in commands:
        err, todo = command_problems(argv)
        errors += [f"{fname}: {e}" for e in err]
        pending += [f"{fname}: {p}" for p in todo]
    assert errors == []
    assert pending == [], f"referenced but missing: {sorted(set(pending))}"


def test_command_check_rejects_unknown_names() -> None:
    """The entrypoint check rejects an unknown subcommand, module, config and program."""
    assert command_problems(["deco", "deploy"])[0]
    assert command_problems(["deco", "pipeline", "launch"])[0]
    assert command_problems(["python", "-m", "pipelines.nope"])[0]
    assert command_problems(["deco", "retrain", "--config", "conf/pipeline/nope.yaml"])[0]
    assert command_problems(["deco", "retrain", "--config", "pipeline/nope"])[0]
    assert command_problems(["curl", "http://x"])[0]
    assert expand(["bash", "-c", "cd /x && deco eval --model m"]) == [
        ["cd", "/x"],
        ["deco", "eval", "--model", "m"],
    ]


def test_deco_cli_defines_the_subcommands_used() -> None:
    """The Typer app really has every `deco` subcommand the manifests call."""
    import typer.main

    from pipelines.cli import app

    group = typer.main.get_command(app)
    missing = set()
    for _, argv in entrypoint_commands():
        if argv[0] != "deco":
            continue
        command = group.get_command(None, argv[1])  # type: ignore[attr-defined]
        if command is None:
            missing.add(f"deco {argv[1]}")
        elif CLI_COMMANDS[argv[1]] and command.get_command(None, argv[2]) is None:
            missing.add(f"deco {argv[1]} {argv[2]}")
    assert not missing, f"CLI subcommands the manifests call but the app lacks: {sorted(missing)}"


@pytest.mark.parametrize("script", sorted(LOCAL.glob("*.sh")), ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_strict(script: Path) -> None:
    """Each local service script passes `bash -n`; runnable ones use `set -euo pipefail`."""
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if script.name != "common.sh":
        assert "set -euo pipefail" in script.read_text()
        assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


def test_local_services_bind_loopback_only() -> None:
    """The local scripts never bind 0.0.0.0; every service is started on 127.0.0.1."""
    text = "\n".join(p.read_text() for p in LOCAL.glob("*.sh"))
    assert "0.0.0.0" not in text
    assert "LOCAL_HOST=127.0.0.1" in text
    for flag in ('--host "$LOCAL_HOST"', '-H "$LOCAL_HOST"', '--dashboard-host "$LOCAL_HOST"',
                 '--node-ip-address "$LOCAL_HOST"'):  # fmt: skip
        assert flag in text


def test_dockerfile_pins_base_and_installs_torch_then_project() -> None:
    """The Dockerfile pins a tagged base (never latest) and installs pinned torch before the project."""
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    torch_pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert torch_pin, "pyproject.toml pins no torch version"
    assert text.index(f"TORCH_VERSION={torch_pin.group(1)}") < text.index("pip install .")
    assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}"', text)
