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
