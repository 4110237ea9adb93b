"""Invariants every method must satisfy, over random small models and batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attrib

from .models import ResidualBNNet, build, inputs_for, specs

# name -> (constructor, options, deterministic across batch composition, linear in the score)
METHODS = {
    "saliency": (attrib.Saliency, {}, True, False),
    "saliency_signed": (attrib.Saliency, {"abs": False}, True, True),
    "input_x_gradient": (attrib.InputXGradient, {}, True, True),
    "guided_backprop": (attrib.GuidedBackprop, {}, True, False),
    "deconvnet": (attrib.Deconvnet, {}, True, False),
    "integrated_gradients": (attrib.IntegratedGradients, {"n_steps": 4}, True, True),
    "noise_tunnel": (lambda m: attrib.NoiseTunnel(attrib.Saliency(m)), {"n_samples": 3, "seed": 1}, False, False),
    "pipeline": (lambda m: attrib.GuidedBackprop(m).then(attrib.ReduceChannels("sum")), {}, True, False),
}
NAMES = sorted(METHODS)


def _model_and_inputs(spec, n, dtype=torch.float64):
    model = build(spec).to(dtype)
    return model, inputs_for(spec.input_shape, n, spec.seed, dtype)


# NoiseTunnel's noise for an example depends on the batch it is drawn with; its
# own guarantees (seeded determinism, batch_size invariance) are in test_noise_tunnel.
@pytest.mark.parametrize("name", [name for name in NAMES if METHODS[name][2]])
@given(spec=specs(), n=st.integers(1, 4), data=st.data())
def test_batch_equivariance(name, spec, n, data):
    make, options, _, _ = METHODS[name]
    model, x = _model_and_inputs(spec, n)
    targets = data.draw(st.lists(st.integers(0, spec.classes - 1), min_size=n, max_size=n))
    whole = make(model).attribute(x, target=targets, **options)
    for i in range(n):
        single = make(model).attribute(x[i : i + 1], target=targets[i : i + 1], **options)
        torch.testing.assert_close(whole[i : i + 1], single)


@pytest.mark.parametrize("name", NAMES)
@given(spec=specs(), n=st.integers(1, 3), k=st.integers(1, 3), data=st.data())
def test_multi_target_equals_per_target(name, spec, n, k, data):
    make, options, _, _ = METHODS[name]
    model, x = _model_and_inputs(spec, n)
    targets = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, spec.classes - 1), min_size=k, max_size=k), min_size=n, max_size=n))
    )
    multi = make(model).attribute(x, target=targets, **options)
    assert multi.shape[:2] == (n, k)
    for j in range(k):
        torch.testing.assert_close(multi[:, j], make(model).attribute(x, target=targets[:, j], **options))


@pytest.mark.parametrize("name", NAMES)
@given(spec=specs(), n=st.integers(1, 5), data=st.data())
def test_batch_size_does_not_change_results(name, spec, n, data):
    make, options, _, _ = METHODS[name]
    model, x = _model_and_inputs(spec, n)
    batch_size = data.draw(st.integers(1, 3 * n))
    whole = make(model).attribute(x, target=0, **options)
    torch.testing.assert_close(make(model).attribute(x, target=0, batch_size=batch_size, **options), whole)


@pytest.mark.parametrize("name", [name for name in NAMES if METHODS[name][3]])
@given(spec=specs(), n=st.integers(1, 3), a=st.floats(-2, 2), b=st.floats(-2, 2))
def test_linear_in_a_callable_target(name, spec, n, a, b):
    make, options, _, _ = METHODS[name]
    model, x = _model_and_inputs(spec, n)
    first, second = 0, spec.classes - 1
    mixed = make(model).attribute(x, target=lambda out: a * out[:, first] + b * out[:, second], **options)
    parts = a * make(model).attribute(x, target=first, **options) + b * make(model).attribute(
        x, target=second, **options
    )
    torch.testing.assert_close(mixed, parts)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_and_shape_follow_the_input(name, dtype):
    make, options, _, _ = METHODS[name]
    model = ResidualBNNet(seed=2).to(dtype)
    x = inputs_for((3, 6, 6), 2, 2, dtype)
    maps = make(model).attribute(x, target=[1, 3], **options)
    assert maps.dtype == dtype and maps.device == x.device
    expected = (2, 1, 6, 6) if name == "pipeline" else x.shape
    assert maps.shape == expected
    assert torch.isfinite(maps).all()


@pytest.mark.parametrize("name", NAMES)
def test_repeated_calls_are_identical(name):
    make, options, _, _ = METHODS[name]
    model = ResidualBNNet(seed=3)
    x = inputs_for((3, 6, 6), 3, 3)
    assert torch.equal(make(model).attribute(x, **options), make(model).attribute(x, **options))
