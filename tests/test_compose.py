"""Pipelines and products are Attributions and compose again."""

from __future__ import annotations

import pytest
import torch

import attrib

from .models import ResidualBNNet, SmoothNet, inputs_for


def test_pipeline_applies_steps_in_order():
    model = ResidualBNNet(seed=0)
    x = inputs_for((3, 6, 6), 2, 0)
    raw = attrib.GuidedBackprop(model).attribute(x, target=1)
    steps = (attrib.ReduceChannels("abs_max"), attrib.Resize((3, 3)), attrib.MinMaxNormalize())
    expected = raw
    for step in steps:
        expected = step(expected, x)
    pipeline = attrib.GuidedBackprop(model).then(*steps)
    assert isinstance(pipeline, attrib.Attribution)
    torch.testing.assert_close(pipeline.attribute(x, target=1), expected)
    # then() on a pipeline extends it
    torch.testing.assert_close(
        attrib.GuidedBackprop(model).then(steps[0]).then(*steps[1:]).attribute(x, target=1), expected
    )


def test_pipeline_processes_each_target_map_separately():
    model = ResidualBNNet(seed=1)
    x = inputs_for((3, 6, 6), 2, 1)
    pipeline = attrib.Saliency(model).then(attrib.ReduceChannels("l2"), attrib.MinMaxNormalize())
    targets = torch.tensor([[0, 3, 4], [1, 1, 2]])
    multi = pipeline.attribute(x, target=targets)
    assert multi.shape == (2, 3, 1, 6, 6)
    for k in range(3):
        torch.testing.assert_close(multi[:, k], pipeline.attribute(x, target=targets[:, k]))


def test_pipeline_passes_the_convergence_delta_through():
    model = SmoothNet(seed=2)
    x = inputs_for((6,), 3, 2)
    ig = attrib.IntegratedGradients(model)
    maps, delta = ig.attribute(x, target=0, return_convergence_delta=True, n_steps=8)
    scaled_maps, same_delta = ig.then(lambda m, ref: 2 * m).attribute(
        x, target=0, return_convergence_delta=True, n_steps=8
    )
    torch.testing.assert_close(scaled_maps, 2 * maps)
    torch.testing.assert_close(same_delta, delta)


def test_noise_tunnel_wraps_a_pipeline_and_is_wrapped_by_one():
    model = ResidualBNNet(seed=2)
    x = inputs_for((3, 6, 6), 2, 2)
    inner = attrib.Saliency(model).then(attrib.ReduceChannels("abs_max"))
    smooth = attrib.NoiseTunnel(inner)
    maps = smooth.attribute(x, target=0, n_samples=4, seed=3)
    assert maps.shape == (2, 1, 6, 6)
    outer = smooth.then(attrib.GaussianSmooth(0.1))
    torch.testing.assert_close(outer.attribute(x, target=0, n_samples=4, seed=3), attrib.GaussianSmooth(0.1)(maps, x))


def test_product_multiplies_maps_with_broadcasting_and_one_target():
    model = ResidualBNNet(seed=4)
    x = inputs_for((3, 6, 6), 3, 4)
    coarse = attrib.Saliency(model).then(attrib.ReduceChannels("abs_max"))
    product = attrib.GuidedBackprop(model) * coarse
    assert isinstance(product, attrib.Product)
    top1 = model(x).argmax(1)
    expected = attrib.GuidedBackprop(model).attribute(x, target=top1) * coarse.attribute(x, target=top1)
    torch.testing.assert_close(product.attribute(x), expected)
    assert product.attribute(x).shape == x.shape


def test_product_routes_options_and_rejects_unknown_ones():
    model = SmoothNet(seed=5)
    x = inputs_for((6,), 2, 5)
    product = attrib.IntegratedGradients(model) * attrib.Saliency(model)
    expected = attrib.IntegratedGradients(model).attribute(x, target=1, n_steps=5) * attrib.Saliency(model).attribute(
        x, target=1, abs=False
    )
    torch.testing.assert_close(product.attribute(x, target=1, n_steps=5, abs=False, batch_size=3), expected)
    with pytest.raises(TypeError, match="n_stepz"):
        product.attribute(x, target=1, n_stepz=5)
    with pytest.raises(ValueError, match="same model"):
        attrib.Saliency(model) * attrib.Saliency(SmoothNet(seed=6))
    with pytest.raises(TypeError):
        attrib.Saliency(model) * 3  # type: ignore[operator]
    with pytest.raises(TypeError, match="Step"):
        attrib.Saliency(model).then("blur")  # type: ignore[arg-type]


def test_product_of_tuple_inputs_keeps_the_form():
    from .models import TwoInputNet

    model = TwoInputNet(seed=1)
    inputs = [inputs_for((2, 4, 4), 2, 0), inputs_for((4,), 2, 1)]
    out = (attrib.Saliency(model) * attrib.InputXGradient(model)).attribute(inputs, target=0)
    assert isinstance(out, list) and out[0].shape == inputs[0].shape and out[1].shape == inputs[1].shape
