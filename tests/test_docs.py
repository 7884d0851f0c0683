"""Examples in the docs run: every ```python block of these pages, in order, in one namespace per page
(a block right after `<!-- skip -->` is not run)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/python-api.md"]
BLOCK = re.compile(r"(<!-- skip -->\s*)?```python\n(.*?)```", re.S)


def python_blocks(page: Path) -> list[str]:
    return [code for skip, code in BLOCK.findall(page.read_text()) if not skip]


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, capsys):
    """As written: the examples use the shipped toy models, so a reader can run them offline too."""
    blocks = python_blocks(ROOT / page)
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, f"{page} example", "exec"), namespace)


def test_docs_link_to_existing_pages():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


def _commands(page: Path) -> list[list[str]]:
    """The `priorswap ...` command lines of a page's shell blocks, continuation lines joined, as argv lists."""
    import shlex

    out, block, lang = [], None, ""
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            if block is None:
                block, lang = [], line[3:].strip()
            else:
                if lang in ("", "bash", "sh"):
                    for cmd in "\n".join(block).replace("\\\n", " ").splitlines():
                        cmd = cmd.split("  #")[0].strip()
                        if cmd.startswith("priorswap "):
                            out.append(shlex.split(cmd)[1:])
                block = None
        elif block is not None:
            block.append(line)
    return out


@pytest.mark.parametrize("page", ["README.md", "docs/paper.md", "docs/eval.md", "docs/families/dynamicrafter.md"])
def test_documented_commands_use_real_options(page):
    """Every option of every command on the page exists: the command's own options, or (for `sample`) a
    field of some registered task's inputs. These commands need GPUs and hub weights, so they are not run."""
    import typer

    from priorswap.cli import app
    from priorswap.family import resolve_ref
    from priorswap.plugin_manager import get_plugins

    plugins = get_plugins()
    plugins.add_commands(app)
    group = typer.main.get_command(app)
    task_options = {"--" + f.replace("_", "-") for ref in plugins.tasks.values()
                    for f in resolve_ref(ref).Inputs.model_fields}
    commands = _commands(ROOT / page)
    assert commands, f"{page} shows no priorswap command"
    for argv in commands:
        command = group.commands[argv[0]]
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        if argv[0] == "sample":
            known |= task_options
        used = {a.split("=")[0] for a in argv[1:] if a.startswith("--")}
        assert used <= known, f"{page}: `priorswap {' '.join(argv)}` uses unknown {sorted(used - known)}"


def test_the_pairs_example_in_cli_md_is_the_real_output():
    """docs/cli.md shows `priorswap pairs` output as the command prints it at 100 columns."""
    import os
    import subprocess
    import sys

    text = (ROOT / "docs" / "cli.md").read_text()
    command = "priorswap pairs toy-digits-class --prior toy-digits-dit-v"
    block = text.split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    proc = subprocess.run([sys.executable, "-m", "priorswap.cli", *command.split()[1:]], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "100", "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    assert [line.rstrip() for line in proc.stdout.splitlines()] == [line.rstrip() for line in block.splitlines()]
