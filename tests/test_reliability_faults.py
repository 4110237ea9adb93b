"""Faults: an exception at any depth of forward or backward, or KeyboardInterrupt mid-run, leaves the model,
the inputs and the process as they were, and the next call gives exactly the result of a fresh model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from attrib.core import batching
from attrib.methods.gradient import InputXGradient, Saliency
from attrib.methods.integrated_gradients import IntegratedGradients
from attrib.methods.modified_backprop import Deconvnet, GuidedBackprop
from attrib.methods.noise_tunnel import NoiseTunnel
from attrib.postprocess import ReduceChannels

from .models import ResidualBNNet, inputs_for
from .test_state import assert_same, snapshot, untidy


class Fault(nn.Module):
    """Identity that raises ``error`` on its ``fail_at``-th forward call, or in the backward of that call."""

    def __init__(self, error: BaseException | None = None, fail_at: int = 0, in_backward: bool = False) -> None:
        super().__init__()
        self.error = error
        self.fail_at = fail_at
        self.in_backward = in_backward
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.error is None or self.calls != self.fail_at:
            return x
        if not self.in_backward:
            raise self.error
        error = self.error

        def explode(grad: torch.Tensor) -> torch.Tensor:
            raise error

        x = x * 1.0
        if x.requires_grad:
            x.register_hook(explode)
        return x


class Deep(nn.Module):
    """ResidualBNNet with a fault planted three modules deep, between the stem and the residual block."""

    def __init__(self, fault: Fault) -> None:
        super().__init__()
        self.net = ResidualBNNet(seed=9)
        self.net.stem = nn.Sequential(self.net.stem, nn.Sequential(nn.Sequential(fault)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# Long runs: several blocks, so a fault can strike mid-way.
METHODS = {
    "saliency": (Saliency, {"batch_size": 1}),
    "input_x_gradient": (InputXGradient, {"batch_size": 1}),
    "guided_backprop": (GuidedBackprop, {"batch_size": 1}),
    "deconvnet": (Deconvnet, {"batch_size": 1}),
    "integrated_gradients": (IntegratedGradients, {"n_steps": 20, "batch_size": 7}),
    "integrated_gradients_auto": (IntegratedGradients, {"n_steps": 20, "batch_size": "auto"}),  # AUTO_START=16
    "noise_tunnel": (lambda m: NoiseTunnel(Saliency(m)), {"n_samples": 12, "batch_size": 5, "seed": 3}),
    "smoothgrad_ig": (lambda m: NoiseTunnel(IntegratedGradients(m)), {"n_samples": 4, "n_steps": 5, "batch_size": 4}),
    "pipeline": (lambda m: GuidedBackprop(m).then(ReduceChannels("l2")), {"batch_size": 1}),
    "product": (lambda m: GuidedBackprop(m) * InputXGradient(m), {"batch_size": 1}),
}

FAULTS = {
    "runtime_error_in_forward": (lambda: RuntimeError("injected"), False),
    "keyboard_interrupt_in_forward": (lambda: KeyboardInterrupt(), False),
    "value_error_in_backward": (lambda: ValueError("injected in backward"), True),
    "keyboard_interrupt_in_backward": (lambda: KeyboardInterrupt(), True),
}
# Every method meets an interrupt in forward and an error in backward; the other two faults on a few methods.
CASES = [
    (name, fault) for name in sorted(METHODS) for fault in ("keyboard_interrupt_in_forward", "value_error_in_backward")
]
CASES += [
    (name, fault)
    for name in ("integrated_gradients", "noise_tunnel", "guided_backprop")
    for fault in ("runtime_error_in_forward", "keyboard_interrupt_in_backward")
]


def _rng_states() -> tuple[torch.Tensor, object, object]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tobytes()


def _options(options: dict, name: str) -> dict:
    return {k: v for k, v in options.items() if k != "seed"} | (
        {"seed": 3} if "noise" in name or "smooth" in name else {}
    )


@pytest.mark.parametrize("name, fault_name", CASES)
def test_fault_mid_run_restores_everything_and_the_next_call_is_as_on_a_fresh_model(name, fault_name, monkeypatch):
    monkeypatch.setattr(batching, "AUTO_START", 16)
    factory, options = METHODS[name]
    options = _options(options, name)
    make_error, in_backward = FAULTS[fault_name]
    x = inputs_for((3, 6, 6), 3, 9).requires_grad_(True)
    fresh = factory(Deep(Fault())).attribute(x, target=2, **options)

    fault = Fault(make_error(), fail_at=2, in_backward=in_backward)
    model = Deep(fault)
    untidy(model, 4)
    before = snapshot(model, (x,))
    rng_before = _rng_states()
    error_type = type(make_error())
    with pytest.raises(error_type):
        factory(model).attribute(x, target=2, **options)
    assert fault.calls >= 2  # the fault struck mid-run, after earlier blocks had run
    assert_same(before, snapshot(model, (x,)))
    rng_after = _rng_states()
    assert torch.equal(rng_before[0], rng_after[0]) and rng_before[1:] == rng_after[1:]

    fault.error = None  # the same model, healed: the next call gives the fresh model's result exactly
    again = factory(model).attribute(x, target=2, **options)
    assert torch.equal(again, fresh)
    assert_same(before, snapshot(model, (x,)))


def test_failure_in_a_later_block_of_the_target_callable_restores_state():
    model = ResidualBNNet(seed=2)
    untidy(model, 2)
    x = inputs_for((3, 6, 6), 4, 2)
    before = snapshot(model, (x,))
    calls = []

    def target(out: torch.Tensor) -> torch.Tensor:
        calls.append(out.shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return out[:, 1]

    with pytest.raises(KeyboardInterrupt):
        IntegratedGradients(model).attribute(x, target=target, n_steps=10, batch_size=8)
    assert_same(before, snapshot(model, (x,)))
    torch.testing.assert_close(
        IntegratedGradients(model).attribute(x, target=lambda out: out[:, 1], n_steps=10, batch_size=8),
        IntegratedGradients(ResidualBNNet(seed=2)).attribute(x, target=1, n_steps=10, batch_size=8),
    )


def test_rule_methods_honour_gradient_hooks_registered_in_forward():
    from captum.attr import GuidedBackprop as CaptumGuidedBackprop

    class Hooked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 5)
            self.b = nn.Linear(5, 2)
            self.relu = nn.ReLU()  # Captum guides nn.ReLU modules only, not torch.relu

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relu(self.a(x))
            if h.requires_grad:
                h.register_hook(lambda g: g * 2)
            return self.b(h)

    model = Hooked()
    x = inputs_for((4,), 3, 0)
    theirs = CaptumGuidedBackprop(model).attribute(x.clone(), target=0)
    torch.testing.assert_close(GuidedBackprop(model).attribute(x, target=0), theirs)
