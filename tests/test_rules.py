"""Backward rules reach every ReLU form and refuse what they cannot handle."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attrib
from attrib.rules import GuidedReLU, apply_rule

from . import reference
from .models import FunctionalReLU, inputs_for, reinitialise


class ActNet(nn.Module):
    def __init__(self, act: nn.Module | None = None, fn=None) -> None:
        super().__init__()
        self.l1 = nn.Linear(5, 7)
        self.act = act
        self.fn = fn
        self.l2 = nn.Linear(7, 3)
        reinitialise(self, 0, scale=1.0)
        self.eval()

    def forward(self, x):
        h = self.l1(x)
        h = self.act(h) if self.act is not None else self.fn(h)
        return self.l2(h)


@pytest.mark.parametrize(
    "act",
    [
        nn.GELU(),
        nn.ReLU6(),
        nn.LeakyReLU(),
        nn.ELU(),
        nn.SELU(),
        nn.SiLU(),
        nn.Softplus(),
        nn.Hardswish(),
        nn.PReLU(),
        nn.Mish(),
    ],
    ids=lambda a: type(a).__name__,
)
@pytest.mark.parametrize("method", [attrib.GuidedBackprop, attrib.Deconvnet])
def test_unsupported_activation_raises(method, act):
    model = ActNet(act)
    with pytest.raises(attrib.UnsupportedModelError, match="ReLUs only"):
        method(model).attribute(inputs_for((5,), 2, 0), target=0)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "fn",
    [lambda h: h.clamp(min=0), lambda h: torch.clamp_min(h, 0.0), lambda h: F.threshold(h, 0.0, 0.0)],
    ids=["clamp", "clamp_min", "threshold"],
)
def test_clamp_at_zero_and_threshold_count_as_relu(fn):
    x = inputs_for((5,), 4, 1, torch.float64)
    relu_model = ActNet(FunctionalReLU("functional")).double()
    other = ActNet(fn=fn).double()
    expected = attrib.GuidedBackprop(relu_model).attribute(x, target=1)
    torch.testing.assert_close(attrib.GuidedBackprop(other).attribute(x, target=1), expected)
    ref = reference.modified_backprop(
        nn.Sequential(relu_model.l1, FunctionalReLU("torch"), relu_model.l2), x, [1] * 4, "guided"
    )
    torch.testing.assert_close(expected, ref)


def test_clamp_elsewhere_keeps_its_plain_gradient():
    x = inputs_for((5,), 3, 2, torch.float64)
    model = ActNet(fn=lambda h: h.clamp(min=-0.5)).double()
    torch.testing.assert_close(
        attrib.GuidedBackprop(model).attribute(x, target=0), attrib.Saliency(model).attribute(x, target=0, abs=False)
    )


def test_compiled_model_raises_instead_of_returning_plain_gradient():
    model = ActNet(nn.ReLU())
    compiled = torch.compile(model, backend="aot_eager")
    x = inputs_for((5,), 2, 3)
    with pytest.raises(attrib.UnsupportedModelError, match="_orig_mod"):
        attrib.GuidedBackprop(compiled).attribute(x, target=0)
    # Plain gradients need no rule and work through the compiled graph.
    torch.testing.assert_close(
        attrib.Saliency(compiled).attribute(x, target=0), attrib.Saliency(model).attribute(x, target=0)
    )


def test_torchscript_model_is_either_exact_or_refused():
    model = ActNet(nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    x = inputs_for((5,), 2, 4)
    expected = attrib.GuidedBackprop(model).attribute(x, target=0)
    outcomes = set()
    for _ in range(4):  # the profiling executor changes the graph after warm-up
        try:
            torch.testing.assert_close(attrib.GuidedBackprop(scripted).attribute(x, target=0), expected)
            outcomes.add("exact")
        except attrib.UnsupportedModelError:
            outcomes.add("refused")
    assert outcomes <= {"exact", "refused"} and outcomes


def test_hooks_do_not_outlive_the_call():
    model = ActNet(nn.ReLU())
    x = inputs_for((5,), 3, 5)
    attrib.GuidedBackprop(model).attribute(x, target=2)
    xr = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xr)[:, 2].sum(), xr)
    torch.testing.assert_close(attrib.Saliency(model).attribute(x, target=2, abs=False), plain)


def test_apply_rule_on_a_graph_and_removal():
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    y = torch.relu(x) * torch.tensor([1.0, -1.0, 2.0])
    handles = apply_rule(y, GuidedReLU())
    assert len(handles) == 1
    (g,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    assert g.tolist() == [0.0, 0.0, 2.0]
    for h in handles:
        h.remove()
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [0.0, -1.0, 2.0]
