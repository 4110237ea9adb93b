"""The model and the inputs come back bit-exact, on success and on error, across threads."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules import module as module_globals

import attrib
from attrib.lrp import EpsilonAlpha2Beta1, EpsilonGammaBox
from attrib.targets import Neuron

from .models import ResidualBNNet, SmoothNet, build, inputs_for, specs


class Tripwire(nn.Module):
    """Identity that raises on its ``fail_at``-th call (0: never)."""

    def __init__(self, fail_at: int = 0) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        return x


METHODS = {
    "saliency": lambda m: (attrib.Saliency(m), {}),
    "input_x_gradient": lambda m: (attrib.InputXGradient(m), {}),
    "guided_backprop": lambda m: (attrib.GuidedBackprop(m), {}),
    "deconvnet": lambda m: (attrib.Deconvnet(m), {}),
    "integrated_gradients": lambda m: (attrib.IntegratedGradients(m), {"n_steps": 3, "batch_size": 2}),
    "noise_tunnel": lambda m: (
        attrib.NoiseTunnel(attrib.GuidedBackprop(m)),
        {"n_samples": 3, "seed": 0, "batch_size": 2},
    ),
    "pipeline": lambda m: (attrib.Saliency(m).then(attrib.ReduceChannels("l2")), {}),
    "product": lambda m: (attrib.GuidedBackprop(m) * attrib.InputXGradient(m), {}),
}


def _background(x: torch.Tensor) -> torch.Tensor:
    return torch.rand((2, *x.shape[1:]), generator=torch.Generator().manual_seed(3), dtype=x.dtype)


#: The newer methods; each entry also takes the inputs (reference sets have their shape). Feature methods
#: use the default mask (every element a feature, at most 108 here); layer methods a layer of the model.
NEWER = {
    "deeplift": lambda m, x: (attrib.DeepLift(m), {"batch_size": 2}),
    "deeplift_shap": lambda m, x: (attrib.DeepLiftShap(m), {"baselines": _background(x), "batch_size": 4}),
    "gradient_shap": lambda m, x: (
        attrib.GradientShap(m),
        {"baselines": _background(x), "n_samples": 3, "stdev": 0.1, "seed": 0, "batch_size": 2},
    ),
    "lrp": lambda m, x: (attrib.LRP(m), {"batch_size": 1}),
    "lrp_alpha2beta1": lambda m, x: (attrib.LRP(m, EpsilonAlpha2Beta1()), {}),
    "lrp_gamma_box": lambda m, x: (attrib.LRP(m, EpsilonGammaBox(low=-3.0, high=3.0)), {}),
    "feature_ablation": lambda m, x: (attrib.FeatureAblation(m), {"batch_size": 16}),
    "feature_permutation": lambda m, x: (attrib.FeaturePermutation(m), {"seed": 0, "batch_size": 16}),
    "shapley": lambda m, x: (attrib.ShapleyValueSampling(m), {"n_samples": 2, "seed": 0, "batch_size": 32}),
    "kernel_shap": lambda m, x: (attrib.KernelShap(m), {"n_samples": 8, "seed": 0, "batch_size": 4}),
    "lime": lambda m, x: (attrib.Lime(m), {"n_samples": 8, "seed": 0, "batch_size": 4}),
    "layer_integrated_gradients": lambda m, x: (
        attrib.LayerIntegratedGradients(m, m[-1]),
        {"n_steps": 3, "batch_size": 2},
    ),
    "layer_conductance": lambda m, x: (attrib.LayerConductance(m, m[-1]), {"n_steps": 3, "batch_size": 2}),
    "layer_activation": lambda m, x: (attrib.LayerActivation(m, m[0]), {"batch_size": 1}),
    "layer_gradient_x_activation": lambda m, x: (attrib.LayerGradientXActivation(m, m[0]), {"batch_size": 1}),
    # A Neuron target (a unit of the head, or the mean of the first layer's output) instead of a class.
    "neuron_saliency": lambda m, x: (attrib.Saliency(m), {"target": Neuron(m[-1], 1)}),
    "neuron_integrated_gradients": lambda m, x: (
        attrib.IntegratedGradients(m),
        {"target": Neuron(m[0], lambda a: a.flatten(1).mean(1)), "n_steps": 3, "batch_size": 2},
    ),
    "neuron_deeplift": lambda m, x: (attrib.DeepLift(m), {"target": Neuron(m[-1], 0), "batch_size": 2}),
    "neuron_lrp": lambda m, x: (attrib.LRP(m), {"target": Neuron(m[-1], 1), "batch_size": 1}),
    "neuron_feature_ablation": lambda m, x: (
        attrib.FeatureAblation(m),
        {"target": Neuron(m[-1], 1), "batch_size": 8},
    ),
}


def _global_hook_counts() -> tuple[int, ...]:
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return tuple(len(getattr(module_globals, name, {})) for name in names)


def snapshot(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
        "global_hooks": _global_hook_counts(),
        "inputs": [(x.clone(), x.requires_grad, x.grad, x._version, x.grad_fn) for x in inputs],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), key
    for key in ("training", "requires_grad", "inplace", "hooks", "global_hooks"):
        assert before[key] == after[key], key
    for g0, g1 in zip(before["grad"], after["grad"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for (x0, rg0, grad0, v0, fn0), (x1, rg1, grad1, v1, fn1) in zip(before["inputs"], after["inputs"]):
        assert torch.equal(x0, x1) and rg0 == rg1 and grad0 is None and grad1 is None and v0 == v1 and fn0 is fn1


def untidy(model: nn.Module, seed: int) -> None:
    """Give the model state worth restoring: mixed modes, frozen params, existing grads."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    for i, m in enumerate(model.modules()):
        if i % 3 == 2:
            m.eval()
    for i, p in enumerate(model.parameters()):
        if i % 4 == 1:
            p.requires_grad_(False)
        elif i % 4 == 2:
            p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("name", sorted(METHODS))
@given(spec=specs(), fail_at=st.integers(0, 3), n=st.integers(1, 3))
def test_state_restored_after_success_and_injected_failure(name, spec, fail_at, n):
    inner = build(spec)
    model = nn.Sequential(inner[0], Tripwire(fail_at), *list(inner)[1:])
    untidy(model, spec.seed)
    x = inputs_for(spec.input_shape, n, spec.seed).requires_grad_(spec.seed % 2 == 0)
    before = snapshot(model, (x,))
    method, options = METHODS[name](model)
    try:
        method.attribute(x, target=0, **options)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(model, (x,)))


@pytest.mark.parametrize("name", sorted(NEWER))
@given(spec=specs(), fail_at=st.integers(0, 3), n=st.integers(1, 3))
def test_newer_methods_restore_state_after_success_and_injected_failure(name, spec, fail_at, n):
    inner = build(spec)
    tripwire = Tripwire(fail_at)
    model = nn.Sequential(inner[0], tripwire, *list(inner)[1:])
    untidy(model, spec.seed)
    n = max(n, 2) if name == "feature_permutation" else n  # permutes across the batch: N >= 2
    x = inputs_for(spec.input_shape, n, spec.seed).requires_grad_(spec.seed % 2 == 0)
    before = snapshot(model, (x,))
    method, options = NEWER[name](model, x)
    try:
        method.attribute(x, **{"target": 0, **options})
    except RuntimeError as err:
        assert "injected failure" in str(err)
    else:
        assert fail_at == 0 or tripwire.calls < fail_at  # the fault was not reached
    assert_same(before, snapshot(model, (x,)))


def _vit_with_tripwire(fail_at: int) -> tuple[nn.Module, Tripwire]:
    from .test_reliability_methods import vit_model

    model = vit_model()
    tripwire = Tripwire(fail_at)
    block = model.encoder.layers[0]  # deep inside: after the first encoder layer's attention-and-MLP
    block.mlp = nn.Sequential(block.mlp, nn.Sequential(tripwire))
    return model, tripwire


TRANSFORMER_METHODS = {
    "attention_rollout": lambda m: (attrib.AttentionRollout(m), {"batch_size": 1}),
    "gradient_weighted_rollout": lambda m: (attrib.GradientWeightedRollout(m), {"batch_size": 1}),
    "attn_lrp": lambda m: (attrib.AttnLRP(m), {"batch_size": 1}),
    "neuron_attn_lrp": lambda m: (
        attrib.AttnLRP(m),
        {"target": Neuron(m.encoder.layers[1].mlp, (0, 3)), "batch_size": 1},
    ),
}


@pytest.mark.parametrize("fail_at", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(TRANSFORMER_METHODS))
def test_transformer_methods_restore_state_after_success_and_injected_failure(name, fail_at):
    from .test_reliability_methods import vit_images

    model, tripwire = _vit_with_tripwire(fail_at)
    untidy(model, fail_at)
    x = vit_images(2).requires_grad_(fail_at == 1)
    before = snapshot(model, (x,))
    method, options = TRANSFORMER_METHODS[name](model)
    if fail_at:
        with pytest.raises(RuntimeError, match="injected failure"):
            method.attribute(x, **{"target": 1, **options})
    else:
        method.attribute(x, **{"target": 1, **options})
    assert_same(before, snapshot(model, (x,)))


def test_model_is_in_eval_mode_during_the_call_and_train_mode_after():
    seen = []
    model = ResidualBNNet()
    model.stem.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    model.train()
    attrib.Saliency(model).attribute(inputs_for((3, 6, 6), 2, 0), target=1)
    assert seen == [False] and model.training and all(m.training for m in model.modules())


def test_opting_out_of_eval_mode_keeps_train_mode_and_restores_running_stats():
    seen = []
    model = ResidualBNNet()
    model.stem.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    model.train()
    before = snapshot(model, ())
    attrib.IntegratedGradients(model, eval_mode=False).attribute(inputs_for((3, 6, 6), 2, 0), target=1, n_steps=3)
    assert seen == [True]
    assert_same(before, snapshot(model, ()))


def test_error_in_target_callable_restores_state():
    model = ResidualBNNet()
    untidy(model, 0)
    x = inputs_for((3, 6, 6), 2, 0)
    before = snapshot(model, (x,))

    def bad_target(output):
        raise KeyError("in target")

    with pytest.raises(KeyError):
        attrib.GuidedBackprop(model).attribute(x, target=bad_target)
    assert_same(before, snapshot(model, (x,)))


def test_works_under_no_grad_and_inference_mode():
    model = SmoothNet(seed=1)
    x = inputs_for((6,), 2, 1)
    expected = attrib.Saliency(model).attribute(x, target=0)
    with torch.no_grad():
        torch.testing.assert_close(attrib.Saliency(model).attribute(x, target=0), expected)
    with torch.inference_mode():
        x_inference = x.clone()
        got = attrib.IntegratedGradients(model).attribute(x_inference, target=0, n_steps=4)
    torch.testing.assert_close(got, attrib.IntegratedGradients(model).attribute(x, target=0, n_steps=4))


def test_threads_share_a_model_safely():
    model = ResidualBNNet(seed=1)
    untidy(model, 1)
    x = inputs_for((3, 6, 6), 3, 1)
    before = snapshot(model, (x,))
    expected_gbp = attrib.GuidedBackprop(model).attribute(x, target=2)
    expected_sal = attrib.Saliency(model).attribute(x, target=2)
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                method = attrib.GuidedBackprop(model) if i % 2 else attrib.Saliency(model)
                results[i] = method.attribute(x, target=2)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, r in results.items():
        torch.testing.assert_close(r, expected_gbp if i % 2 else expected_sal)
    assert_same(before, snapshot(model, (x,)))
