"""ExtremalPerturbation: a known square, the energy it reports, determinism, batching, state, and TorchRay."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_extremal_perturbation

from attrib.methods.extremal import ExtremalPerturbation
from attrib.perturb.mask_generator import MaskGenerator
from attrib.perturb.pyramid import Perturbation
from attrib.perturb.rewards import area_penalty

from .models import ResidualBNNet, reinitialise
from .reference_extremal import extremal_fade
from .test_state import Tripwire, assert_same, snapshot, untidy

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")  # inside TorchRay's MaskGenerator

FAST = {"max_iter": 6, "step": 3, "sigma": 4.0, "max_blur": 3.0}


class SquareModel(nn.Module):
    """Class 0 is ``gain`` x the mean of channel 0 over a known square; class 1 is 0 (plus a bias)."""

    def __init__(self, top: int, left: int, side: int, gain: float = 100.0) -> None:
        super().__init__()
        self.top, self.left, self.side, self.gain = top, left, side, gain
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x[:, 0, self.top : self.top + self.side, self.left : self.left + self.side]
        score = inside.mean((1, 2)) * self.gain
        return torch.stack([score, torch.zeros_like(score)], 1) + self.bias


def tiny_net(seed: int = 0) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(36, 3)
    )
    return reinitialise(model, seed, scale=1.0).eval()


def images(n: int, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("variant", "perturbation"), [("preserve", "fade"), ("dual", "fade"), ("delete", "blur")])
def test_mask_covers_the_square_the_model_reads_with_about_the_requested_area(variant, perturbation):
    size, top, left, side = 24, 4, 8, 8  # the square is symmetric under the horizontal flips of jitter
    x = torch.full((1, 3, size, size), 0.2)
    x[:, 0, top : top + side, left : left + side] = 1.0
    area = side * side / size**2
    masks = ExtremalPerturbation(SquareModel(top, left, side)).attribute(
        x,
        0,
        areas=[area, 0.3],
        variant=variant,
        perturbation=perturbation,
        max_iter=60,
        step=3,
        sigma=4.0,
        max_blur=4.0,
        learning_rate=0.03,
        regul_growth=1.05,
        seed=0,
    )
    assert masks.shape == (1, 2, size, size)
    assert bool(((masks >= 0) & (masks <= 1)).all())
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[top : top + side, left : left + side] = True
    for k, a in enumerate([area, 0.3]):
        m = masks[0, k]
        assert abs(float(m.mean()) - a) < 0.07  # soft masks: about the requested area
        assert float(m[inside].mean()) > 0.75
        assert float(m[~inside].mean()) < float(m[inside].mean()) / 3
    assert float(masks[0, 0][~inside].mean()) < 0.1


def test_history_holds_the_reward_of_the_returned_masks():
    model, x = tiny_net(), images(2)
    masks, history = ExtremalPerturbation(model).attribute(
        x, [0, 2], areas=[0.2, 0.5], **{**FAST, "max_iter": 5}, jitter=False, regul_growth=1.1, return_history=True
    )
    assert history.shape == (2, 2, 2, 5) and bool((history[:, :, 1] <= 0).all())
    perturbed = Perturbation(x, max_blur=FAST["max_blur"]).apply(masks.unsqueeze(2))
    scores = model(perturbed.flatten(0, 1)).view(2, 2, 3)
    expected = torch.stack([scores[0, :, 0], scores[1, :, 2]])
    torch.testing.assert_close(history[:, :, 0, -1], expected)


@pytest.mark.parametrize(("shape", "step", "sigma"), [((12, 12), 3, 4.0), ((13, 10), 2, 3.5), ((11, 14), 3, 2.0)])
def test_matches_a_float64_reference(shape, step, sigma):
    """Masks and history (reward, area term with margins and tie-averaged pulls) against the formula, step by step."""
    model = tiny_net(5).double()
    x = torch.rand(2, 3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    classes, areas, max_iter = [0, 2], [0.2, 0.4], 6
    ours, history = ExtremalPerturbation(model).attribute(
        x, classes, areas=areas, perturbation="fade", max_iter=max_iter, step=step, sigma=sigma, jitter=False,
        regul_growth=1.1, return_history=True,
    )
    for i, c in enumerate(classes):
        for k, a in enumerate(areas):
            mask, expected = extremal_fade(
                lambda im, c=c: model(im)[0, c], x[i], a, max_iter=max_iter, step=step, sigma=sigma, regul_growth=1.1
            )
            torch.testing.assert_close(ours[i, k], mask, atol=1e-6, rtol=0)  # the generator's weights are float32
            torch.testing.assert_close(history[i, k], expected, atol=1e-4, rtol=1e-6)


class TorchRayArea(ExtremalPerturbation):
    """Measures the area over the padded mask, margins included and counted in the area, as TorchRay does."""

    def _area_pixels(self, masks: MaskGenerator) -> int:
        return math.prod(masks.shape_out)

    def _area_penalty(self, masks, params, region, mask, zeros, margin):  # noqa: ANN001, ANN202 - the override
        return area_penalty(masks.generate(params)[1].flatten(1), zeros)


@pytest.mark.parametrize("variant", ["preserve", "delete", "dual"])
def test_matches_torchray_end_to_end_with_its_area_measure(variant):
    model, x = tiny_net(3), images(1, size=16, seed=3)
    areas, max_iter = [0.1, 0.3], 8
    theirs, their_history = torchray_extremal_perturbation(
        model, x.clone(), 1, areas=areas, max_iter=max_iter, jitter=False, variant=variant
    )
    for p in model.parameters():  # TorchRay leaves them frozen
        p.requires_grad_(True)
    ours, history = TorchRayArea(model).attribute(
        x, 1, areas=areas, max_iter=max_iter, jitter=False, variant=variant, return_history=True
    )
    scale = float(their_history.abs().max())
    assert float((history[0] - their_history).abs().max()) <= 1e-4 * scale
    torch.testing.assert_close(ours[0], theirs[:, 0], atol=1e-5, rtol=1e-4)
    # The default measures the area on the image: the same first step, then a different (smaller) pull.
    _, own = ExtremalPerturbation(model).attribute(
        x, 1, areas=areas, max_iter=2, jitter=False, variant=variant, return_history=True
    )
    torch.testing.assert_close(own[0, :, 0, 0], their_history[:, 0, 0])
    assert not torch.allclose(own[0, :, 1, 0], their_history[:, 1, 0])


@settings(max_examples=2)
@given(seed=st.integers(0, 2**16), variant=st.sampled_from(["preserve", "dual"]))
def test_same_seed_same_masks_and_global_rng_untouched(seed, variant):
    model, x = tiny_net(), images(2, seed=seed)
    method = ExtremalPerturbation(model)
    state = torch.get_rng_state()
    first = method.attribute(x, areas=[0.2], variant=variant, seed=seed, **FAST)
    again = method.attribute(x, areas=[0.2], variant=variant, generator=torch.Generator().manual_seed(seed), **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first, again, atol=0, rtol=0)


@settings(max_examples=3)
@given(batch_size=st.sampled_from([1, 3, 5, "auto"]), variant=st.sampled_from(["delete", "dual"]))
def test_results_do_not_depend_on_batch_size(batch_size, variant):
    model, x = tiny_net(1), images(2, seed=1)
    options = {"areas": [0.1, 0.4], "variant": variant, "seed": 7, "return_history": True, **FAST}
    whole, whole_history = ExtremalPerturbation(model).attribute(x, [1, 0], **options)
    blocks, block_history = ExtremalPerturbation(model).attribute(x, [1, 0], batch_size=batch_size, **options)
    torch.testing.assert_close(blocks, whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(block_history, whole_history, atol=1e-4, rtol=1e-4)


def test_batch_equivariance_and_several_targets_per_image():
    model, x = tiny_net(2), images(2, seed=2)
    options = {"areas": [0.15, 0.3], "jitter": False, **FAST}
    method = ExtremalPerturbation(model)
    together = method.attribute(x, [0, 1], **options)
    for i, c in enumerate([0, 1]):
        torch.testing.assert_close(together[i : i + 1], method.attribute(x[i : i + 1], c, **options))
    targets = torch.tensor([[0, 2], [1, 0]])
    per_target = method.attribute(x, targets, **options)
    assert per_target.shape == (2, 2, 2, 12, 12)
    for k in range(2):
        torch.testing.assert_close(per_target[:, k], method.attribute(x, targets[:, k], **options))


def test_rewards_targets_and_perturbations_plug_in():
    model, x = tiny_net(4), images(2, seed=4)
    method = ExtremalPerturbation(model)
    by_callable = method.attribute(x, lambda out: out[:, 1] - out[:, 0], jitter=False, **FAST)
    by_reward = method.attribute(x, 1, reward=lambda out, classes: out[:, 1] - out[:, 0], jitter=False, **FAST)
    torch.testing.assert_close(by_callable, by_reward)
    contrastive = method.attribute(x, 2, reward="contrastive", seed=0, **FAST)
    assert contrastive.shape == (2, 1, 12, 12) and bool(((contrastive >= 0) & (contrastive <= 1)).all())
    to_zeros = method.attribute(x, 0, perturbation=torch.zeros(()), jitter=False, **FAST)
    torch.testing.assert_close(to_zeros, method.attribute(x, 0, perturbation="fade", jitter=False, **FAST))
    shown = method.attribute(x, 0, progress=True, jitter=False, **FAST)  # not a terminal: the bar stays quiet
    torch.testing.assert_close(shown, method.attribute(x, 0, jitter=False, **FAST))
    gains = torch.tensor([1.0, -2.0])
    with_args = ExtremalPerturbation(Scaled(model)).attribute(x, 0, additional_forward_args=gains, jitter=False, **FAST)
    torch.testing.assert_close(with_args[0], shown[0])  # a gain of 1 leaves the first image's problem unchanged


class Scaled(nn.Module):
    """``inner(x)`` times a per-example gain passed as an extra forward argument."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * gain.view(-1, 1)


class NoParameterGrads(nn.Module):
    """Checks, on every call, that no parameter requires grad while the input does."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((any(p.requires_grad for p in self.parameters()), x.requires_grad))
        return self.inner(x)


@pytest.mark.parametrize("fail_at", [0, 1, 4])
def test_state_restored_and_parameters_never_require_grad(fail_at):
    inner = ResidualBNNet(seed=fail_at)
    model = NoParameterGrads(nn.Sequential(Tripwire(fail_at), inner))
    untidy(model, fail_at)
    x = images(2, size=8, seed=fail_at)
    before = snapshot(model, (x,))
    try:
        ExtremalPerturbation(model).attribute(x, 1, areas=[0.2, 0.4], variant="dual", seed=0, batch_size=3, **FAST)
    except RuntimeError as err:
        assert "injected failure" in str(err) and fail_at
    else:
        assert not fail_at
        assert model.seen and all(not params and grad for params, grad in model.seen)
    assert_same(before, snapshot(model, (x,)))


def test_bad_arguments_are_named():
    method, x = ExtremalPerturbation(tiny_net()), images(1)
    with pytest.raises(ValueError, match="areas"):
        method.attribute(x, 0, areas=[0.0])
    with pytest.raises(ValueError, match="areas"):
        method.attribute(x, 0, areas=[])
    with pytest.raises(ValueError, match="variant"):
        method.attribute(x, 0, variant="both")
    with pytest.raises(ValueError, match="max_iter"):
        method.attribute(x, 0, max_iter=0)
    with pytest.raises(ValueError, match="momentum"):
        method.attribute(x, 0, momentum=1.0)
    with pytest.raises(ValueError, match="reward"):
        method.attribute(x, 0, reward="largest")
    with pytest.raises(ValueError, match="class-index"):
        method.attribute(x, lambda out: out[:, 0], reward="contrastive", **FAST)
    with pytest.raises(ValueError, match="one score per row"):
        method.attribute(x, 0, reward=lambda out, classes: out, **FAST)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        method.attribute(x[0], 0)
    with pytest.raises(ValueError, match="batch_size"):
        method.attribute(x, 0, batch_size=0)
