"""Backward rules reach every ReLU form and refuse what they cannot handle."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attrib
from attrib.core.backprop import backprop
from attrib.core.graph import GraphBackward
from attrib.rules import GuidedReLU

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


def test_rule_set_on_a_graph_leaves_the_graph_plain():
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    y = torch.relu(x) * torch.tensor([1.0, -1.0, 2.0])
    carry = GraphBackward(y, [x], GuidedReLU())
    assert [n.name() for n in carry.order if carry.rules.get(n) is not None] == ["ReluBackward0"]
    (g,) = carry(torch.ones(3))
    assert g.tolist() == [0.0, 0.0, 2.0]
    assert backprop(y, (x,), GuidedReLU())[0].tolist() == [0.0, 0.0, 2.0]
    # Nothing was hooked: the same graph still gives the plain gradient.
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [0.0, -1.0, 2.0]


def test_graph_backward_sums_branches_and_broadcasts_like_autograd():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    h = x * 2.0
    a, c = h.chunk(2, dim=0)
    y = torch.cat([a + b, c * h[:1], (h + b).sum(0, keepdim=True)])
    seed = torch.randn_like(y)
    expected = torch.autograd.grad(y, (x, b), seed, retain_graph=True)
    got = GraphBackward(y, [x, b], GuidedReLU())(seed)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
