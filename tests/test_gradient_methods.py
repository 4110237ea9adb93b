"""Saliency, InputXGradient, GuidedBackprop and Deconvnet against float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import attrib

from . import reference
from .models import RELU_STYLES, ResidualBNNet, Spec, build, inputs_for, specs


def _targets(data: st.DataObject, n: int, classes: int) -> list[int]:
    return data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n), label="targets")


@given(spec=specs(), n=st.integers(1, 4), data=st.data())
def test_saliency_and_input_x_gradient_match_reference(spec, n, data):
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed, torch.float64)
    targets = _targets(data, n, spec.classes)
    m64 = build(spec).double()
    torch.testing.assert_close(attrib.Saliency(m64).attribute(x, target=targets), reference.saliency(model, x, targets))
    torch.testing.assert_close(
        attrib.Saliency(m64).attribute(x, target=targets, abs=False),
        reference.saliency(model, x, targets, absolute=False),
    )
    torch.testing.assert_close(
        attrib.InputXGradient(m64).attribute(x, target=targets), reference.input_x_gradient(model, x, targets)
    )


@pytest.mark.parametrize("method, rule", [(attrib.GuidedBackprop, "guided"), (attrib.Deconvnet, "deconv")])
@given(spec=specs(), n=st.integers(1, 3), data=st.data())
def test_modified_backprop_matches_layerwise_reference(method, rule, spec, n, data):
    """Every ReLU spelling (module, functional, torch, tensor method, in-place) gets the rule."""
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed, torch.float64)
    targets = _targets(data, n, spec.classes)
    ours = method(build(spec).double()).attribute(x, target=targets)
    torch.testing.assert_close(ours, reference.modified_backprop(model, x, targets, rule))


@pytest.mark.parametrize("style", RELU_STYLES)
def test_guided_backprop_differs_from_gradient_for_every_relu_style(style):
    """A rule that silently fell back to the plain gradient would fail here."""
    spec_model = build(fixed_spec(style))
    x = inputs_for((2, 5, 5), 3, 1, torch.float64)
    plain = attrib.Saliency(spec_model.double()).attribute(x, target=0, abs=False)
    guided = attrib.GuidedBackprop(spec_model).attribute(x, target=0)
    assert not torch.allclose(plain, guided)
    torch.testing.assert_close(guided, reference.modified_backprop(spec_model, x, [0, 0, 0], "guided"))


def fixed_spec(style: str) -> Spec:
    return Spec(
        channels=2, size=5, convs=(4, 3), pools=(False, True), hidden=(6,), classes=3, relu_styles=(style,), seed=7
    )


def test_saliency_of_linear_model_is_abs_weight_row():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    targets = torch.tensor([0, 3, 2, 1, 3])
    expected = lin.weight.detach()[targets].abs()
    torch.testing.assert_close(attrib.Saliency(lin).attribute(x, target=targets), expected)


@given(spec=specs(styles=("tanh",)), n=st.integers(1, 3), data=st.data())
def test_deconvnet_without_relus_is_the_plain_gradient(spec, n, data):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, spec.seed, torch.float64)
    targets = _targets(data, n, spec.classes)
    torch.testing.assert_close(
        attrib.Deconvnet(model).attribute(x, target=targets),
        attrib.Saliency(model).attribute(x, target=targets, abs=False),
    )


def test_residual_batchnorm_model_matches_reference_gradient():
    model = ResidualBNNet(seed=3)
    x = inputs_for((3, 6, 6), 4, 3, torch.float64)
    targets = [0, 4, 2, 1]
    ours = attrib.Saliency(ResidualBNNet(seed=3).double()).attribute(x, target=targets)
    torch.testing.assert_close(ours, reference.saliency(model, x, targets))


def test_float32_close_to_float64_reference():
    spec = fixed_spec("module_inplace")
    model = build(spec)
    x = inputs_for(spec.input_shape, 3, 0)
    ref = reference.modified_backprop(model, x, [2, 1, 0], "guided")
    ours = attrib.GuidedBackprop(model).attribute(x, target=[2, 1, 0])
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
