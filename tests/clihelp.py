"""Runs the CLI in-process, like the console script does, and returns (exit code, stdout, stderr)."""

from __future__ import annotations

import sys


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from priorswap.cli import main

    old = sys.argv
    sys.argv = ["priorswap", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err
