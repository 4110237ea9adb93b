"""Several threads attributing at once give exactly the serial results, and leave shared models as they were.

Each thread explains different inputs, so any cross-talk (a hook of one call catching another
thread's forward pass, a state guard restoring too early, shared RNG) changes a map and is caught.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import attrib
from attrib.lrp import EpsilonGammaBox
from attrib.methods.attention import AttentionRollout, GradientWeightedRollout
from attrib.methods.attn_lrp import AttnLRP
from attrib.methods.cam import GradCAM
from attrib.methods.deeplift import DeepLift, DeepLiftShap
from attrib.methods.eigen_cam import EigenCAM
from attrib.methods.excitation import ContrastiveExcitationBackprop, ExcitationBackprop
from attrib.methods.feature_ablation import FeatureAblation, FeaturePermutation
from attrib.methods.gradient import InputXGradient, Saliency
from attrib.methods.gradient_shap import GradientShap
from attrib.methods.guided_grad_cam import GuidedGradCAM
from attrib.methods.integrated_gradients import IntegratedGradients
from attrib.methods.kernel_shap import KernelShap
from attrib.methods.layer_activation import LayerActivation, LayerGradientXActivation
from attrib.methods.layer_integrated_gradients import LayerConductance, LayerIntegratedGradients
from attrib.methods.lime import Lime
from attrib.methods.lrp import LRP
from attrib.methods.modified_backprop import Deconvnet, GuidedBackprop
from attrib.methods.noise_tunnel import NoiseTunnel
from attrib.methods.occlusion import Occlusion
from attrib.methods.rise import RISE
from attrib.methods.score_cam import ScoreCAM
from attrib.methods.shapley import ShapleyValueSampling
from attrib.perturb.feature_masks import grid_mask
from attrib.targets import Neuron

from .models import ResidualBNNet, inputs_for
from .test_reliability_methods import NeuronTarget, vit_images, vit_model
from .test_state import assert_same, snapshot, untidy

Factory = Callable[[nn.Module], attrib.Attribution]

METHODS: dict[str, tuple[Factory, dict[str, Any]]] = {
    "saliency": (Saliency, {}),
    "input_x_gradient": (InputXGradient, {}),
    "guided_backprop": (GuidedBackprop, {}),
    "deconvnet": (Deconvnet, {}),
    "integrated_gradients": (IntegratedGradients, {"n_steps": 6, "batch_size": 5}),
    "noise_tunnel": (lambda m: NoiseTunnel(GuidedBackprop(m)), {"n_samples": 4, "seed": 2, "batch_size": 3}),
    "grad_cam": (lambda m: GradCAM(m, "conv2"), {}),
    "guided_times_saliency": (lambda m: GuidedBackprop(m) * Saliency(m), {}),
    "guided_grad_cam": (lambda m: GuidedGradCAM(m, "conv2"), {}),
    "score_cam": (lambda m: ScoreCAM(m, "conv2"), {"batch_size": 3}),
    "eigen_cam": (lambda m: EigenCAM(m, "conv2"), {}),
    "excitation_backprop": (lambda m: ExcitationBackprop(m, "conv2"), {}),
    "contrastive_excitation_backprop": (lambda m: ContrastiveExcitationBackprop(m, "conv2", "pool"), {}),
    "occlusion": (Occlusion, {"window": (3, 3, 3), "stride": (3, 2, 2), "batch_size": 4}),
    "rise": (RISE, {"num_masks": 24, "seed": 1, "batch_size": 8}),
}
BACKGROUND = torch.rand((3, 3, 8, 8), generator=torch.Generator().manual_seed(6))  # references (B=3)
CELLS = grid_mask((8, 8), 4)  # four 4x4 cells
METHODS |= {
    "deeplift": (DeepLift, {"batch_size": 2}),
    "deeplift_shap": (DeepLiftShap, {"baselines": BACKGROUND, "batch_size": 4}),
    "gradient_shap": (
        GradientShap,
        {"baselines": BACKGROUND, "n_samples": 4, "stdev": 0.1, "seed": 2, "batch_size": 3},
    ),
    "lrp": (LRP, {}),
    "lrp_gamma_box": (lambda m: LRP(m, EpsilonGammaBox(low=-3.0, high=3.0)), {"batch_size": 1}),
    "feature_ablation": (FeatureAblation, {"feature_mask": CELLS, "batch_size": 3}),
    "feature_permutation": (FeaturePermutation, {"feature_mask": CELLS, "seed": 2}),
    "shapley": (ShapleyValueSampling, {"feature_mask": CELLS, "n_samples": 3, "seed": 2, "batch_size": 5}),
    "kernel_shap": (KernelShap, {"feature_mask": CELLS, "n_samples": 10, "seed": 2, "batch_size": 4}),
    "lime": (Lime, {"feature_mask": CELLS, "n_samples": 10, "seed": 2, "batch_size": 4}),
    "layer_integrated_gradients": (lambda m: LayerIntegratedGradients(m, "conv2"), {"n_steps": 4, "batch_size": 3}),
    "layer_conductance": (lambda m: LayerConductance(m, "conv2"), {"n_steps": 4, "batch_size": 3}),
    "layer_activation": (lambda m: LayerActivation(m, "conv2"), {}),
    "layer_gradient_x_activation": (lambda m: LayerGradientXActivation(m, "conv2"), {"batch_size": 1}),
    # A Neuron target, recorded by a hook during each call: the threads' hooks must not catch each other's passes.
    "neuron_saliency": (lambda m: NeuronTarget(Saliency(m), Neuron(m.conv2, (1, 3, 3))), {}),
    "neuron_integrated_gradients": (
        lambda m: NeuronTarget(IntegratedGradients(m), Neuron(m.relu1, lambda a: a[:, 2].mean((1, 2)))),
        {"n_steps": 4, "batch_size": 3},
    ),
    "neuron_deeplift": (lambda m: NeuronTarget(DeepLift(m), Neuron(m.head, 3)), {"batch_size": 2}),
    "neuron_lrp": (lambda m: NeuronTarget(LRP(m), Neuron(m.conv2, (0, 2, 5))), {}),
    "neuron_feature_ablation": (
        lambda m: NeuronTarget(FeatureAblation(m), Neuron(m.conv2, (3, 4, 4))),
        {"feature_mask": CELLS, "batch_size": 4},
    ),
}

THREADS = 4
ROUNDS = 2


def _run_in_threads(work: Callable[[int], torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """Run ``work(i)`` ROUNDS times in each of THREADS threads started together; re-raise any error."""
    barrier = threading.Barrier(THREADS)
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(THREADS)}
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(ROUNDS):
                results[i].append(work(i))
        except BaseException as err:  # reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


SHARED = sorted(METHODS)


@pytest.mark.parametrize("name", SHARED)
def test_one_method_on_one_shared_model_from_several_threads(name):
    factory, options = METHODS[name]
    model = ResidualBNNet(seed=4)
    untidy(model, 4)
    inputs = [inputs_for((3, 8, 8), 2, 10 + i) for i in range(THREADS)]
    targets = [i % 5 for i in range(THREADS)]
    before = snapshot(model, tuple(inputs))
    serial = [factory(model).attribute(x, target=t, **options) for x, t in zip(inputs, targets)]
    assert_same(before, snapshot(model, tuple(inputs)))

    method = factory(model)  # one method object shared by every thread
    results = _run_in_threads(lambda i: method.attribute(inputs[i], target=targets[i], **options))
    for i, maps in results.items():
        for m in maps:
            assert torch.equal(m, serial[i]), (name, i)
    assert_same(before, snapshot(model, tuple(inputs)))


class Logits(nn.Module):
    """A HuggingFace image classifier as ``pixels -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).logits


def _hf_vit() -> nn.Module:
    from .hf_models import tiny_vit

    return Logits(tiny_vit(0, num_labels=5))


TRANSFORMER_METHODS: dict[str, tuple[Factory, dict[str, Any]]] = {
    "attention_rollout": (AttentionRollout, {"batch_size": 1}),
    "gradient_weighted_rollout": (GradientWeightedRollout, {}),
    "attn_lrp": (AttnLRP, {"batch_size": 1}),
    "neuron_attn_lrp": (
        lambda m: NeuronTarget(AttnLRP(m), Neuron(m.model.vit.layers[1].mlp.fc2, (0, 3))),
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMER_METHODS))
def test_one_transformer_method_on_one_shared_vit_from_several_threads(name):
    """On HuggingFace's ViT with eager attention (read by a thread-local mode, no hooks)."""
    factory, options = TRANSFORMER_METHODS[name]
    model = _hf_vit()
    untidy(model, 5)
    inputs = list(vit_images(THREADS).split(1))
    targets = [i % 5 for i in range(THREADS)]
    before = snapshot(model, tuple(inputs))
    serial = [factory(model).attribute(x, target=t, **options) for x, t in zip(inputs, targets)]
    method = factory(model)
    results = _run_in_threads(lambda i: method.attribute(inputs[i], target=targets[i], **options))
    for i, maps in results.items():
        for m in maps:
            assert torch.equal(m, serial[i]), (name, i)
    assert_same(before, snapshot(model, tuple(inputs)))


@pytest.mark.parametrize("cls", [AttentionRollout, AttnLRP], ids=lambda c: c.__name__)
def test_threads_sharing_a_torchvision_vit_with_the_hook_race_forced(cls):
    """Thread B's forward takes its snapshot of the hooks while thread A's call is active; A then returns."""
    model = vit_model()
    x = vit_images(2)
    serial = cls(model).attribute(x, target=1)
    a_in_hooks, b_in_hooks, a_done = threading.Event(), threading.Event(), threading.Event()
    first = {}

    def blocker(module: nn.Module, args: Any, output: Any) -> None:  # registered before attrib's hooks
        me = threading.current_thread().name
        if first.setdefault(me, True) is False:
            return
        first[me] = False
        if me == "A":
            a_in_hooks.set()
            b_in_hooks.wait(5)  # B has taken its snapshot, which holds A's hooks (unless a fix serialises calls)
        elif me == "B":
            b_in_hooks.set()
            a_done.wait(5)  # A's call has returned and removed its hooks

    handle = model.encoder.layers[0].self_attention.register_forward_hook(blocker)
    results: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            if name == "B":
                a_in_hooks.wait(5)
            results[name] = cls(model).attribute(x, target=1)
        except BaseException as err:
            errors.append(err)
        finally:
            if name == "A":
                a_done.set()

    threads = [threading.Thread(target=run, args=(name,), name=name) for name in ("A", "B")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        handle.remove()
    if errors:
        raise errors[0]
    assert torch.equal(results["A"], serial) and torch.equal(results["B"], serial)


def test_different_methods_on_different_models_at_once():
    names = sorted(METHODS)
    models = {name: ResidualBNNet(seed=20 + k) for k, name in enumerate(names)}
    x = inputs_for((3, 8, 8), 3, 5)
    serial = {name: METHODS[name][0](models[name]).attribute(x, target=1, **METHODS[name][1]) for name in names}
    barrier = threading.Barrier(len(names))
    got: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def body(name: str) -> None:
        try:
            barrier.wait()
            factory, options = METHODS[name]
            got[name] = factory(models[name]).attribute(x, target=1, **options)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=body, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for name in names:
        assert torch.equal(got[name], serial[name]), name


def test_mixed_methods_on_one_shared_model_with_a_failing_thread():
    """A thread whose call fails does not disturb the others, and the shared model ends as it began."""
    model = ResidualBNNet(seed=8)
    untidy(model, 8)
    x = inputs_for((3, 8, 8), 2, 8)
    before = snapshot(model, (x,))
    expected = {name: METHODS[name][0](model).attribute(x, target=3, **METHODS[name][1]) for name in METHODS}
    names = sorted(METHODS)

    def work(i: int) -> torch.Tensor:
        if i == 0:
            with pytest.raises(ValueError, match="target class indices"):
                Saliency(model).attribute(x, target=17)
            return torch.zeros(())
        name = names[i % len(names)]
        factory, options = METHODS[name]
        result = factory(model).attribute(x, target=3, **options)
        assert torch.equal(result, expected[name]), name
        return result

    _run_in_threads(work)
    assert_same(before, snapshot(model, (x,)))
