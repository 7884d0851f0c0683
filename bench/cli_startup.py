"""CLI start-up: wall time of `priorswap list` against a bare `python -c pass`, and whether it imports torch.

Runs both commands as subprocesses, interleaved (A B A B ...) after one warm-up each, and prints
the medians, the difference (priorswap's own cost) and PASS/FAIL against the target: `priorswap
list` in ≤ 0.5 s absolute and without importing torch. Also lists the slowest imports of the
`list` command (from `python -X importtime`) and a one-run breakdown of its phases in-process.

    python bench/cli_startup.py [--repeats 10] [--module]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.5
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub", "numpy")

# Runs `priorswap list` as the console script does (main() adds plugin commands first), timing its
# phases, then reports which heavy libraries ended up imported. Plugin discovery and the registry
# are loaded once up front (as `list` does) so their cost shows separately; main() reuses the
# cached plugins and parses the registry again.
PROBE = f"""
import sys, time
t0 = time.perf_counter()
from priorswap.cli import main
t1 = time.perf_counter()
phases = [("import priorswap.cli (typer, rich)", t1 - t0)]
try:
    from priorswap.plugin_manager import get_plugins
    plugins = get_plugins()
    t2 = time.perf_counter()
    from priorswap.registry import Registry
    Registry.load([], plugins.registry_files)
    t3 = time.perf_counter()
    phases += [("plugin discovery (entry points)", t2 - t1), ("import + load registry (pydantic, yaml)", t3 - t2)]
except Exception as e:
    print("phase-error", repr(e), file=sys.stderr)
    t3 = time.perf_counter()
sys.argv = ["priorswap", "list"]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
phases.append(("main(): typer parsing, registry again, rich tables", time.perf_counter() - t3))
print("exit", code, file=sys.stderr)
print("heavy", ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
for name, dt in phases:
    print("phase", f"{{dt * 1e3:.0f}} ms", name, file=sys.stderr)
"""


def list_command(force_module: bool) -> list[str]:
    """The installed console script (next to this interpreter, else on PATH), or `python -m priorswap.cli`."""
    if not force_module:
        beside = Path(sys.executable).with_name("priorswap")
        if beside.is_file() and os.access(beside, os.X_OK):
            return [str(beside), "list"]
        found = shutil.which("priorswap")
        if found:
            return [found, "list"]
    return [sys.executable, "-m", "priorswap.cli", "list"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def probe_imports(env: dict[str, str]) -> tuple[str, list[str], list[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=False)
    lines = [line.split(" ", 1) for line in proc.stderr.splitlines()
             if line.startswith(("exit ", "heavy ", "phase ", "phase-error "))]
    found = {k: v for k, v in lines if k != "phase"}
    heavy = [m for m in found.get("heavy", "").split(",") if m]
    phases = [v for k, v in lines if k == "phase"]
    if "phase-error" in found:
        phases.append(f"(phase timing failed: {found['phase-error']})")
    code = found.get("exit", f"? (rc {proc.returncode}: {proc.stderr.strip()[-300:]})")
    return code, heavy, phases


def slowest_imports(env: dict[str, str], n: int = 8) -> list[tuple[int, str]]:
    """Top-level imports by cumulative time (µs) while running `list`, from -X importtime."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE], capture_output=True, text=True,
                          env=env, check=False)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        name = name[1:]  # one separator space; nested imports are indented further
        if cumulative.strip().isdigit() and not name.startswith(" "):
            rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:n]


def measure(cmd_a: list[str], cmd_b: list[str], env: dict[str, str], repeats: int) -> dict[str, list[float]]:
    """Interleaved timings (A B, then B A, ...) after one untimed warm-up of each."""
    timed(cmd_a, env)
    timed(cmd_b, env)  # warm-up: file-system caches
    times: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(repeats):
        order = (("A", cmd_a), ("B", cmd_b)) if i % 2 == 0 else (("B", cmd_b), ("A", cmd_a))
        for side, cmd in order:
            times[side].append(timed(cmd, env))
    return times


def report(times: dict[str, list[float]], label: str) -> float:
    med_a = statistics.median(times["A"])
    med_b = statistics.median(times["B"])
    n = len(times["A"])
    print(f"[{label}]")
    print(f"  A  python -c pass   median {med_a * 1e3:7.1f} ms  (min {min(times['A']) * 1e3:.1f}, "
          f"max {max(times['A']) * 1e3:.1f}), {n} runs")
    print(f"  B  priorswap list   median {med_b * 1e3:7.1f} ms  (min {min(times['B']) * 1e3:.1f}, "
          f"max {max(times['B']) * 1e3:.1f}), {n} runs")
    print(f"  difference B − A = {(med_b - med_a) * 1e3:.1f} ms")
    return med_b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each command (interleaved)")
    parser.add_argument("--module", action="store_true", help="time `python -m priorswap.cli list` instead")
    args = parser.parse_args(argv)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd_a = [sys.executable, "-c", "pass"]
    cmd_b = list_command(args.module)
    print(f"python {sys.version.split()[0]} ({sys.executable}), {os.cpu_count()} CPUs")
    print(f"A: {' '.join(cmd_a)}")
    print(f"B: {' '.join(cmd_b)}")

    med_b = report(measure(cmd_a, cmd_b, env, args.repeats), "interleaved subprocess runs")
    code, heavy, phases = probe_imports(env)
    print(f"`priorswap list` in-process: exit {code}; heavy modules imported: {', '.join(heavy) or 'none'}")
    torch_ok = "torch" not in heavy
    if phases:
        print("in-process phases of `priorswap list` (one run): " + "; ".join(phases))
    print(f"torch imported by `priorswap list`: {'no' if torch_ok else 'YES'}")
    top = slowest_imports(env)
    if top:
        print("slowest top-level imports (cumulative): "
              + ", ".join(f"{name} {us / 1e3:.0f} ms" for us, name in top))

    time_ok = med_b <= TARGET_S
    ok = time_ok and torch_ok and code == "0"
    print(f"priorswap list median {med_b:.3f} s (target ≤ {TARGET_S} s absolute), torch not imported: "
          f"{'yes' if torch_ok else 'no'}  {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
