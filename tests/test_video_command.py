"""`priorswap video` refuses bad options before any weights load, in the options' words. The model folders here
hold only what is read before loading (model_index.json and the scheduler configs of a preset), and load_pair
is replaced by a spy: an option that is checked only after loading reaches the spy and fails the test.
(Runs that sample are in test_dynamicrafter_sampling.py.)"""

import json

import numpy as np
import pytest
from clihelp import run_cli
from PIL import Image

import priorswap.api
from priorswap.errors import PriorswapError
from priorswap.plugins.dynamicrafter.presets import PRESETS


def stub_folder(root, preset):
    """A converted folder's configs without any weights: enough to resolve the model and its task."""
    cls = "VideoCrafterPipeline" if preset == "videocrafter2" else "DynamiCrafterPipeline"
    (root / "scheduler").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": cls, "preset": preset}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(PRESETS[preset]["scheduler"]))
    (root / "scheduler" / "lvdm_config.json").write_text(json.dumps(PRESETS[preset]["lvdm"]))
    return root


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stubs")
    rng = np.random.default_rng(0)
    for name in ("first", "last"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{name}.png")
    return {
        "dc512": stub_folder(root / "dc512", "dynamicrafter-512"),
        "interp": stub_folder(root / "interp", "dynamicrafter-512-interp"),
        "vc2": stub_folder(root / "vc2", "videocrafter2"),
        "first": root / "first.png",
        "last": root / "last.png",
    }


@pytest.fixture
def spy(monkeypatch):
    calls = []

    def load_pair(*args, **kwargs):
        calls.append(kwargs)
        raise PriorswapError("stopped at load_pair")

    monkeypatch.setattr(priorswap.api, "load_pair", load_pair)
    return calls


def video(capsys, stubs, tmp_path, *extra, model="dc512", out="v.mp4"):
    image = ("--image", str(stubs["first"])) if model in ("dc512", "interp") else ()
    ref = str(stubs[model]) if model in stubs else model
    code, _, stderr = run_cli(capsys, "video", "--model", ref, *image, "--prompt", "a cat", "--out",
                              str(tmp_path / out), *extra)
    return code, " ".join(stderr.split())  # rich wraps long lines


CASES = [
    (("--video-fps", "0"), "--video-fps must be from 1 to 100"),
    (("--video-fps", "-5"), "--video-fps must be from 1 to 100"),
    (("--video-fps", "101"), "--video-fps must be from 1 to 100"),
    (("--steps", "0"), "--steps must be at least 1, got 0"),
    (("--steps", "5000"), "--steps must be from 1 to 1000 (the model's training timesteps), got 5000"),
    (("--frames", "0"), "--frames (got '0'): Input should be greater than 0"),
    (("--frames", "-2"), "--frames (got '-2'): Input should be greater than 0"),
    (("--frames", "100000"), "--frames (got '100000'): Input should be less than or equal to 64"),
    (("--fs", "0"), "--fs (got '0'): Input should be greater than 0"),
    (("--fs", "-1"), "--fs (got '-1'): Input should be greater than 0"),
    (("--fs", str(2**70)), "--fs (got '1180591620717411303424'): Input should be less than or equal to 1000"),
    (("--eta", "-1"), "--eta must be between 0 and 1, got -1"),
    (("--eta", "5"), "--eta must be between 0 and 1, got 5"),
    (("--seed", "-1"), "--seed must be from 0 to 2**63 − 1"),
    (("--seed", str(2**63)), "--seed must be from 0 to 2**63 − 1"),
    (("--posterior-seed", "-1"), "--posterior-seed must be from 0 to 2**63 − 1"),
    (("--method", "bogus"), "--method must be one of cfg, prior-swap, autoguidance, dual-cfg, dual-prior-swap, got"),
    (("--method", "cfg"), "--method cfg does not fit task 'image-to-video', which has two conditions"),
    (("--method", "dual-prior-swap"), "--method dual-prior-swap needs a prior: pass --prior PRIOR"),
    (("--autocast", "fp32"), "--autocast takes fp16 or bf16 (mixed precision), got fp32"),
    (("--rescale", "5"), "--rescale must be between 0 and 1, got 5"),
    (("--guidance", "nan"), "--guidance must be a finite number"),
]


@pytest.mark.parametrize(("extra", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_option_is_refused_before_loading(stubs, tmp_path, capsys, spy, extra, message):
    code, stderr = video(capsys, stubs, tmp_path, *extra)
    assert code == 2 and message in stderr and not spy, stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_end_image_against_the_checkpoint_before_loading(stubs, tmp_path, capsys, spy):
    """--end-image only with the interpolation checkpoint, which needs it: known from a folder's lvdm_config.json
    or a registry entry's preset, before any weights load."""
    code, stderr = video(capsys, stubs, tmp_path, "--end-image", str(stubs["last"]))
    assert code == 2 and "--end-image needs the interpolation checkpoint (dynamicrafter-512-interp)" in stderr
    code, stderr = video(capsys, stubs, tmp_path, model="interp")
    assert code == 2 and "the interpolation checkpoint needs a last frame: pass --end-image" in stderr, stderr
    code, stderr = video(capsys, stubs, tmp_path, "--end-image", str(stubs["last"]), "--frames", "1", model="interp")
    assert code == 2 and "--frames 1 leaves no room for a first and a last frame" in stderr, stderr
    image = ("--image", str(stubs["first"]))
    code, stderr = video(capsys, stubs, tmp_path, *image, model="dynamicrafter-512-interp")
    assert code == 2 and "pass --end-image" in stderr, stderr
    code, stderr = video(capsys, stubs, tmp_path, *image, "--end-image", str(stubs["last"]), model="dynamicrafter-512")
    assert code == 2 and "--end-image needs the interpolation checkpoint" in stderr, stderr
    assert not spy
    code, stderr = video(capsys, stubs, tmp_path, "--end-image", str(stubs["last"]), model="interp")
    assert code == 2 and "stopped at load_pair" in stderr and len(spy) == 1  # a good interpolation run gets there


def test_text_to_video_options(stubs, tmp_path, capsys, spy):
    code, stderr = video(capsys, stubs, tmp_path, "--image-guidance", "2", model="vc2")
    assert code == 2 and "--image-guidance applies to dual guidance only" in stderr, stderr
    code, stderr = video(capsys, stubs, tmp_path, "--method", "dual-cfg", model="vc2")
    assert code == 2 and "--method dual-cfg does not fit task 'text-to-video'" in stderr, stderr
    code, stderr = video(capsys, stubs, tmp_path, "--frames", "65", model="vc2")
    assert code == 2 and "--frames (got '65')" in stderr, stderr
    assert not spy


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_the_files_beside_out_are_checked_before_loading(stubs, tmp_path, capsys, spy, suffix):
    (tmp_path / f"clash{suffix}").mkdir()
    code, stderr = video(capsys, stubs, tmp_path, out="clash.mp4")
    assert code == 2 and not spy, stderr
    assert f"--out {tmp_path / 'clash.mp4'}: {tmp_path / ('clash' + suffix)}," in stderr and "is a folder" in stderr


def test_offline_reaches_load_pair(stubs, tmp_path, capsys, spy):
    for extra, offline in (((), None), (("--offline",), True)):
        spy.clear()
        code, stderr = video(capsys, stubs, tmp_path, *extra)
        assert code == 2 and "stopped at load_pair" in stderr and spy[0]["offline"] is offline, stderr


@pytest.mark.parametrize(
    ("local_only", "env", "hint"),
    [(False, None, "or check that this machine can reach the hub"), (True, "1", "or unset HF_HUB_OFFLINE"),
     (True, None, "or run without --offline")],
)
def test_a_cache_miss_says_how_to_retry(monkeypatch, local_only, env, hint):
    """`unset HF_HUB_OFFLINE` only when it is set: online, the hub could not be reached; with --offline, drop it."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from priorswap.errors import WeightsUnavailable
    from priorswap.hub import _hub_errors
    from priorswap.registry import Source

    if env is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", env)
    source = Source(repo="org/model", revision="0" * 40)
    with pytest.raises(WeightsUnavailable) as info, _hub_errors(source, local_only, "hf download org/model"):
        raise LocalEntryNotFoundError("not cached")
    message = str(info.value)
    assert "hf download org/model" in message and hint in message
    assert ("HF_HUB_OFFLINE" in message) == (env is not None)


def test_registry_files_reach_the_task_check_and_load_pair(stubs, tmp_path, capsys, spy):
    reg = tmp_path / "mine.yaml"
    reg.write_text(
        "models:\n"
        "  my-dynamicrafter:\n"
        "    plugin: dynamicrafter\n"
        f"    source: {{path: {stubs['dc512']}}}\n"
        "    latent_space: sd-kl-f8\n"
        "    schedule: {beta_schedule: scaled_linear, beta_start: 0.00085, beta_end: 0.012, zero_terminal_snr: true}\n"
        "    parameterization: v_prediction\n"
        "    modality: video\n"
        "    resolution: 512\n"
        "    task: image-to-video\n"
    )
    image = ("--image", str(stubs["first"]))
    code, stderr = video(capsys, stubs, tmp_path, *image, "--registry", str(reg), model="my-dynamicrafter")
    assert code == 2 and "stopped at load_pair" in stderr, stderr
    assert spy[0]["registry_files"] == [str(reg)]
    code, stderr = video(capsys, stubs, tmp_path, *image, model="my-dynamicrafter")  # without it: unknown id
    assert code == 2 and "my-dynamicrafter" in stderr and not spy[1:]
