"""Per-step cost of DynamiCrafter 256 with and without the VideoCrafter2 prior, full size, on the CPU.

Builds the full-size networks of the dynamicrafter plugin's presets (`NETWORKS["dynamicrafter-256"]` +
`RESAMPLER_FULL` for the model, `NETWORKS["videocrafter2"]` for the prior) on the meta device, then
`to_empty(device="cpu")` and a seeded random init (no weights on disk). The text / image encoders and the VAE
are not part of a step: the conditions are random tensors of the right shapes (image tokens from the real
Resampler on random CLIP-H tokens). Sampling goes through the core engine (`priorswap.engine.Sampler`) with the
routes of `priorswap.api.Pair` and the guidance rules of `priorswap.guidance`, as `priorswap video` does:

  (a) the 256 model alone, dual CFG          one model forward on batch 3 per step
  (b) model + VideoCrafter2 prior, dual swap  one model forward on batch 2 + one prior forward on batch 1

at 256×256 (latent 4×T×32×32), T = 16 frames unless told otherwise. Each measurement is a fresh subprocess:

  baseline  imports torch, priorswap, the plugin and diffusers' scheduler; builds nothing
  (a)       builds the model, runs one dual-CFG step: peak RSS of (a)
  (b)       builds model and prior, runs one dual-prior-swap step (peak RSS of (b), read before anything
            else runs), one dual-CFG step (warm-up), then `--repeats` runs of `--steps` DDIM steps of each
            rule, interleaved (order alternating), timing every step; seconds per step = the median

Peak memory = ru_maxrss of the child minus the baseline child's. If a step of (a) takes longer than 5 minutes
or a child does not fit in `--memory-limit` GiB (its address space is capped there, so it stops with an
allocation error rather than growing past it), the script halves the frame count and says so.

    python bench/video_cost.py [--frames 16] [--steps 1] [--repeats 1] [--threads N] [--dtype fp32|bf16]
    python bench/video_cost.py --tiny        # the tests' tiny configs (one thread unless --threads), seconds

On a shared machine wrap full-size runs in the benchmark lock:
    flock /tmp/priorswap-bench.lock python bench/video_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
MARK = "RESULT "
STEP_LIMIT_S = 300.0
CLIP_TOKENS = 257  # OpenCLIP ViT-H/14 at 224 px: 16×16 patches + class token, fed to the Resampler
TINY_CLIP_TOKENS = 5  # the tests' tiny CLIP vision model: 16 px, patch 8
TEXT_TOKENS = 77
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


# ---- configs ------------------------------------------------------------------------------------------


def configs(tiny: bool) -> dict:
    """Network configs, latent size and default frames: the plugin's full-size presets, or the tests' tiny ones."""
    if tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        import test_dynamicrafter_sampling as t

        return {"unet": t.UNET, "proj": t.PROJ, "prior": t.VC_UNET, "latent": 8, "frames": t.FRAMES,
                "clip_tokens": TINY_CLIP_TOKENS, "label": "tiny (tests/test_dynamicrafter_sampling.py configs)"}
    from priorswap.plugins.dynamicrafter.presets import NETWORKS, PRESETS, RESAMPLER_FULL

    lvdm = PRESETS["dynamicrafter-256"]["lvdm"]
    return {"unet": NETWORKS["dynamicrafter-256"], "proj": RESAMPLER_FULL, "prior": NETWORKS["videocrafter2"],
            "latent": lvdm["height"] // 8, "frames": lvdm["frames"], "clip_tokens": CLIP_TOKENS,
            "label": "full size (presets dynamicrafter-256 + RESAMPLER_FULL, videocrafter2)"}


def build(cls: type, config: dict, dtype, seed: int):
    """`cls(**config)` built on the meta device, allocated on the CPU, filled with seeded random values:
    N(0, 0.02) for matrices / kernels, 1 for 1-d weights (norm scales), 0 for biases and scalars."""
    import torch

    with torch.device("meta"):
        net = cls(**config).to(dtype)
    net = net.to_empty(device="cpu").eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.fill_(1.0 if p.ndim == 1 and name.endswith("weight") else 0.0)
    return net


def param_counts(cfg: dict) -> dict[str, int]:
    import torch

    from priorswap.plugins.dynamicrafter.resampler import Resampler
    from priorswap.plugins.dynamicrafter.unet3d import UNet3D

    with torch.device("meta"):
        nets = {"model UNet3D": UNet3D(**cfg["unet"]), "model Resampler": Resampler(**cfg["proj"]),
                "prior UNet3D (VideoCrafter2)": UNet3D(**cfg["prior"])}
    return {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}


# ---- the child: build, sample, measure ------------------------------------------------------------------


def write_folder(path: Path, preset: str, frames: int, latent: int) -> Path:
    """A metadata-only converted folder (model_index + scheduler configs, as `convert.save_folder` writes them),
    so the pair resolves through the plugin's `describe`, the registry and the pair planner like a real one."""
    from priorswap.plugins.dynamicrafter.presets import LVDM_CONFIG, PRESETS

    settings = PRESETS[preset]
    pipeline = "DynamiCrafterPipeline" if settings["lvdm"]["family"] == "dynamicrafter" else "VideoCrafterPipeline"
    (path / "scheduler").mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "preset": preset}))
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(settings["scheduler"]))
    lvdm = {**settings["lvdm"], "frames": frames, "height": 8 * latent, "width": 8 * latent}
    (path / "scheduler" / LVDM_CONFIG).write_text(json.dumps(lvdm))
    return path


def make_pair(tmp: Path, cfg: dict, frames: int, dtype, with_prior: bool):
    """A `priorswap.api.Pair` of the dynamicrafter plugin's denoisers around freshly built random networks."""
    from priorswap import LoadRequest
    from priorswap.adapters import plan_pair
    from priorswap.api import Pair
    from priorswap.loading import Loaded, resolve
    from priorswap.plugin_manager import get_plugins
    from priorswap.plugins.dynamicrafter.denoiser import DynamiCrafterDenoiser, VideoCrafterDenoiser
    from priorswap.plugins.dynamicrafter.resampler import Resampler
    from priorswap.plugins.dynamicrafter.task import ImageToVideoTask
    from priorswap.plugins.dynamicrafter.unet3d import UNet3D
    from priorswap.registry import Registry

    plugins = get_plugins()
    registry = Registry.load([], plugins.registry_files)

    def loaded(preset: str, role: str, make):
        folder = write_folder(tmp / preset, preset, frames, cfg["latent"])
        res = resolve(str(folder), registry, plugins)
        request = LoadRequest(folder=folder, entry=res.entry, role=role, latent_space=res.latent_space, dtype=dtype)
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        lvdm = json.loads((folder / "scheduler" / "lvdm_config.json").read_text())
        return Loaded(res, folder, make(scheduler, lvdm, request))

    model = loaded("dynamicrafter-256", "model", lambda s, lv, r: DynamiCrafterDenoiser(
        build(UNet3D, cfg["unet"], dtype, 0), build(Resampler, cfg["proj"], dtype, 1), s, lv, r))
    prior = plan = None
    if with_prior:
        prior = loaded("videocrafter2", "prior", lambda s, lv, r: VideoCrafterDenoiser(
            build(UNet3D, cfg["prior"], dtype, 2), s, lv, r))
        plan = plan_pair(model.resolved.spec(), prior.resolved.spec(), plugins.bridges)
        if not plan.ok:
            raise SystemExit(f"the pair does not plan: {plan.reason}")
    return Pair(model, prior, plan, ImageToVideoTask(model.denoiser, model.folder))


def conditions(pair, cfg: dict, frames: int) -> dict:
    """Random conditions with the shapes `ImageToVideoTask.conditions` gives (text tokens from OpenCLIP-H,
    image tokens from the model's Resampler) and the prior's empty-prompt null condition."""
    import torch

    model = pair.model.denoiser
    gen = torch.Generator().manual_seed(10)
    dim, dtype = cfg["unet"]["context_dim"], model.dtype

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    with torch.no_grad():
        tokens = model.image_proj(rand(1, cfg["clip_tokens"], cfg["proj"]["embedding_dim"]))
        zero_tokens = model.image_proj(rand(1, cfg["clip_tokens"], cfg["proj"]["embedding_dim"]))
    concat = rand(1, 4, 1, cfg["latent"], cfg["latent"]).repeat(1, 1, frames, 1, 1)  # first frame on every frame
    prompt, empty = rand(1, TEXT_TOKENS, dim), rand(1, TEXT_TOKENS, dim)
    fs = model.fs_tensor(None)
    conds = {
        ("model", "full"): {"context": torch.cat([prompt, tokens], 1), "concat": concat, "fs": fs},
        ("model", "partial"): {"context": torch.cat([empty, tokens], 1), "concat": concat, "fs": fs},
        ("model", "null"): {"context": torch.cat([empty, zero_tokens], 1), "concat": concat, "fs": fs},
    }
    if pair.prior is not None:
        prior = pair.prior.denoiser
        conds[("prior", "null")] = {"context": rand(1, TEXT_TOKENS, cfg["prior"]["context_dim"]),
                                    "fs": prior.fs_tensor(None)}
    return conds


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(args: argparse.Namespace) -> dict:
    """One measurement process (see the module docstring); returns what it measured."""
    import torch

    import priorswap  # noqa: F401
    from priorswap.api import make_scheduler
    from priorswap.engine import Sampler
    from priorswap.plugins.dynamicrafter import denoiser, task  # noqa: F401

    make_scheduler("ddim", {})  # imports diffusers, as sampling does
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    cfg = configs(args.tiny)
    if args.child == "baseline":
        out["peak_gib"] = peak_gib()
        return out
    dtype = getattr(torch, DTYPES[args.dtype])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pair = make_pair(Path(tmp), cfg, args.frames, dtype, with_prior=args.child == "swap")
        out["build_s"] = time.perf_counter() - start
        out["built_gib"] = peak_gib()
        model = pair.model.denoiser
        phi = model.lvdm.get("guidance_rescale", 0.0)
        rules = {"dual-cfg": pair.guidance_for("dual-cfg", None).with_options(rescale=phi)}
        if pair.prior is not None:
            rules["dual-prior-swap"] = pair.guidance_for("dual-prior-swap", None).with_options(rescale=phi)
        out["rules"] = {name: [(t.weight, t.role, t.level) for t in r.terms] for name, r in rules.items()}
        out["routes"] = {role: type(route.denoiser).__name__ + f" (match {route.match}, {len(route.adapters)} adapters)"
                         for role, route in pair.routes.items()}
        conds = conditions(pair, cfg, args.frames)
        shape = (1, model.latent_space.channels, args.frames, cfg["latent"], cfg["latent"])
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)

        def run(name: str, steps: int) -> tuple[list[list[float]], dict]:
            """Samples `steps` DDIM steps with rule `name`; per step [wall s, process CPU s] and forward counts."""
            sampler = Sampler(pair.routes, conds, rules[name], make_scheduler("ddim", model.scheduler_config))
            marks = [(time.perf_counter(), time.process_time())]
            latents = sampler.run(noise, steps, eta=1.0, generator=torch.Generator().manual_seed(1),
                                  callback=lambda info: marks.append((time.perf_counter(), time.process_time())))
            if not torch.isfinite(latents).all():
                raise SystemExit(f"{name}: non-finite latents")
            per_step = [[b[0] - a[0], b[1] - a[1]] for a, b in zip(marks, marks[1:], strict=False)]
            return per_step, dict(sampler.forward_calls)

        first = "dual-prior-swap" if pair.prior is not None else "dual-cfg"
        times, calls = run(first, 1)
        out["first_step"] = {first: times[0]}
        out["peak_gib"] = peak_gib()  # this configuration's peak: build + one step of its own rule
        out["forward_calls"] = {first: calls}
        if pair.prior is None or times[0][0] > STEP_LIMIT_S:
            return out
        times, calls = run("dual-cfg", 1)  # warm-up of the other rule
        out["first_step"]["dual-cfg"] = times[0]
        out["forward_calls"]["dual-cfg"] = calls
        out["peak_both_gib"] = peak_gib()
        steps: dict[str, list[list[float]]] = {name: [] for name in rules}
        for i in range(args.repeats):
            for name in (list(rules) if i % 2 == 0 else list(reversed(rules))):
                steps[name] += run(name, args.steps)[0]
        out["steps"] = steps
    return out


def spawn(args: argparse.Namespace, kind: str, frames: int) -> dict:
    """Runs `kind` in a fresh interpreter and reads its result; a configuration's address space is capped at
    --memory-limit GiB."""
    cmd = [sys.executable, __file__, "--child", kind, "--frames", str(frames), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--dtype", args.dtype]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--tiny"] if args.tiny else []
    limit = int(args.memory_limit * 2**30)

    def cap() -> None:
        if kind != "baseline":
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap, cwd=ROOT)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit status {proc.returncode}: {tail}", "wall_s": wall}
    return {**json.loads(lines[-1][len(MARK):]), "wall_s": wall}


# ---- the report ---------------------------------------------------------------------------------------


def problem(result: dict, limit_gib: float) -> str | None:
    """Why this frame count does not do: a failed child, a step over the limit, or too much memory."""
    if "error" in result:
        return result["error"]
    slow = {k: v[0] for k, v in result.get("first_step", {}).items() if v[0] > STEP_LIMIT_S}
    if slow:
        return ", ".join(f"a {k} step took {v:.0f} s (> {STEP_LIMIT_S:.0f} s)" for k, v in slow.items())
    if result["peak_gib"] > limit_gib:
        return f"peak RSS {result['peak_gib']:.1f} GiB > {limit_gib:g} GiB"
    return None


def report(args: argparse.Namespace, cfg: dict, frames: int, base: dict, a: dict, b: dict, notes: list[str]) -> None:
    from priorswap.provenance import formula

    counts = param_counts(cfg)
    width = 2 if args.dtype == "bf16" else 4
    latent = cfg["latent"]
    print(f"priorswap bench/video_cost.py: {cfg['label']}, random weights on the CPU")
    print(f"torch {b['torch']}, threads {b['threads']}, {args.dtype}, {8 * latent}×{8 * latent} px, {frames} frames "
          f"(latent 1×4×{frames}×{latent}×{latent}), DDIM η=1, γT=7.5 γI=1.5")
    for note in notes:
        print(f"note: {note}")
    for name, n in counts.items():
        print(f"  {name:30s} {n:>15,d} parameters  {n * width / 2**30:6.2f} GiB")
    print(f"routes: {b['routes']}")
    for name, terms in b["rules"].items():
        print(f"  {name}: x̂0 = {formula(terms)}; forward passes per step {b['forward_calls'][name]}")
    steps = b["steps"]
    print(f"timing in one process holding both networks: 1 warm-up step per rule, then {args.repeats} run(s) × "
          f"{args.steps} step(s) per rule, interleaved (n = {len(steps['dual-cfg'])} steps each); memory: peak RSS "
          f"(ru_maxrss) of a fresh process per configuration − baseline ({base['peak_gib']:.2f} GiB: torch + "
          "priorswap + plugin + diffusers imported)")
    wall = {k: statistics.median(s[0] for s in v) for k, v in steps.items()}
    cpu = {k: statistics.median(s[1] for s in v) for k, v in steps.items()}
    mem_a, mem_b = a["peak_gib"] - base["peak_gib"], b["peak_gib"] - base["peak_gib"]
    rows = [("(a) model alone, dual CFG", "dual-cfg", mem_a, a["built_gib"] - base["peak_gib"]),
            ("(b) model + VC2 prior, dual prior swap", "dual-prior-swap", mem_b, b["built_gib"] - base["peak_gib"])]
    print(f"{'configuration':40s} {'s/step':>8s} {'min':>8s} {'max':>8s} {'CPU s/step':>10s} "
          f"{'peak − base':>12s} {'weights':>9s}")
    for label, rule, mem, built in rows:
        walls = [s[0] for s in steps[rule]]
        print(f"{label:40s} {wall[rule]:8.2f} {min(walls):8.2f} {max(walls):8.2f} {cpu[rule]:10.2f} "
              f"{mem:8.2f} GiB {built:5.2f} GiB")
    prior_gib = counts["prior UNet3D (VideoCrafter2)"] * width / 2**30
    print(f"ratio swap/CFG per step: wall {wall['dual-prior-swap'] / wall['dual-cfg']:.3f}, "
          f"process CPU {cpu['dual-prior-swap'] / cpu['dual-cfg']:.3f}")
    print(f"memory (b) − (a): {mem_b - mem_a:.2f} GiB vs prior parameters {prior_gib:.2f} GiB "
          f"(ratio {(mem_b - mem_a) / prior_gib:.3f}); (b) / (a) = {mem_b / mem_a:.3f}")
    print(f"weights = peak after building the networks, before the first step. The timing process (both networks, "
          f"a step of each rule) peaked at {b['peak_both_gib'] - base['peak_gib']:.2f} GiB − base.")
    cold = {k: f"{v[0]:.2f}" for k, v in b["first_step"].items()}
    print(f"cold first steps (wall s): (a) {a['first_step']['dual-cfg'][0]:.2f} in its own process; warm-ups in the "
          f"timing process {cold}; all steps (wall s): " +
          "; ".join(f"{k} {[round(s[0], 2) for s in v]}" for k, v in steps.items()))
    print(f"build {a['build_s']:.1f} s (a) / {b['build_s']:.1f} s (b); child processes took {a['wall_s']:.0f} s (a) "
          f"and {b['wall_s']:.0f} s (b)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 16; tiny: 4)")
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps per timed run")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per rule, interleaved")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: all cores; --tiny: 1)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and activations")
    parser.add_argument("--memory-limit", type=float, default=24.0, help="GiB a configuration may use")
    parser.add_argument("--no-fallback", action="store_true", help="fail instead of trying fewer frames")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny configs (a smoke test, seconds)")
    parser.add_argument("--child", choices=("baseline", "cfg", "swap"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(MARK + json.dumps(child(args)), flush=True)
        return 0

    if args.threads is None:  # tiny layers are too small to share: 2 threads on a busy 2-core box run ~50× slower
        args.threads = 1 if args.tiny else 0
    cfg = configs(args.tiny)
    frames = args.frames or cfg["frames"]
    base = spawn(args, "baseline", frames)
    if "error" in base:
        print(f"baseline child failed: {base['error']}")
        return 1
    notes: list[str] = []
    while True:
        a = spawn(args, "cfg", frames)
        why = problem(a, args.memory_limit)
        if why is None:
            b = spawn(args, "swap", frames)
            why = problem(b, args.memory_limit)
            if why is None:
                break
            why = f"(b) {why}"
        else:
            why = f"(a) {why}"
        if args.no_fallback or frames == 1:
            print(f"{frames} frames do not work: {why}")
            return 1
        notes.append(f"{frames} frames did not work ({why}); fell back to {frames // 2} frames")
        print(f"note: {notes[-1]}", flush=True)
        frames //= 2
    report(args, cfg, frames, base, a, b, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
