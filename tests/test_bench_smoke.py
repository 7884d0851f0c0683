"""The full-size benchmarks still run: each script's `--tiny` mode (the same code paths on tiny networks)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("memory.py", "two full pipelines side by side"),
        ("step_time.py", "model b2 + prior b2"),
        ("video_cost.py", "dual prior swap"),
        ("condition_reuse.py", "identical output: True"),
        ("gemm_batching.py", "4×4 conv 3×3 32→32, native"),
    ],
)
def test_bench_tiny_mode_runs(script, expect, tmp_path):
    env = {**os.environ, "PRIORSWAP_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(ROOT / "bench" / script), "--tiny"]
    if script in ("memory.py", "step_time.py"):
        args += ["--work", str(tmp_path / "work")]
    if script == "condition_reuse.py":
        args += ["--repeats", "2"]
    if script == "step_time.py":
        args += ["--samples", "2", "--repeats", "2"]  # several samples per step: CFG batch 4, swap batches 2
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert expect in done.stdout
    assert "identical output: False" not in done.stdout
    if script == "step_time.py":  # first and later steps timed apart, the engine's own cost, the 50-step estimate
        assert "later steps" in done.stdout and "outside the network forwards" in done.stdout
        assert "a 50-step run: cfg" in done.stdout and "reading the prior's" in done.stdout
        assert "swap ∥/cfg ∥" in done.stdout and "model b2 ∥ prior b2" in done.stdout  # parallel forwards, on a CPU
        assert "fastest swap / fastest CFG" in done.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_step_time_refuses_a_device_this_machine_lacks(tmp_path):
    """`--device cuda` without CUDA stops at once (exit 2, before building any folder) and says what to use."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "step_time.py"), "--tiny", "--device", "cuda",
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA device; use --device cpu" in done.stderr, done.stderr
    assert not (tmp_path / "work").exists()
