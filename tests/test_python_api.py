"""The Python API's contract on the toy zoo: the initial noise, bad arguments, read-only routes, records."""

import pytest
import torch

import priorswap
from priorswap import PriorswapError, load_pair


@pytest.fixture(scope="module")
def pair():
    return load_pair("toy-digits-class", prior="toy-digits-base")


def test_the_seed_route_is_the_documented_randn_and_noise_can_be_given(pair):
    seeded = pair.sample(class_label=[3, 7], steps=3, seed=5, decode=False)
    noise = torch.randn(seeded.latents.shape, generator=torch.Generator().manual_seed(5))
    given = pair.sample(class_label=[3, 7], steps=3, seed=5, decode=False, noise=noise)
    torch.testing.assert_close(given.latents, seeded.latents, rtol=0, atol=0)
    assert (seeded.record["noise"], given.record["noise"]) == ("seed", "given")
    other = pair.sample(class_label=[3, 7], steps=3, seed=5, decode=False, noise=torch.zeros_like(noise))
    assert not torch.equal(other.latents, seeded.latents)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": None}, "seed must be one whole number"),
        ({"seed": [1, 2]}, "call sample once per seed"),
        ({"seed": -1}, "from 0 to 2**63"),
        ({"seed": True}, "seed must be one whole number"),
        ({"num_samples": 1.5}, "num_samples must be a whole number"),
        ({"noise": torch.zeros(1, 1, 8, 8)}, "noise must be a tensor of shape (1, 1, 16, 16)"),
        ({"noise": [0.0]}, "got list"),
        ({"guidance": 2.0}, "the scale γ is scale=: pair.sample(..., scale=2.0)"),
        ({"class_label": [207]}, "bad input for task 'toy-class': class_label[0] = 207: Input should be less than 10"),
        ({"classs": 1}, "classs = 1: Extra inputs are not permitted (its inputs: class_label)"),
        ({"scale": "1.5"}, "the guidance scale must be a number, got '1.5'"),
        ({"eta": "0.5"}, "eta (DDIM stochasticity) must be a number, got '0.5'"),
        ({"autocast": "fp32"}, "autocast takes torch.float16 ('fp16'), torch.bfloat16 ('bf16'), got 'fp32'"),
        ({"guidance": {"method": "cfg"}}, "guidance must be a method name (cfg, prior-swap"),
        ({"callback": 5}, "callback must be a function taking a StepInfo, got 5"),
        ({"guidance": priorswap.guidance.cfg(4.0), "scale": 1.0}, "a Guidance object carries its own weights"),
        ({"guidance": priorswap.guidance.dual_cfg(1.5, 7.5)},
         "uses the model's 'partial' prediction, but the task 'toy-class' has the levels full, null"),
        ({"guidance_scale": 7.5, "num_inference_steps": 5},
         "sampling options are spelled otherwise: guidance_scale= → scale=, num_inference_steps= → steps="),
    ],
)
def test_bad_sample_arguments_are_priorswap_errors(pair, kwargs, message):
    with pytest.raises(PriorswapError) as info:
        pair.sample(**{"class_label": [3], "steps": 2, "decode": False, **kwargs})
    assert message in str(info.value)


def test_bad_task_inputs_are_value_errors_caused_by_pydantic(pair):
    from pydantic import ValidationError

    from priorswap.errors import TaskInputError

    with pytest.raises(ValueError) as info:  # code that caught pydantic's ValueError still does
        pair.inputs(class_label=[])
    assert isinstance(info.value, TaskInputError) and isinstance(info.value.__cause__, ValidationError)


def test_a_model_as_its_own_prior_in_another_dtype_is_a_second_copy():
    shared = load_pair("toy-digits-class", prior="toy-digits-class")
    assert shared.prior.denoiser is shared.model.denoiser
    two = load_pair("toy-digits-class", prior="toy-digits-class", prior_dtype=torch.float64)
    assert (two.model.denoiser.dtype, two.prior.denoiser.dtype) == (torch.float32, torch.float64)
    result = two.sample(class_label=[3], steps=2, decode=False)
    assert result.forward_calls == {"model": 2, "prior": 2}


def test_routes_are_read_only_and_denoiser_objects_are_pointed_to_the_sampler(pair):
    with pytest.raises(TypeError):
        pair.routes["prior"] = pair.routes["model"]
    with pytest.raises(PriorswapError, match="give them to priorswap.Sampler"):
        load_pair(pair.model.denoiser)


def test_a_prior_method_without_a_prior_names_both_ways_to_give_one():
    alone = load_pair("toy-digits-class")
    with pytest.raises(PriorswapError, match=r"--prior on the command line, prior= in load_pair"):
        alone.sample(class_label=[3], steps=2, guidance="prior-swap")


def test_the_record_names_the_plugin_that_provides_each_family(pair):
    record = pair.sample(class_label=[1], steps=2, decode=False).record
    assert record["model"]["plugin"] == {"family": "toy", "plugin": "toy", "package": "priorswap",
                                         "version": priorswap.__version__}
    assert record["prior"]["plugin"]["family"] == "toy"


def test_a_task_whose_decode_takes_inputs_gets_them(pair):
    seen = []

    class Marking(type(pair.task)):
        def decode(self, latents, inputs):
            seen.append(inputs.class_label)
            return super().decode(latents)

    marking = load_pair("toy-digits-class", prior="toy-digits-base")
    marking.task = Marking(marking.model.denoiser, marking.model.folder)
    result = marking.sample(class_label=[4, 2], steps=2)
    assert seen == [[4, 2]] and result.images.shape[0] == 2


def test_a_local_folder_pairs_like_its_registry_id(pair):
    from pathlib import Path

    import priorswap.plugins.toy as toy

    folder = Path(toy.__file__).parent / "weights" / "toy-digits-class"
    local = load_pair(folder, prior="toy-digits-base")  # a Path, described from its files: inline latent space
    assert local.plan.adapters == [] and pair.plan.adapters == []
    a = local.sample(class_label=[3], steps=4, seed=1, decode=False).latents
    b = pair.sample(class_label=[3], steps=4, seed=1, decode=False).latents
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_record_of_given_noise_redoes_only_with_that_noise(pair):
    from priorswap.provenance import sample_arguments

    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    first = pair.sample(class_label=[5], steps=3, decode=False, noise=noise)
    with pytest.raises(PriorswapError, match="pass the same tensor"):
        sample_arguments(first.record)
    again = pair.sample(**sample_arguments(first.record, noise=noise), decode=False)
    torch.testing.assert_close(again.latents, first.latents, rtol=0, atol=0)


def test_the_adapter_ablation_drops_the_timestep_and_output_adapters_only(tmp_path):
    """adapters=False feeds the prior the model's raw timestep and reads its output as the model's
    parameterization; a latent-space map the prior's input needs stays."""
    (tmp_path / "scaled.yaml").write_text(
        "latent_spaces:\n"
        "  toy-pixels-x2: {channels: 1, scale: 2.0, shift: 0.0, downsample: 1, family: toy-pixels}\n"
        "models:\n"
        "  toy-base-x2:\n"
        "    plugin: toy\n"
        "    roles: [prior]\n"
        "    source: {package: priorswap.plugins.toy, path: weights/toy-digits-base}\n"
        "    latent_space: toy-pixels-x2\n"
        "    schedule: {beta_schedule: linear, beta_start: 0.0001, beta_end: 0.02, num_train_timesteps: 1000}\n"
        "    resolution: 16\n"
    )
    files = [str(tmp_path / "scaled.yaml")]
    adapted = load_pair("toy-digits-class", prior="toy-base-x2", registry_files=files)
    naive = load_pair("toy-digits-class", prior="toy-base-x2", registry_files=files, adapters=False)
    assert [a.name for a in adapted.routes["prior"].adapters] == ["latent-affine"]
    assert [a.name for a in naive.routes["prior"].adapters] == ["latent-affine"]
    assert naive.routes["prior"].match == "same" and naive.routes["prior"].naive_as == "epsilon"


def test_a_stochastic_native_scheduler_follows_the_seed():
    """The toy models train with DDPM, a scheduler whose step draws noise: `scheduler="native"` ignored the seed
    (two runs of seed 0 differed by up to 1.77); it now draws from the seeded generator, as the pipelines do."""
    pair = priorswap.load_pair("toy-digits-class")
    assert type(priorswap.api.make_scheduler("native", pair.model.denoiser.scheduler_config)).__name__ == \
        "DDPMScheduler"
    runs = [pair.sample(class_label=[3], scheduler="native", steps=4, seed=s, decode=False).latents for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_guidance_objects_are_checked_against_the_pair_before_sampling():
    solo = load_pair("toy-digits-class")
    with pytest.raises(PriorswapError, match="guidance 'prior-swap' needs a prior: load the pair with one"):
        solo.sample(class_label=[3], guidance=priorswap.guidance.prior_swap(2.0), steps=2,
                    callback=lambda info: pytest.fail("sampled"))
    for role, level in (("modle", "full"), ("model", "ful")):
        with pytest.raises(PriorswapError, match="a guidance term's (role|level) is one of"):
            priorswap.guidance.Term(2.0, role, level)


def test_guidance_options_are_checked_and_an_interval_can_be_removed():
    from priorswap.errors import GuidanceError

    windowed = priorswap.guidance.cfg(3.0).with_options(interval=[0.5, 2.0])
    assert windowed.interval == (0.5, 2.0)
    assert windowed.with_options(rescale=0.5).interval == (0.5, 2.0)  # not given: kept
    assert windowed.with_options(interval=None).interval is None  # None: removed
    for bad in ((0.1, 0.2, 0.3), (-1.0, 0.5), (2.0, 1.0), ("0", "1"), 5):
        with pytest.raises(GuidanceError, match="interval must be"):
            priorswap.guidance.cfg(3.0).with_options(interval=bad)
    with pytest.raises(GuidanceError, match="rescale must be a number in"):
        priorswap.guidance.cfg(3.0).with_options(rescale="0.7")


def test_keywords_update_a_task_inputs_object(pair):
    three = pair.inputs(class_label=[3])
    assert pair.inputs(three) is three
    assert pair.inputs(three, class_label=[7]).class_label == [7]
    run = pair.sample(three, class_label=[7], steps=2, decode=False)
    assert run.record["inputs"] == {"class_label": [7]}
    with pytest.raises(PriorswapError, match="task inputs come as keywords, a dict or pair.inputs"):
        pair.sample([3], steps=2)


def test_dtypes_by_name_and_refused_dtypes(pair):
    half = load_pair("toy-digits-class", prior="toy-digits-base", dtype="fp16", prior_dtype="bfloat16")
    assert (half.model.denoiser.dtype, half.prior.denoiser.dtype) == (torch.float16, torch.bfloat16)
    record = half.sample(class_label=[3], steps=2, decode=False).record
    assert (record["model"]["dtype"], record["prior"]["dtype"]) == ("float16", "bfloat16")
    with pytest.raises(PriorswapError, match=r"dtype takes torch.float32 \('fp32'\).*got torch.int64"):
        load_pair("toy-digits-class", dtype=torch.int64)
    by_name = pair.sample(class_label=[3], steps=2, decode=False, autocast="bf16")
    by_dtype = pair.sample(class_label=[3], steps=2, decode=False, autocast=torch.bfloat16)
    assert torch.equal(by_name.latents, by_dtype.latents) and by_name.record["autocast"] == "bfloat16"


def test_a_model_as_its_own_prior_in_its_own_dtype_is_shared():
    same = load_pair("toy-digits-class", prior="toy-digits-class", prior_dtype=torch.float32)
    assert same.prior.denoiser is same.model.denoiser


def test_a_loaded_pair_keeps_its_matching_and_adapters(pair):
    for name, value in (("match", "nearest"), ("adapters", False), ("prior", None)):
        with pytest.raises(PriorswapError, match=f"Pair.{name} is fixed when the pair loads"):
            setattr(pair, name, value)
    assert pair.match == "continuous" and pair.adapters and pair.prior is not None


def test_given_noise_is_the_seed_s_noise_at_any_eta(pair):
    seeded = pair.sample(class_label=[3], steps=4, seed=3, eta=1.0, decode=False)
    noise = torch.randn(seeded.latents.shape, generator=torch.Generator().manual_seed(3))
    given = pair.sample(class_label=[3], steps=4, seed=3, eta=1.0, decode=False, noise=noise)
    torch.testing.assert_close(given.latents, seeded.latents, rtol=0, atol=0)


def test_a_record_of_several_seeds_redoes_the_one_chosen(pair):
    from priorswap.provenance import sample_arguments

    record = {**pair.sample(class_label=[3], steps=2, seed=5, decode=False).record, "seed": [5, 6]}
    with pytest.raises(PriorswapError, match=r"holds 2 runs, seeds 5, 6: choose one, sample_arguments\(record, "
                                             r"seed=5\)"):
        sample_arguments(record)
    with pytest.raises(PriorswapError, match="seed 7 is not one this record was made with"):
        sample_arguments(record, seed=7)
    assert sample_arguments(record, seed=6)["seed"] == 6


def test_a_tensor_in_a_bad_input_is_named_by_its_shape_not_printed():
    edit = load_pair("toy-digits-edit")
    with pytest.raises(PriorswapError) as info:
        edit.sample(image=[torch.zeros(3, 16, 16)], instruction="rotate", steps=2)
    message = str(info.value)
    assert "image[0] = Tensor of shape (3, 16, 16), torch.float32: Input is not a valid path" in message
    assert "tensor(" not in message and len(message) < 300, message


def test_load_denoiser_loads_one_network_in_its_role(pair):
    base = priorswap.load_denoiser("toy-digits-base", dtype="float64")
    assert type(base) is type(pair.prior.denoiser) and base.dtype == torch.float64
    for name, p in pair.prior.denoiser.net.state_dict().items():
        assert torch.equal(base.net.state_dict()[name], p.double()), name
    from priorswap.errors import RegistryError

    with pytest.raises(RegistryError, match="'toy-digits-view' cannot be used as a prior"):
        priorswap.load_denoiser("toy-digits-view")
    assert priorswap.load_denoiser("toy-digits-view", role="model").resolution == 16
    with pytest.raises(PriorswapError, match="role must be 'model' or 'prior', got 'teacher'"):
        priorswap.load_denoiser("toy-digits-base", role="teacher")


def test_a_sampler_names_a_missing_route_or_condition_before_running(pair):
    from priorswap import Route, Sampler
    from priorswap.api import make_scheduler
    from priorswap.errors import GuidanceError

    model = pair.model.denoiser
    sched = make_scheduler("ddim", model.scheduler_config)
    full = {("model", "full"): pair.task.conditions(pair.inputs(class_label=[3]), model)["full"]}
    with pytest.raises(GuidanceError, match=r"uses the model's 'null' prediction, but conditions has no "
                                            r"\('model', 'null'\)"):
        Sampler({"model": Route(model)}, full, priorswap.cfg(2.0), sched)
    with pytest.raises(GuidanceError, match="needs a prior but routes has none"):
        Sampler({"model": Route(model)}, full, priorswap.prior_swap(2.0), sched)
    with pytest.raises(GuidanceError, match="routes needs the model's"):
        Sampler({"prior": Route(model)}, full, priorswap.cfg(2.0), sched)
