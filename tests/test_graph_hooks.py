"""The rule backprop (attrib.core.graph) runs the gradient hooks a model registers in forward, refuses module
backward hooks it cannot reach, and the contrastive excitation reads tuple/dict outputs through the target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrib.methods.excitation import ContrastiveExcitationBackprop, ExcitationBackprop
from attrib.methods.modified_backprop import Deconvnet, GuidedBackprop
from attrib.rules import UnsupportedModelError

from .models import inputs_for


class Hooked(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear; ``hook`` is registered on the first ReLU's output in every forward."""

    def __init__(self, hook=None, as_dict: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 5)
        self.c = nn.Linear(5, 3)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.hook = hook
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        h = self.relu1(self.a(x))
        if self.hook is not None and h.requires_grad:
            h.register_hook(self.hook)
        out = self.c(self.relu2(self.b(h)))
        return {"logits": out} if self.as_dict else out


@pytest.mark.parametrize("method", [GuidedBackprop, Deconvnet])
def test_a_scaling_hook_scales_the_rule_map(method):
    x = inputs_for((4,), 5, 1)
    plain = method(Hooked()).attribute(x, target=1)
    hooked = method(Hooked(lambda g: g * 3)).attribute(x, target=1)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(hooked, 3 * plain)


def test_hooks_run_in_registration_order_and_none_keeps_the_signal():
    seen: list[str] = []

    def first(g: torch.Tensor) -> torch.Tensor:
        seen.append("first")
        return g + 1

    def second(g: torch.Tensor) -> None:
        seen.append("second")

    class Two(Hooked):
        def forward(self, x):
            h = self.relu1(self.a(x))
            h.register_hook(first)
            h.register_hook(second)
            h.register_hook(lambda g: g * 2)
            return self.c(self.relu2(self.b(h)))

    x = inputs_for((4,), 2, 3)
    got = GuidedBackprop(Two()).attribute(x, target=0)
    assert seen == ["first", "second"]

    # Reference: the same signal edit done by hand with the plain engine on a guided copy of the model.
    class Reference(Hooked):
        def forward(self, x):
            h = self.relu1(self.a(x))
            h.register_hook(lambda g: (g + 1) * 2)
            return self.c(self.relu2(self.b(h)))

    torch.testing.assert_close(got, GuidedBackprop(Reference()).attribute(x, target=0))


def test_an_error_in_a_hook_surfaces_and_the_next_call_works():
    def explode(g: torch.Tensor) -> torch.Tensor:
        raise ValueError("hook failed")

    model = Hooked(explode)
    x = inputs_for((4,), 3, 2)
    with pytest.raises(ValueError, match="hook failed"):
        GuidedBackprop(model).attribute(x, target=0)
    model.hook = None
    fresh = GuidedBackprop(Hooked()).attribute(x, target=0)
    torch.testing.assert_close(GuidedBackprop(model).attribute(x, target=0), fresh)


def test_a_hook_returning_a_wrong_shape_is_refused():
    with pytest.raises(RuntimeError, match="gradient hook registered in the model's forward returned"):
        GuidedBackprop(Hooked(lambda g: g[:1])).attribute(inputs_for((4,), 3, 2), target=0)


def test_module_backward_hooks_are_refused_not_skipped():
    model = Hooked()
    handle = model.relu2.register_full_backward_hook(lambda m, gi, go: None)
    try:
        with pytest.raises(UnsupportedModelError, match="module backward hooks"):
            GuidedBackprop(model).attribute(inputs_for((4,), 2, 0), target=0)
    finally:
        handle.remove()


def test_excitation_backprop_runs_the_hooks_too():
    x = inputs_for((4,), 3, 4).abs()
    plain = ExcitationBackprop(Hooked(), "a").attribute(x, target=1)
    hooked = ExcitationBackprop(Hooked(lambda g: g * 2), "a").attribute(x, target=1)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(hooked, 2 * plain)


def test_contrastive_excitation_reads_a_dict_output_through_a_callable_target():
    x = inputs_for((4,), 3, 5).abs()
    tensor_out = ContrastiveExcitationBackprop(Hooked(), "a", "relu2", "c").attribute(x, target=2)
    dict_model = Hooked(as_dict=True)
    method = ContrastiveExcitationBackprop(dict_model, "a", "relu2", "c")
    torch.testing.assert_close(method.attribute(x, target=lambda out: out["logits"][:, 2]), tensor_out)
    with pytest.raises(TypeError, match="returned a dict, not a Tensor; pass a callable target"):
        method.attribute(x, target=2)


def test_an_operation_handing_back_its_operand_keeps_the_operands_of_the_node_that_made_it():
    """Eval-mode dropout returns its input itself: the sum's recorded operands must stay the sum's."""
    from attrib.core.graph import ForwardTrace

    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    with ForwardTrace(frozenset({"AddBackward0"})) as trace:
        total = a + b
        same = torch.nn.functional.dropout(total, p=0.5, training=False)
    assert same is total
    recorded = trace.operands(total.grad_fn)
    assert len(recorded) == 2
    assert torch.equal(recorded[0], a.detach()) and torch.equal(recorded[1], b.detach())
