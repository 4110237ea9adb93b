"""Argument validation and the forms of inputs, targets and results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import attrib

from .models import SmoothNet, TwoInputNet, inputs_for


def model_and_input():
    return SmoothNet(seed=0), inputs_for((6,), 3, 0)


def test_attribution_is_abstract():
    with pytest.raises(TypeError):
        attrib.Attribution(SmoothNet())  # type: ignore[abstract]

    class Incomplete(attrib.GradientAttribution):
        pass

    with pytest.raises(TypeError):
        Incomplete(SmoothNet())  # type: ignore[abstract]


def test_result_comes_back_in_the_inputs_form():
    model = TwoInputNet()
    image, vector = inputs_for((2, 4, 4), 2, 0), inputs_for((4,), 2, 1)
    method = attrib.Saliency(model)
    as_tuple = method.attribute((image, vector), target=0)
    as_list = method.attribute([image, vector], target=0)
    assert isinstance(as_tuple, tuple) and isinstance(as_list, list)
    assert as_tuple[0].shape == image.shape and as_tuple[1].shape == vector.shape
    single_model, x = model_and_input()
    assert isinstance(attrib.Saliency(single_model).attribute(x, target=0), torch.Tensor)


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ("not a tensor", TypeError, "inputs must be a Tensor"),
        ((), ValueError, "at least one tensor"),
        ((torch.zeros(2, 6), "x"), TypeError, r"inputs\[1\] must be a Tensor"),
        (torch.zeros(2, 6, dtype=torch.long), TypeError, "floating-point"),
        (torch.tensor(1.0), ValueError, "batch dimension"),
        (torch.zeros(0, 6), ValueError, "at least one example"),
        ((torch.zeros(2, 2, 4, 4), torch.zeros(3, 4)), ValueError, "share the batch size"),
    ],
)
def test_bad_inputs_raise_clearly(inputs, error, message):
    model = TwoInputNet() if isinstance(inputs, tuple) and len(inputs) == 2 else SmoothNet()
    with pytest.raises(error, match=message):
        attrib.Saliency(model).attribute(inputs, target=0)


@pytest.mark.parametrize(
    "target",
    [2, np.int64(2), [2, 2, 2], (2, 2, 2), torch.tensor([2, 2, 2]), np.array([2, 2, 2]), torch.tensor(2)],
    ids=["int", "numpy-int", "list", "tuple", "tensor", "ndarray", "0-d tensor"],
)
def test_target_forms_agree(target):
    model, x = model_and_input()
    expected = attrib.Saliency(model).attribute(x, target=lambda out: out[:, 2])
    torch.testing.assert_close(attrib.Saliency(model).attribute(x, target=target), expected)


def test_none_target_is_top1_and_one_dimensional_outputs_are_explained_directly():
    model, x = model_and_input()
    top1 = model(x).argmax(1)
    torch.testing.assert_close(attrib.Saliency(model).attribute(x), attrib.Saliency(model).attribute(x, target=top1))
    flattened = nn.Sequential(model, nn.Flatten(0))  # (N * 3,): not one row per example
    one_d = lambda inp: model(inp)[:, 1]  # noqa: E731
    torch.testing.assert_close(attrib.Saliency(one_d).attribute(x), attrib.Saliency(model).attribute(x, target=1))
    with pytest.raises(ValueError, match="one row per input row"):
        attrib.Saliency(flattened).attribute(x)
    with pytest.raises(ValueError, match="class dimension"):
        attrib.Saliency(one_d).attribute(x, target=0)


@pytest.mark.parametrize(
    "target, error, message",
    [
        (3, ValueError, r"\[0, 3\)"),
        ([0, 1, 5], ValueError, r"\[0, 3\)"),
        (-1, ValueError, ">= 0"),
        (torch.tensor([0, -2, 1]), ValueError, ">= 0"),
        ([0, 1], ValueError, "length N=3"),
        (torch.zeros(3, 0, dtype=torch.long), ValueError, r"\(N, K\)"),
        (torch.zeros(2, 2, dtype=torch.long), ValueError, r"\(N, K\)"),
        (torch.zeros(3, 1, 1, dtype=torch.long), ValueError, "0-, 1- or 2-D"),
        (1.0, ValueError, "got float"),
        (torch.tensor([0.0, 1.0, 2.0]), ValueError, "integer class indices"),
        (True, ValueError, "got bool"),
        ("cat", TypeError, "unsupported type"),
        ([[0, 1], [2]], ValueError, "could not read target"),
    ],
)
def test_bad_targets_raise_clearly(target, error, message):
    model, x = model_and_input()
    with pytest.raises(error, match=message):
        attrib.IntegratedGradients(model).attribute(x, target=target, n_steps=2)


@pytest.mark.parametrize(
    "fn, error, message",
    [
        (lambda out: out, ValueError, r"shape \(3,\) or \(3, K\)"),
        (lambda out: out[:2, 0], ValueError, "one score per output row"),
        (lambda out: out.argmax(1), TypeError, "floating-point"),
        (lambda out: "score", TypeError, "must return a Tensor"),
    ],
)
def test_bad_callable_targets_raise_clearly(fn, error, message):
    model, x = model_and_input()
    model = nn.Sequential(model, nn.Unflatten(1, (3, 1)))  # (N, 3, 1) output
    with pytest.raises(error, match=message):
        attrib.Saliency(model).attribute(x, target=fn)


def test_trailing_output_dimensions_are_summed_per_class():
    model, x = model_and_input()
    spatial = lambda inp: model(inp).unsqueeze(-1).expand(-1, -1, 4) * torch.arange(1.0, 5.0)  # noqa: E731
    torch.testing.assert_close(
        attrib.Saliency(spatial).attribute(x, target=1, abs=False),
        10 * attrib.Saliency(model).attribute(x, target=1, abs=False),
    )


def test_additional_forward_args_validation():
    model = TwoInputNet()
    image, vector = inputs_for((2, 4, 4), 2, 0), inputs_for((4,), 2, 1)
    gain = torch.tensor([2.0, 3.0])
    doubled = attrib.Saliency(model).attribute((image, vector), target=0, additional_forward_args=gain, abs=False)
    plain = attrib.Saliency(model).attribute((image, vector), target=0, abs=False)
    torch.testing.assert_close(doubled[1], plain[1] * gain.view(2, 1))
    with pytest.raises(ValueError, match=r"additional_forward_args\[0\].*first dimension N=2"):
        attrib.Saliency(model).attribute((image, vector), target=0, additional_forward_args=(torch.ones(3),))


def test_model_must_be_callable_and_return_a_tensor():
    with pytest.raises(TypeError, match="model must be an nn.Module or a callable"):
        attrib.Saliency(42)  # type: ignore[arg-type]
    _, x = model_and_input()
    with pytest.raises(TypeError, match="returned a dict, not a Tensor; pass a callable target"):
        attrib.Saliency(lambda inp: {"logits": inp}).attribute(x, target=0)
    with pytest.raises(TypeError, match="returned a dict, not a Tensor; pass a callable target"):
        attrib.Saliency(lambda inp: {"logits": inp}).attribute(x)


def test_callables_without_parameters_work():
    _, x = model_and_input()
    w = torch.arange(18.0).view(6, 3)
    linear = lambda inp: inp @ w  # noqa: E731
    torch.testing.assert_close(attrib.Saliency(linear).attribute(x, target=2), w[:, 2].expand(3, 6))


def test_input_that_the_model_ignores_gets_zero_attribution():
    model, x = model_and_input()
    ignore_second = lambda a, b: model(a)  # noqa: E731
    maps = attrib.InputXGradient(ignore_second).attribute((x, torch.ones(3, 2)), target=0)
    assert torch.equal(maps[1], torch.zeros(3, 2))


def test_in_place_ops_on_the_model_input_are_allowed_and_inputs_untouched():
    model, x = model_and_input()
    in_place = lambda inp: model(inp.mul_(2.0))  # noqa: E731
    before = x.clone()
    maps = attrib.Saliency(in_place).attribute(x, target=0, abs=False)
    assert torch.equal(x, before)
    torch.testing.assert_close(maps, 2 * attrib.Saliency(model).attribute(2 * x, target=0, abs=False))
