"""Faults: an exception at any depth of forward or backward, or KeyboardInterrupt mid-run, leaves the model,
the inputs and the process as they were, and the next call gives exactly the result of a fresh model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from attrib.core import batching
from attrib.lrp import EpsilonAlpha2Beta1
from attrib.methods.attention import AttentionRollout, GradientWeightedRollout
from attrib.methods.attn_lrp import AttnLRP
from attrib.methods.deeplift import DeepLift, DeepLiftShap
from attrib.methods.feature_ablation import FeatureAblation, FeaturePermutation
from attrib.methods.gradient import InputXGradient, Saliency
from attrib.methods.gradient_shap import GradientShap
from attrib.methods.integrated_gradients import IntegratedGradients
from attrib.methods.kernel_shap import KernelShap
from attrib.methods.layer_activation import LayerActivation, LayerGradientXActivation
from attrib.methods.layer_integrated_gradients import LayerConductance, LayerIntegratedGradients
from attrib.methods.lime import Lime
from attrib.methods.lrp import LRP
from attrib.methods.modified_backprop import Deconvnet, GuidedBackprop
from attrib.methods.noise_tunnel import NoiseTunnel
from attrib.methods.shapley import ShapleyValueSampling
from attrib.perturb.feature_masks import grid_mask
from attrib.postprocess import ReduceChannels
from attrib.targets import Neuron

from .models import ResidualBNNet, inputs_for
from .test_reliability_methods import NeuronTarget, vit_images, vit_model
from .test_state import assert_same, snapshot, untidy


class Fault(nn.Module):
    """Identity that raises ``error`` on its ``fail_at``-th forward call, or in the backward of that call.

    A backward fault waits, from the ``fail_at``-th call on, for the first call with gradients (passes
    without them, such as a layer method's passes reading the layer, have no backward to strike).
    """

    def __init__(self, error: BaseException | None = None, fail_at: int = 0, in_backward: bool = False) -> None:
        super().__init__()
        self.error = error
        self.fail_at = fail_at
        self.in_backward = in_backward
        self.calls = 0
        self.armed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.error is None or self.calls < self.fail_at or not self.armed:
            return x
        if not self.in_backward:
            self.armed = False
            raise self.error
        if not x.requires_grad:
            return x
        self.armed = False
        error = self.error

        def explode(grad: torch.Tensor) -> torch.Tensor:
            raise error

        if x.grad_fn is None:
            x = x * 1.0  # never hook the caller's leaf
        x.register_hook(explode)  # on the incoming tensor: no new node for rule-based methods (LRP) to meet
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
BACKGROUND = torch.rand((2, 3, 6, 6), generator=torch.Generator().manual_seed(7))  # references (B=2)
CELLS = grid_mask((6, 6), 3)  # four 3x3 cells
STEM = "net.stem.0.0"  # Deep's first convolution
METHODS |= {
    "deeplift": (DeepLift, {"batch_size": 2}),
    "deeplift_shap": (DeepLiftShap, {"baselines": BACKGROUND, "batch_size": 4}),
    "gradient_shap": (
        GradientShap,
        {"baselines": BACKGROUND, "n_samples": 4, "stdev": 0.1, "seed": 3, "batch_size": 5},
    ),
    "lrp": (LRP, {"batch_size": 1}),
    "lrp_alpha2beta1": (lambda m: LRP(m, EpsilonAlpha2Beta1()), {"batch_size": 2}),
    "feature_ablation": (FeatureAblation, {"feature_mask": CELLS, "batch_size": 3}),
    "feature_permutation": (
        FeaturePermutation,
        {"feature_mask": CELLS, "n_permutations": 2, "seed": 3, "batch_size": 5},
    ),
    "shapley": (ShapleyValueSampling, {"feature_mask": CELLS, "n_samples": 3, "seed": 3, "batch_size": 4}),
    "kernel_shap": (KernelShap, {"feature_mask": CELLS, "n_samples": 10, "seed": 3, "batch_size": 4}),
    "lime": (Lime, {"feature_mask": CELLS, "n_samples": 10, "seed": 3, "batch_size": 4}),
    # At the stem's convolution, below the fault, so that backward faults lie between the layer and the score.
    "layer_integrated_gradients": (lambda m: LayerIntegratedGradients(m, STEM), {"n_steps": 5, "batch_size": 4}),
    "layer_conductance": (lambda m: LayerConductance(m, STEM), {"n_steps": 5, "batch_size": 4}),
    "layer_activation": (lambda m: LayerActivation(m, STEM), {"batch_size": 1}),
    "layer_gradient_x_activation": (lambda m: LayerGradientXActivation(m, STEM), {"batch_size": 1}),
    # A Neuron target instead of the class: a unit of conv2's output, a channel's mean, a head unit.
    "neuron_integrated_gradients": (
        lambda m: NeuronTarget(IntegratedGradients(m), Neuron(m.net.conv2, (1, 2, 2))),
        {"n_steps": 6, "batch_size": 4},
    ),
    "neuron_deeplift": (
        lambda m: NeuronTarget(DeepLift(m), Neuron(m.net.conv2, lambda a: a[:, 3].mean((1, 2)))),
        {"batch_size": 2},
    ),
    "neuron_shapley": (
        lambda m: NeuronTarget(ShapleyValueSampling(m), Neuron(m.net.head, 4)),
        {"feature_mask": CELLS, "n_samples": 2, "seed": 3, "batch_size": 4},
    ),
}
#: Methods without a backward pass: faults strike their forward passes only.
FORWARD_ONLY = {
    "feature_ablation",
    "feature_permutation",
    "shapley",
    "kernel_shap",
    "lime",
    "layer_activation",
    "neuron_shapley",
}

FAULTS = {
    "runtime_error_in_forward": (lambda: RuntimeError("injected"), False),
    "keyboard_interrupt_in_forward": (lambda: KeyboardInterrupt(), False),
    "value_error_in_backward": (lambda: ValueError("injected in backward"), True),
    "keyboard_interrupt_in_backward": (lambda: KeyboardInterrupt(), True),
}
# Every method meets an interrupt in forward and an error in backward; the other two faults on a few methods.
CASES = [
    (name, fault)
    for name in sorted(METHODS)
    for fault in (
        ("keyboard_interrupt_in_forward", "runtime_error_in_forward")
        if name in FORWARD_ONLY
        else ("keyboard_interrupt_in_forward", "value_error_in_backward")
    )
]
CASES += [
    (name, fault)
    for name in ("integrated_gradients", "noise_tunnel", "guided_backprop")
    for fault in ("runtime_error_in_forward", "keyboard_interrupt_in_backward")
]


def _rng_states() -> tuple[torch.Tensor, object, object]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tobytes()


def _options(options: dict, name: str) -> dict:
    return options | ({"seed": 3} if "noise" in name or "smooth" in name else {})


def _check_fault(factory, options, build, x, target, fault_name) -> None:
    """A fault mid-run leaves everything as it was, and the healed model then gives the fresh model's result."""
    make_error, in_backward = FAULTS[fault_name]
    fresh = factory(build(Fault())).attribute(x, target=target, **options)

    fault = Fault(make_error(), fail_at=2, in_backward=in_backward)
    model = build(fault)
    untidy(model, 4)
    before = snapshot(model, (x,))
    rng_before = _rng_states()
    error_type = type(make_error())
    with pytest.raises(error_type):
        factory(model).attribute(x, target=target, **options)
    assert fault.calls >= 2  # the fault struck mid-run, after earlier blocks had run
    assert_same(before, snapshot(model, (x,)))
    rng_after = _rng_states()
    assert torch.equal(rng_before[0], rng_after[0]) and rng_before[1:] == rng_after[1:]

    fault.error = None  # the same model, healed: the next call gives the fresh model's result exactly
    again = factory(model).attribute(x, target=target, **options)
    assert torch.equal(again, fresh)
    assert_same(before, snapshot(model, (x,)))


@pytest.mark.parametrize("name, fault_name", CASES)
def test_fault_mid_run_restores_everything_and_the_next_call_is_as_on_a_fresh_model(name, fault_name, monkeypatch):
    monkeypatch.setattr(batching, "AUTO_START", 16)
    factory, options = METHODS[name]
    x = inputs_for((3, 6, 6), 3, 9).requires_grad_(True)
    _check_fault(factory, _options(options, name), Deep, x, 2, fault_name)


def _deep_vit(fault: Fault) -> nn.Module:
    """The tiny ViT with the fault planted in its first encoder layer, after the MLP, two modules deep."""
    model = vit_model()
    block = model.encoder.layers[0]
    block.mlp = nn.Sequential(block.mlp, nn.Sequential(fault))
    return model


TRANSFORMER_METHODS = {
    "attention_rollout": (AttentionRollout, {"batch_size": 1}),
    "gradient_weighted_rollout": (GradientWeightedRollout, {"batch_size": 1}),
    "attn_lrp": (AttnLRP, {"batch_size": 1}),
}
TRANSFORMER_CASES = [
    ("attention_rollout", "keyboard_interrupt_in_forward"),
    ("attention_rollout", "runtime_error_in_forward"),
] + [
    (name, fault)
    for name in ("gradient_weighted_rollout", "attn_lrp")
    for fault in ("keyboard_interrupt_in_forward", "value_error_in_backward", "keyboard_interrupt_in_backward")
]


@pytest.mark.parametrize("name, fault_name", TRANSFORMER_CASES)
def test_fault_mid_run_in_a_transformer_restores_everything(name, fault_name):
    factory, options = TRANSFORMER_METHODS[name]
    x = vit_images(2).requires_grad_(True)
    _check_fault(factory, options, _deep_vit, x, 3, fault_name)


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
