"""What networks compute from their condition alone is computed once per sampling run, and reusing it
changes nothing in the result."""

import copy

import pytest
import torch

import priorswap
from priorswap.condition_reuse import cross_attention_projections, install, reusing


class Counting(torch.nn.Linear):
    """A Linear that counts the inputs it really computed on."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return Counting(6, 5)


def test_an_equal_input_reuses_the_output_inside_the_block_only(layer):
    x = torch.randn(2, 3, 6)
    with torch.no_grad():
        plain = layer(x)
        with reusing([layer]):
            first = layer(x)
            again = layer(x.clone())  # another tensor with equal values
            assert layer.calls == 2
            other = layer(x + 1)
            assert layer.calls == 3 and not torch.equal(other, first)
        assert torch.equal(first, plain) and torch.equal(again, plain)
        layer(x)
        assert layer.calls == 4  # outside the block every call computes
        assert "_priorswap_memos" not in layer.__dict__  # and nothing stays stored


def test_an_input_modified_in_place_is_computed_again(layer):
    x = torch.randn(1, 3, 6)
    with torch.no_grad(), reusing([layer]):
        before = layer(x)
        x.add_(1.0)
        after = layer(x)
    assert layer.calls == 2
    assert not torch.equal(before, after)
    assert torch.allclose(after, torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_a_broadcast_input_is_projected_once_and_broadcast_back(layer):
    row = torch.randn(1, 3, 6)
    with torch.no_grad():
        full = torch.nn.functional.linear(row.repeat(4, 1, 1), layer.weight, layer.bias)
        with reusing([layer]):
            out = layer(row.expand(4, 3, 6))
            out8 = layer(row.expand(8, 3, 6))
    assert layer.calls == 1
    assert out.shape == (4, 3, 5) and out8.shape == (8, 3, 5)
    torch.testing.assert_close(out, full)


def test_two_alternating_inputs_both_stay_reused(layer):
    a, b = torch.randn(1, 2, 6), torch.randn(1, 2, 6)
    with torch.no_grad(), reusing([layer]):
        for _ in range(3):
            layer(a)
            layer(b)
    assert layer.calls == 2


def test_with_gradients_or_outside_the_chosen_modules_nothing_is_reused(layer):
    other = Counting(6, 5)
    x = torch.randn(1, 2, 6)
    with reusing([layer]):
        layer(x)
        layer(x)  # gradients on: a stored output would cut the graph
        with torch.no_grad():
            other(x)
            other(x)
    assert layer.calls == 2 and other.calls == 2


def test_install_keeps_an_instance_forward_and_survives_deepcopy(layer):
    seen = []
    original = layer.forward

    def hooked(x):  # as accelerate's offload hooks replace forward on the instance
        seen.append(1)
        return original(x)

    layer.forward = hooked
    install(layer)
    install(layer)  # idempotent
    x = torch.randn(1, 2, 6)
    with torch.no_grad(), reusing([layer]):
        layer(x)
        layer(x)
    assert seen == [1] and layer.calls == 1
    twin = copy.deepcopy(Counting(6, 5))
    install(twin)
    clone = copy.deepcopy(twin)
    with torch.no_grad(), reusing([clone]):
        clone(x)
    assert clone.calls == 1 and twin.calls == 0  # the copy runs its own weights


def count_calls(denoiser) -> list[torch.nn.Module]:
    """The denoiser's condition modules, each counting in `.calls` the inputs it really computed on."""
    modules = denoiser.condition_modules()
    for module in modules:
        module.calls = 0
        base = module.forward

        def counted(x, base=base, module=module):
            module.calls += 1
            return base(x)

        module.forward = counted
    return modules


def test_a_run_projects_the_priors_null_condition_once(dit_folder, sd_folder):
    pair = priorswap.load_pair(str(dit_folder), prior=str(sd_folder))
    prior = pair.prior.denoiser
    modules = count_calls(prior)
    assert len(modules) == 2 * sum(1 for m in prior.net.modules() if getattr(m, "is_cross_attention", False)) > 0
    reused = pair.sample(class_label=[2, 5, 7], guidance="prior-swap", scale=2.0, steps=5, seed=0, decode=False)
    assert [m.calls for m in modules] == [1] * len(modules)  # 5 steps of 3 samples, one projection of one row

    plain = priorswap.load_pair(str(dit_folder), prior=str(sd_folder))
    modules = count_calls(plain.prior.denoiser)
    plain.prior.denoiser.condition_modules = list  # reuse off: every step projects again
    again = plain.sample(class_label=[2, 5, 7], guidance="prior-swap", scale=2.0, steps=5, seed=0, decode=False)
    assert [m.calls for m in modules] == [5] * len(modules)
    torch.testing.assert_close(reused.latents, again.latents, rtol=0, atol=1e-6)


def test_dual_cfg_reuses_the_models_concatenated_conditions(tmp_path):
    from test_instruct_pix2pix import make_ip2p_folder, write_png

    folder = make_ip2p_folder(tmp_path / "model")
    image = write_png(tmp_path / "in.png", 16, 16, seed=0)
    args = dict(image=image, prompt="a cat", guidance="dual-cfg", scale=3.0, image_scale=1.5, steps=4, seed=0,
                decode=False)
    pair = priorswap.load_pair(str(folder))
    modules = count_calls(pair.model.denoiser)
    reused = pair.sample(**args)
    assert modules and [m.calls for m in modules] == [1] * len(modules)  # three branches, one batched context

    plain = priorswap.load_pair(str(folder))
    plain.model.denoiser.condition_modules = list
    torch.testing.assert_close(reused.latents, plain.sample(**args).latents, rtol=0, atol=1e-6)


def test_later_steps_recognise_the_conditions_without_comparing_values(dit_folder, sd_folder, monkeypatch):
    """The engine builds each route's concatenated conditions once per run, so reuse finds them by identity:
    comparing values (`torch.equal`) waits for the device on a GPU, once per projection and step."""
    pair = priorswap.load_pair(str(dit_folder), prior=str(sd_folder))
    compared = []
    equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda a, b: compared.append(a.shape) or equal(a, b))
    for guidance in ("cfg", "prior-swap"):
        pair.sample(class_label=[2, 5], guidance=guidance, scale=2.0, steps=4, seed=0, decode=False)
    assert compared == []


def test_pixart_also_reuses_its_caption_projection(tmp_path, dit_folder):
    from test_pixart import make_pixart_folder

    pixart = make_pixart_folder(tmp_path / "pixart")
    pair = priorswap.load_pair(str(dit_folder), prior=str(pixart))
    prior = pair.prior.denoiser
    modules = count_calls(prior)
    assert prior.net.caption_projection in modules
    pair.sample(class_label=[1, 3], guidance="prior-swap", steps=3, seed=0, decode=False)
    assert [m.calls for m in modules] == [1] * len(modules)


def test_cross_attention_projections_of_no_net_is_empty():
    assert cross_attention_projections(None) == []
