"""Integrated Gradients against the float64 reference, completeness and batching."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attrib
from attrib.core.quadrature import METHODS, quadrature

from . import reference
from .models import SmoothNet, TwoInputNet, build, inputs_for, specs


@pytest.mark.parametrize("method", METHODS)
@given(spec=specs(), n=st.integers(1, 3), n_steps=st.integers(2, 7), data=st.data())
def test_matches_reference(method, spec, n, n_steps, data):
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed, torch.float64)
    baseline = inputs_for(spec.input_shape, n, spec.seed + 1, torch.float64) * 0.3
    targets = data.draw(st.lists(st.integers(0, spec.classes - 1), min_size=n, max_size=n))
    batch_size = data.draw(st.none() | st.integers(1, n * n_steps + 2), label="batch_size")
    ours = attrib.IntegratedGradients(build(spec).double()).attribute(
        x, target=targets, baselines=baseline, n_steps=n_steps, method=method, batch_size=batch_size
    )
    expected = reference.integrated_gradients(model, x, baseline, targets, method, n_steps)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("method", METHODS)
def test_quadrature_weights_sum_to_one_and_nodes_in_unit_interval(method):
    for n in (2, 3, 10, 50):
        alphas, weights = quadrature(method, n)
        assert abs(float(weights.sum()) - 1.0) < 1e-12
        assert float(alphas.min()) >= 0.0 and float(alphas.max()) <= 1.0
        ref_alphas, ref_weights = reference.quadrature_rule(method, n)
        torch.testing.assert_close(alphas, torch.tensor(ref_alphas, dtype=torch.float64))
        torch.testing.assert_close(weights, torch.tensor(ref_weights, dtype=torch.float64))


@given(seed=st.integers(0, 10_000), n=st.integers(1, 4))
def test_completeness_tightens_with_steps_on_smooth_model(seed, n):
    model = SmoothNet(seed=seed).double()
    x = inputs_for((6,), n, seed, torch.float64) * 2
    ig = attrib.IntegratedGradients(model)
    methods, steps = ("gausslegendre", "riemann_middle", "riemann_trapezoid"), (4, 16, 64, 256)
    deltas = {}
    for method in methods:
        for n_steps in steps:
            _, delta = ig.attribute(x, target=1, n_steps=n_steps, method=method, return_convergence_delta=True)
            deltas[method, n_steps] = float(delta.abs().max())
    with torch.no_grad():
        scale = 1.0 + float(model(x).abs().max())
    for method in methods:
        # 16x the steps never loses accuracy (beyond rounding), whatever cancellations happen at few steps.
        assert deltas[method, 64] <= deltas[method, 4] + 1e-9 * scale
        assert deltas[method, 256] <= deltas[method, 16] + 1e-9 * scale
    assert deltas["riemann_middle", 256] < 1e-4 * scale  # O(1/n^2)
    assert deltas["gausslegendre", 16] < 1e-6 * scale
    assert deltas["gausslegendre", 64] < 1e-10 * scale  # exponential convergence on an analytic path


@given(spec=specs(), n=st.integers(1, 3))
def test_completeness_on_relu_models(spec, n):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, spec.seed, torch.float64)
    ig = attrib.IntegratedGradients(model)
    maps, delta = ig.attribute(x, target=0, n_steps=400, method="riemann_middle", return_convergence_delta=True)
    gain = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(maps.flatten(1).sum(1) - gain, delta)
    # Along the path a ReLU model's gradient is piecewise constant: the error is O(jumps / n_steps),
    # not monotone in n_steps (a coarse grid can be lucky), so only its size is checked here.
    scale = 1.0 + float(gain.detach().abs().max())
    assert float(delta.abs().max()) <= 1e-2 * scale


@given(spec=specs(), n=st.integers(1, 4), steps=st.integers(1, 6), data=st.data())
def test_chunked_equals_unchunked(spec, n, steps, data):
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed)
    batch_size = data.draw(st.integers(1, n * steps + 1))
    ig = attrib.IntegratedGradients(model)
    whole = ig.attribute(x, target=1 % spec.classes, n_steps=steps, method="riemann_right")
    chunked = ig.attribute(x, target=1 % spec.classes, n_steps=steps, method="riemann_right", batch_size=batch_size)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_multi_input_with_forward_args_is_complete():
    model = TwoInputNet(seed=2).double()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    vector = torch.randn(3, 4, generator=g, dtype=torch.float64)
    gain = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    ig = attrib.IntegratedGradients(model)
    (a_img, a_vec), delta = ig.attribute(
        (image, vector),
        target=[0, 1, 2],
        additional_forward_args=(gain,),
        n_steps=300,
        batch_size=37,
        method="riemann_middle",
        return_convergence_delta=True,
    )
    assert a_img.shape == image.shape and a_vec.shape == vector.shape
    out = model(image, vector, gain) - model(torch.zeros_like(image), torch.zeros_like(vector), gain)
    expected_gain = out[torch.arange(3), torch.tensor([0, 1, 2])]
    torch.testing.assert_close(a_img.flatten(1).sum(1) + a_vec.sum(1) - expected_gain, delta)
    assert float(delta.abs().max()) < 1e-2


def test_baseline_forms_agree():
    spec_model = SmoothNet(seed=4)
    x = inputs_for((6,), 3, 4)
    ig = attrib.IntegratedGradients(spec_model)
    full = torch.full_like(x, 0.5)
    expected = ig.attribute(x, target=2, baselines=full, n_steps=8)
    for form in (0.5, torch.tensor(0.5), torch.full((1, 6), 0.5), torch.full((6,), 0.5)):
        torch.testing.assert_close(ig.attribute(x, target=2, baselines=form, n_steps=8), expected)
    with pytest.raises(ValueError, match="does not broadcast"):
        ig.attribute(x, target=2, baselines=torch.zeros(2, 6))
    with pytest.raises(ValueError, match="one entry per input"):
        ig.attribute(x, target=2, baselines=(0.0, 0.0))
    with pytest.raises(TypeError, match="baselines"):
        ig.attribute(x, target=2, baselines="zeros")


def test_top1_target_is_taken_on_the_clean_input():
    model = SmoothNet(seed=5)
    x = inputs_for((6,), 5, 5)
    ig = attrib.IntegratedGradients(model)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(ig.attribute(x, n_steps=6), ig.attribute(x, target=predicted, n_steps=6))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "simpson"}, "method must be one of"),
        ({"n_steps": 0}, "n_steps must be a positive int"),
        ({"n_steps": 1, "method": "riemann_trapezoid"}, "needs n_steps >= 2"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"batch_size": 2.5}, "batch_size must be a positive int"),
    ],
)
def test_bad_options_raise(kwargs, message):
    ig = attrib.IntegratedGradients(SmoothNet())
    with pytest.raises(ValueError, match=message):
        ig.attribute(inputs_for((6,), 2, 0), target=0, **kwargs)
