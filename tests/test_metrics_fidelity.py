"""Infidelity and SensitivityMax against Captum; CompletenessGap against the scores it should explain."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import Saliency as CaptumSaliency
from captum.metrics import infidelity, sensitivity_max
from hypothesis import given, settings
from hypothesis import strategies as st

import attrib
from attrib.metrics.completeness import CompletenessGap
from attrib.metrics.infidelity import Infidelity
from attrib.metrics.sensitivity import SensitivityMax

from .models import SmoothNet, TwoInputNet, build, inputs_for, specs

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning")


def gaussian_perturbation(seed: int, stdev: float = 0.1):
    """Captum's perturb_func contract, drawing from its own seeded generator (uniform draws, block-invariant)."""
    g = torch.Generator().manual_seed(seed)

    def perturb(inputs):
        if isinstance(inputs, tuple):
            noise = tuple(stdev * (2 * torch.rand(t.shape, generator=g, dtype=t.dtype) - 1) for t in inputs)
            return noise, tuple(t - e for t, e in zip(inputs, noise))
        noise = stdev * (2 * torch.rand(inputs.shape, generator=g, dtype=inputs.dtype) - 1)
        return noise, inputs - noise

    return perturb


def assert_close_rel(ours, theirs, rtol=1e-5):
    scale = float(theirs.abs().max()) if theirs.numel() else 0.0
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=rtol, atol=rtol * max(scale, 1e-12))


@settings(max_examples=6)
@given(spec=specs(), n=st.integers(1, 4), samples=st.integers(1, 6), normalize=st.booleans(), seed=st.integers(0, 99))
def test_infidelity_matches_captum(spec, n, samples, normalize, seed):
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed)
    target = torch.arange(n) % spec.classes
    maps = attrib.Saliency(model).attribute(x, target, abs=False)
    ours = Infidelity(
        model, x, target, perturb_fn=gaussian_perturbation(seed), n_perturb_samples=samples, normalize=normalize
    )(maps)
    theirs = infidelity(
        model,
        gaussian_perturbation(seed),
        x.clone(),
        maps,
        target=target,
        n_perturb_samples=samples,
        normalize=normalize,
    )
    assert_close_rel(ours, theirs)


def test_infidelity_matches_captum_with_tuple_inputs_baselines_and_forward_args():
    model = TwoInputNet()
    image, vector = inputs_for((2, 4, 4), 3, 0), inputs_for((4,), 3, 1)
    gain = torch.tensor([1.0, 2.0, 0.5])
    target = torch.tensor([0, 2, 1])
    maps = attrib.InputXGradient(model).attribute((image, vector), target, additional_forward_args=gain)
    baselines = (torch.full_like(image, 0.1), torch.zeros_like(vector))

    def perturb_with_baselines(seed):
        g = torch.Generator().manual_seed(seed)

        def perturb(inputs, bases):
            noise = tuple(0.2 * torch.rand(t.shape, generator=g) * (t - b) for t, b in zip(inputs, bases))
            return noise, tuple(t - e for t, e in zip(inputs, noise))

        return perturb

    ours = Infidelity(
        model,
        (image, vector),
        target,
        perturb_fn=perturb_with_baselines(5),
        n_perturb_samples=4,
        baselines=baselines,
        additional_forward_args=gain,
    )(maps)
    theirs = infidelity(
        model,
        perturb_with_baselines(5),
        (image, vector),
        maps,
        baselines=baselines,
        additional_forward_args=gain,
        target=target,
        n_perturb_samples=4,
    )
    assert_close_rel(ours, theirs)


def test_infidelity_is_zero_for_the_exact_explanation_of_a_linear_model():
    # For f(x) = w.x + b and A = w, A.I = f(x) - f(x - I) exactly.
    linear = torch.nn.Linear(6, 1)
    x = inputs_for((6,), 4, 0)
    maps = linear.weight.detach().expand(4, 6)
    scores = Infidelity(linear, x, 0, perturb_fn=gaussian_perturbation(0), n_perturb_samples=5)(maps)
    assert float(scores.abs().max()) < 1e-10


def test_infidelity_independent_of_batch_size_and_nan_safe():
    model = SmoothNet()
    x = inputs_for((6,), 5, 0)
    maps = attrib.Saliency(model).attribute(x, 1, abs=False)
    results = [
        Infidelity(model, x, 1, perturb_fn=gaussian_perturbation(3), n_perturb_samples=7, batch_size=b)(maps)
        for b in (None, 1, 6, "auto")
    ]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-6, atol=1e-9)
    maps[2, 0] = float("nan")
    scores = Infidelity(model, x, 1, perturb_fn=gaussian_perturbation(3), n_perturb_samples=7)(maps)
    assert math.isnan(float(scores[2])) and bool(torch.isfinite(scores[[0, 1, 3, 4]]).all())


class FailOnBigBlocks(torch.nn.Module):
    """Raises an out-of-memory error on blocks of more than ``limit`` rows (to exercise batch_size="auto")."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.inner(x)


def test_infidelity_auto_batch_size_recovers_from_out_of_memory():
    # Each block's projections A.I must be kept exactly once, also for a block retried smaller.
    model = SmoothNet()
    x = inputs_for((6,), 5, 0)
    maps = attrib.Saliency(model).attribute(x, 1, abs=False)

    def shrink(inputs):  # deterministic, so that retried blocks perturb exactly as the first try
        return 0.1 * inputs, 0.9 * inputs

    expected = Infidelity(model, x, 1, perturb_fn=shrink, n_perturb_samples=7)(maps)
    auto = Infidelity(FailOnBigBlocks(model, 6), x, 1, perturb_fn=shrink, n_perturb_samples=7, batch_size="auto")
    torch.testing.assert_close(auto(maps), expected, rtol=1e-6, atol=1e-9)


@settings(max_examples=8)
@given(n=st.integers(1, 4), samples=st.integers(1, 6), seed=st.integers(0, 99), norm=st.sampled_from(["fro", 1, 3]))
def test_sensitivity_max_matches_captum(n, samples, seed, norm):
    model = SmoothNet(seed=seed)
    x = inputs_for((6,), n, seed)
    target = torch.arange(n) % 3
    ours = SensitivityMax(
        attrib.Saliency(model), x, target, n_perturb_samples=samples, perturb_radius=0.1, norm_ord=norm, seed=seed
    )()
    with torch.random.fork_rng(devices=[]):  # Captum draws its noise from the global RNG
        torch.manual_seed(seed)
        theirs = sensitivity_max(
            CaptumSaliency(model).attribute,
            x.clone(),
            target=target,
            n_perturb_samples=samples,
            perturb_radius=0.1,
            norm_ord=norm,
        )
    assert_close_rel(ours, theirs)


def test_sensitivity_max_matches_captum_with_method_options():
    model = SmoothNet(seed=4)
    x = inputs_for((6,), 3, 4)
    ours = SensitivityMax(
        attrib.IntegratedGradients(model),
        x,
        2,
        n_perturb_samples=4,
        seed=7,
        attribute_options={"n_steps": 8, "method": "riemann_right"},
    )()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        theirs = sensitivity_max(
            CaptumIntegratedGradients(model).attribute,
            x.clone(),
            target=2,
            n_perturb_samples=4,
            n_steps=8,
            method="riemann_right",
        )
    assert_close_rel(ours, theirs)


def test_sensitivity_max_matches_captum_with_per_example_baselines_and_forward_args():
    model = TwoInputNet()
    image, vector = inputs_for((2, 4, 4), 3, 0), inputs_for((4,), 3, 1)
    gain = torch.tensor([1.0, 2.0, 0.5])
    baselines = (inputs_for((2, 4, 4), 3, 2), torch.zeros(1, 4))  # per example for the image, shared for the vector
    target = torch.tensor([0, 2, 1])
    options = {"baselines": baselines, "additional_forward_args": gain, "n_steps": 4}
    ours = SensitivityMax(
        attrib.IntegratedGradients(model),
        (image, vector),
        target,
        n_perturb_samples=3,
        seed=2,
        attribute_options=options,
    )()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        theirs = sensitivity_max(
            CaptumIntegratedGradients(model).attribute,
            (image.clone(), vector.clone()),
            target=target,
            n_perturb_samples=3,
            baselines=baselines,
            additional_forward_args=gain,
            n_steps=4,
        )
    assert_close_rel(ours, theirs)


def test_sensitivity_max_batch_size_seed_and_global_rng():
    model = SmoothNet()
    x = inputs_for((6,), 4, 0)
    method = attrib.Saliency(model)
    rng = torch.get_rng_state()
    results = [SensitivityMax(method, x, 0, n_perturb_samples=6, seed=1, batch_size=b)() for b in (None, 1, 5)]
    assert torch.equal(torch.get_rng_state(), rng)
    for r in results[1:]:
        torch.testing.assert_close(r, results[0])
    assert not torch.equal(results[0], SensitivityMax(method, x, 0, n_perturb_samples=6, seed=2)())
    again = SensitivityMax(method, x, 0, n_perturb_samples=6, seed=1)
    assert torch.equal(again(), again())  # a seed gives the same noise on every call
    # Given maps are used as the clean explanation: the method's own maps give the same numbers.
    maps = method.attribute(x, 0)
    torch.testing.assert_close(SensitivityMax(method, x, 0, n_perturb_samples=6, seed=1)(maps), results[0])
    assert SensitivityMax.higher_is_better is False


def test_sensitivity_max_image_inputs_independent_of_batch_size():
    # Rows of 48 values: the seeded uniform stream must not depend on how the rows are split into blocks.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3))
    x = inputs_for((3, 4, 4), 3, 0)
    method = attrib.Saliency(model)
    results = [SensitivityMax(method, x, 2, n_perturb_samples=5, seed=1, batch_size=b)() for b in (None, 1, 4, "auto")]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0])


def test_sensitivity_zero_radius_is_zero_and_custom_perturbation():
    model = SmoothNet()
    x = inputs_for((6,), 3, 0)
    method = attrib.Saliency(model)
    # Only rounding remains (the method sees different row blocks).
    assert float(SensitivityMax(method, x, 0, perturb_radius=0.0, seed=0)().abs().max()) < 1e-6

    def shift(rows, generator):
        return tuple(r + 0.5 for r in rows)

    maps = method.attribute(x, 0)
    expected = (method.attribute(x + 0.5, 0) - maps).norm(dim=1) / maps.norm(dim=1)
    torch.testing.assert_close(SensitivityMax(method, x, 0, perturb_fn=shift, n_perturb_samples=3)(), expected)


def test_sensitivity_nan_maps_give_nan():
    model = SmoothNet()
    x = inputs_for((6,), 3, 0)
    maps = attrib.Saliency(model).attribute(x, 0)
    maps[1, 2] = float("nan")
    scores = SensitivityMax(attrib.Saliency(model), x, 0, seed=0, n_perturb_samples=2)(maps)
    assert math.isnan(float(scores[1])) and bool(torch.isfinite(scores[[0, 2]]).all())


def test_completeness_gap():
    model = SmoothNet()
    x = inputs_for((6,), 4, 0)
    baseline = torch.full((1, 6), 0.2)
    ig = attrib.IntegratedGradients(model)
    gap = CompletenessGap(model, x, 1, baselines=baseline)
    assert float(gap(ig.attribute(x, 1, baselines=baseline, n_steps=64)).max()) < 1e-5
    with torch.no_grad():
        expected = (model(x)[:, 1] - model(baseline.expand_as(x))[:, 1]).abs()
    torch.testing.assert_close(gap(torch.zeros_like(x)), expected)
    coarse = gap(ig.attribute(x, 1, baselines=baseline, n_steps=2, method="riemann_left"))
    assert float(coarse.max()) > 1e-3  # a coarse rule leaves a visible gap
    maps = ig.attribute(x, 1, baselines=baseline, n_steps=8)
    maps[3, 0] = float("nan")
    assert math.isnan(float(gap(maps)[3]))


def test_completeness_gap_with_k_targets_and_top1():
    model = SmoothNet()
    x = inputs_for((6,), 3, 1)
    targets = torch.tensor([[0, 2], [1, 1], [2, 0]])
    maps = attrib.IntegratedGradients(model).attribute(x, targets, n_steps=64)
    gaps = CompletenessGap(model, x, targets)(maps)
    assert gaps.shape == (3, 2) and float(gaps.max()) < 1e-5
    top = model(x).argmax(1)
    gaps = CompletenessGap(model, x)(attrib.IntegratedGradients(model).attribute(x, top, n_steps=64))
    assert float(gaps.max()) < 1e-5


def test_bad_arguments():
    model = SmoothNet()
    x = inputs_for((6,), 2, 0)
    with pytest.raises(TypeError, match="perturb_fn"):
        Infidelity(model, x, 0, perturb_fn=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_perturb_samples"):
        Infidelity(model, x, 0, perturb_fn=gaussian_perturbation(0), n_perturb_samples=0)
    with pytest.raises(ValueError, match="do not match"):
        Infidelity(model, x, 0, perturb_fn=gaussian_perturbation(0))(torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match="broadcast"):
        Infidelity(model, x, 0, perturb_fn=gaussian_perturbation(0))(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="n_perturb_samples"):
        SensitivityMax(attrib.Saliency(model), x, 0, n_perturb_samples=0)
    with pytest.raises(ValueError, match="one row per example"):
        SensitivityMax(attrib.Saliency(model), x, 0, seed=0)(torch.zeros(3, 6))
    with pytest.raises(TypeError, match="pair"):
        Infidelity(model, x, 0, perturb_fn=lambda t: t)(torch.zeros(2, 6))
    with pytest.raises(TypeError, match="Attribution"):
        SensitivityMax(model, x, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm_ord"):
        SensitivityMax(attrib.Saliency(model), x, 0, norm_ord="nuc")
    with pytest.raises(ValueError, match="perturb_radius"):
        SensitivityMax(attrib.Saliency(model), x, 0, perturb_radius=-1.0)
    with pytest.raises(ValueError, match="scores' shape"):
        CompletenessGap(model, x, 0)(torch.zeros(3, 6))
