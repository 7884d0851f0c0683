"""Peak memory: a full-size Zero-1-to-3-shaped model alone, with an SD 2.1-base-shaped prior as priorswap
loads it, and the naive way (both pipelines loaded completely, side by side).

The random full-size folders are built from configs by bench/fullsize.py (no download; about 10 GB on
disk in float32). Each configuration runs in a FRESH subprocess that loads, runs one sampling step of
the 256 px novel-view task (latent 32×32) and reports its peak resident set size (VmHWM of
/proc/self/status; ru_maxrss is not used because Linux carries it over fork + exec from the parent):

  baseline  imports torch and priorswap only
  model     priorswap.load_pair(model), one CFG step, decode
  pair      priorswap.load_pair(model, prior), one prior-swap step, decode; run twice: first with an
            empty null cache (the prior's text encoder is loaded once to encode ""), then cached
  naive     the model folder loaded completely (as above, one CFG step) plus the whole prior folder as
            diffusers' StableDiffusionPipeline (one step of prompt "" at 256 px, latents out)

Target: pair (cached) − baseline ≤ 1.05 × ((model − baseline) + bytes of the prior UNet's parameters).

    flock /tmp/priorswap-bench.lock python bench/memory.py [--work DIR] [--dtype float32] [--tiny]

`--work DIR` keeps the built folders between runs (default: a temporary directory removed at exit).
`--tiny` runs everything on tiny configs in seconds (a smoke test: no target, exit 0 unless a step fails).
Exit status: 0 PASS, 1 FAIL, 2 a child process failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TARGET = 1.05
MARK = "RESULT "
MIB = 2**20
POSE = {"azimuth": 30.0, "polar": 10.0, "radius": 0.0}


def _status_kib(field: str) -> int:
    """A memory field (VmRSS, VmHWM) of /proc/self/status in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _quiet() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def child(config: str, model: str, prior: str, image: str, dtype_name: str) -> dict:
    """Loads and samples one configuration in this (fresh) process; returns its measurements in bytes."""
    import torch
    from fullsize import DTYPES, param_bytes

    import priorswap

    out: dict = {"config": config}
    if config != "baseline":
        _quiet()
        dtype = DTYPES[dtype_name]
        cache = Path(os.environ["PRIORSWAP_CACHE"]) / "null"
        out["null_cached"] = cache.is_dir() and any(cache.iterdir())
        start = time.perf_counter()
        pair = priorswap.load_pair(model, prior if config == "pair" else None, dtype=dtype)
        pipe = None
        if config == "naive":
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(prior, torch_dtype=dtype, use_safetensors=True)
            pipe.set_progress_bar_config(disable=True)
        out["load_s"] = time.perf_counter() - start
        out["rss_loaded"] = _status_kib("VmRSS") * 1024
        out["hwm_loaded"] = _status_kib("VmHWM") * 1024
        m = pair.model.denoiser
        c = m.conditioner
        parts = {"model unet": param_bytes(m.net), "image encoder": param_bytes(c.image_encoder),
                 "model vae": param_bytes(c.vae.vae), "cc_projection": param_bytes(c.cc_projection)}
        if pair.prior is not None:
            parts["prior unet"] = param_bytes(pair.prior.denoiser.net)
        if pipe is not None:
            parts.update({"pipeline unet": param_bytes(pipe.unet), "pipeline vae": param_bytes(pipe.vae),
                          "pipeline text encoder": param_bytes(pipe.text_encoder)})
        out["parts"] = parts
        start = time.perf_counter()
        method = "prior-swap" if config == "pair" else "cfg"
        result = pair.sample(image=image, steps=1, guidance=method, seed=0, **POSE)
        if pipe is not None:
            pipe("", height=m.resolution, width=m.resolution, num_inference_steps=1, guidance_scale=1.0,
                 output_type="latent", generator=torch.Generator().manual_seed(0))
        out["step_s"] = time.perf_counter() - start
        out["forward_calls"] = result.forward_calls
        out["finite"] = bool(torch.isfinite(result.latents).all())
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child of a big parent
    # would report the parent's peak; VmHWM belongs to the new address space only
    out["peak"] = _status_kib("VmHWM") * 1024
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out["rss_end"] = _status_kib("VmRSS") * 1024
    out["anon_end"] = _status_kib("RssAnon") * 1024  # private memory
    out["file_end"] = _status_kib("RssFile") * 1024  # resident pages of mapped files (safetensors weights)
    return out


def run_child(config: str, paths: dict[str, Path], dtype: str) -> dict:
    """Runs `child(config)` in a fresh interpreter with PRIORSWAP_CACHE pointing at the bench's cache."""
    env = {**os.environ, "PRIORSWAP_CACHE": str(paths["cache"]), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config, "--dtype", dtype,
           "--model", str(paths["model"]), "--prior", str(paths["prior"]), "--image", str(paths["image"])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = proc.stdout[-4000:] + proc.stderr[-4000:]
        sys.stderr.write(f"child '{config}' failed (exit {proc.returncode}):\n{tail}")
        raise SystemExit(2)
    return json.loads(lines[-1][len(MARK):])


def mib(n: float) -> str:
    return f"{n / MIB:9.0f}"


def report(rows: list[tuple[str, dict]], base: int, tiny: bool) -> int:
    """Prints the table, the target and PASS/FAIL; returns the exit status."""
    print(f"\n{'configuration':40s} {'peak':>9s} {'− base':>9s} {'loaded':>9s} {'load pk':>9s} {'anon':>9s} "
          f"{'file':>9s}   (MiB)")
    for label, r in rows:
        loaded = (f"{mib(r['rss_loaded'] - base)} {mib(r['hwm_loaded'] - base)}" if "rss_loaded" in r
                  else f"{'':9s} {'':9s}")
        print(f"{label:40s} {mib(r['peak'])} {mib(r['peak'] - base)} {loaded} {mib(r['anon_end'])} "
              f"{mib(r['file_end'])}")
    print("  peak: VmHWM at the end; − base: minus the baseline child's; loaded / load pk: VmRSS and VmHWM right "
          "after loading, minus the baseline;\n  anon / file: RssAnon / RssFile at the end (private memory / "
          "resident pages of memory-mapped files such as safetensors weights)")
    res = dict(rows)
    by = {r["config"] + ("-first" if r["config"] == "pair" and not r["null_cached"] else ""): r for _, r in rows}
    pair, model, naive, first = by["pair"], by["model"], by["naive"], by["pair-first"]
    print("\nparameter bytes loaded (MiB):")
    for name, r in (("model alone", model), ("pair", pair), ("two pipelines", naive)):
        print(f"  {name:14s} " + ", ".join(f"{k} {v / MIB:.0f}" for k, v in r["parts"].items())
              + f"  = {sum(r['parts'].values()) / MIB:.0f}")
    for label, r in res.items():
        if "forward_calls" in r:
            print(f"  {label}: load {r['load_s']:.1f} s, step+decode {r['step_s']:.1f} s, forwards "
                  f"{r['forward_calls']}, finite latents: {r['finite']}")
    prior_unet = pair["parts"]["prior unet"]
    model_cost = model["peak"] - base
    pair_cost = pair["peak"] - base
    budget = TARGET * (model_cost + prior_unet)
    ratio = pair_cost / (model_cost + prior_unet)
    print(f"\nprior UNet parameters: {prior_unet / MIB:.0f} MiB")
    print(f"pair − base {pair_cost / MIB:.0f} MiB  vs  (model − base) + prior UNet = "
          f"{(model_cost + prior_unet) / MIB:.0f} MiB  → ratio {ratio:.3f}  (target ≤ {TARGET:.2f}, "
          f"budget {budget / MIB:.0f} MiB)")
    print(f"pair over model alone: {(pair['peak'] - model['peak']) / MIB:+.0f} MiB")
    print(f"first run (text encoder loaded once to encode the null) − cached run: "
          f"{(first['hwm_loaded'] - pair['hwm_loaded']) / MIB:+.0f} MiB at the load peak, "
          f"{(first['peak'] - pair['peak']) / MIB:+.0f} MiB at the final peak")
    print(f"two pipelines − base {(naive['peak'] - base) / MIB:.0f} MiB: the pair saves "
          f"{(naive['peak'] - pair['peak']) / MIB:.0f} MiB ({1 - pair_cost / (naive['peak'] - base):.0%})")
    if tiny:
        print("tiny configs: diagnostic only, no target")
        return 0
    ok = pair_cost <= budget
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder that keeps the built model folders between runs (default: temporary)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="weights' dtype (folders are saved and loaded in it)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs: a smoke test in seconds, no target")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("--model", "--prior", "--image"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear in order with the builder's output
    if args.child:
        print(MARK + json.dumps(child(args.child, args.model, args.prior, args.image, args.dtype)), flush=True)
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import diffusers
    import torch
    import transformers
    from fullsize import ensure_folders, work_dir

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"python {sys.version.split()[0]}, dtype {args.dtype}, {os.cpu_count()} CPUs")
    with work_dir(args.work) as work:
        start = time.perf_counter()
        paths = ensure_folders(work, tiny=args.tiny, dtype=args.dtype)
        print(f"folders: {paths['model']}, {paths['prior']} ({time.perf_counter() - start:.0f} s)")
        shutil.rmtree(paths["cache"], ignore_errors=True)  # the first pair run must find the null uncached
        rows = []
        for config, label in (
            ("baseline", "baseline (import torch + priorswap)"),
            ("model", "model alone, CFG step"),
            ("pair", "pair, first run (null not cached)"),
            ("pair", "pair, null cached, prior-swap step"),
            ("naive", "two full pipelines side by side"),
        ):
            start = time.perf_counter()
            result = run_child(config, paths, args.dtype)
            print(f"  {label}: peak {result['peak'] / MIB:.0f} MiB ({time.perf_counter() - start:.0f} s)", flush=True)
            rows.append((label, result))
        if rows[2][1].get("null_cached") or not rows[3][1].get("null_cached"):
            print("unexpected null-cache state: the first pair run should miss, the second hit")
            return 2
    return report(rows, rows[0][1]["peak"], args.tiny)


if __name__ == "__main__":
    sys.exit(main())
