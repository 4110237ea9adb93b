"""Invariants every method must satisfy, over random small models and batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attrib
from attrib.lrp import EpsilonAlpha2Beta1
from attrib.methods.deeplift import DeepLift, DeepLiftShap
from attrib.methods.feature_ablation import FeatureAblation, FeaturePermutation
from attrib.methods.gradient_shap import GradientShap
from attrib.methods.kernel_shap import KernelShap
from attrib.methods.layer_activation import LayerActivation, LayerGradientXActivation
from attrib.methods.layer_integrated_gradients import LayerConductance, LayerIntegratedGradients
from attrib.methods.lime import Lime
from attrib.methods.lrp import LRP
from attrib.methods.shapley import ShapleyValueSampling
from attrib.perturb.feature_masks import grid_mask

from .models import ResidualBNNet, build, inputs_for, specs


class Referenced:
    """A reference-set method (DeepLiftShap, GradientShap) with two fixed references of the inputs' shape.

    The references depend on the inputs' shape, dtype and device only, never on their values, so
    batch composition leaves them alone.
    """

    def __init__(self, method: attrib.Attribution) -> None:
        self.method = method

    def attribute(self, x: torch.Tensor, target=None, **options):
        g = torch.Generator().manual_seed(11)
        references = torch.rand((2, *x.shape[1:]), generator=g, dtype=torch.float64).to(x.device, x.dtype)
        return self.method.attribute(x, target=target, baselines=references, **options)


class Masked:
    """A feature method over 2x2 cells of the image (at most 9 features), the mask read off the inputs' shape."""

    def __init__(self, method: attrib.Attribution) -> None:
        self.method = method

    def attribute(self, x: torch.Tensor, target=None, **options):
        return self.method.attribute(x, target=target, feature_mask=grid_mask(x.shape[-2:], 2), **options)


def _first_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The model's first module: a spec model's conv (or Flatten), ResidualBNNet's stem."""
    return model[0] if isinstance(model, torch.nn.Sequential) else model.stem


# name -> (constructor, options, deterministic across batch composition, linear in the score)
METHODS = {
    "saliency": (attrib.Saliency, {}, True, False),
    "saliency_signed": (attrib.Saliency, {"abs": False}, True, True),
    "input_x_gradient": (attrib.InputXGradient, {}, True, True),
    "guided_backprop": (attrib.GuidedBackprop, {}, True, False),
    "deconvnet": (attrib.Deconvnet, {}, True, False),
    "integrated_gradients": (attrib.IntegratedGradients, {"n_steps": 4}, True, True),
    "noise_tunnel": (lambda m: attrib.NoiseTunnel(attrib.Saliency(m)), {"n_samples": 3, "seed": 1}, False, False),
    "pipeline": (lambda m: attrib.GuidedBackprop(m).then(attrib.ReduceChannels("sum")), {}, True, False),
    # Deterministic newer methods (feature methods with the default mask: every element a feature).
    "deeplift": (DeepLift, {}, True, True),
    "deeplift_shap": (lambda m: Referenced(DeepLiftShap(m)), {}, True, True),
    "lrp": (LRP, {}, True, True),
    "lrp_alpha2beta1": (lambda m: LRP(m, EpsilonAlpha2Beta1()), {}, True, True),
    "feature_ablation": (FeatureAblation, {}, True, True),
    "layer_integrated_gradients": (lambda m: LayerIntegratedGradients(m, _first_layer(m)), {"n_steps": 4}, True, True),
    "layer_conductance": (lambda m: LayerConductance(m, _first_layer(m)), {"n_steps": 4}, True, True),
    "layer_activation": (lambda m: LayerActivation(m, _first_layer(m)), {}, True, False),  # the target only shapes
    "layer_gradient_x_activation": (lambda m: LayerGradientXActivation(m, _first_layer(m)), {}, True, True),
}
# Seeded newer methods, apart so that tests/test_cuda.py (which compares CPU and CUDA maps of METHODS, and
# CUDA generators draw other streams) keeps to deterministic methods.
SEEDED = {
    # The draws of an example depend on its batch (one draw per example per copy).
    "gradient_shap": (lambda m: Referenced(GradientShap(m)), {"n_samples": 3, "stdev": 0.1, "seed": 1}, False, True),
    # Shuffles features across the batch: a dataset-level importance, N >= 2.
    "feature_permutation": (FeaturePermutation, {"seed": 1}, False, True),
    # Orders and coalitions are shared by the examples.
    "shapley": (lambda m: Masked(ShapleyValueSampling(m)), {"n_samples": 3, "seed": 1}, True, True),
    "kernel_shap": (lambda m: Masked(KernelShap(m)), {"n_samples": 12, "seed": 1}, True, True),
    "lime": (lambda m: Masked(Lime(m)), {"n_samples": 12, "seed": 1}, True, False),  # lasso: not linear in scores
    "lime_linear": (Lime, {"n_samples": 8, "seed": 1, "interpretable_model": "linear"}, True, True),  # per element
}
METHODS_AND_SEEDED = METHODS | SEEDED
NAMES = sorted(METHODS_AND_SEEDED)
#: Maps of the first layer, not of the inputs.
LAYER = {"layer_integrated_gradients", "layer_conductance", "layer_activation", "layer_gradient_x_activation"}
#: DeepLift runs (input, reference) pairs, two rows each.
MIN_BATCH_SIZE = {"deeplift": 2, "deeplift_shap": 2}
#: FeaturePermutation permutes across the batch.
MIN_N = {"feature_permutation": 2}


def _model_and_inputs(spec, n, dtype=torch.float64, name=""):
    model = build(spec).to(dtype)
    return model, inputs_for(spec.input_shape, max(n, MIN_N.get(name, 1)), spec.seed, dtype)


# NoiseTunnel's noise for an example depends on the batch it is drawn with; its
# own guarantees (seeded determinism, batch_size invariance) are in test_noise_tunnel.
@pytest.mark.parametrize("name", [name for name in NAMES if METHODS_AND_SEEDED[name][2]])
@given(spec=specs(), n=st.integers(1, 4), data=st.data())
def test_batch_equivariance(name, spec, n, data):
    make, options, _, _ = METHODS_AND_SEEDED[name]
    model, x = _model_and_inputs(spec, n, name=name)
    n = x.shape[0]
    targets = data.draw(st.lists(st.integers(0, spec.classes - 1), min_size=n, max_size=n))
    whole = make(model).attribute(x, target=targets, **options)
    for i in range(n):
        single = make(model).attribute(x[i : i + 1], target=targets[i : i + 1], **options)
        torch.testing.assert_close(whole[i : i + 1], single)


@pytest.mark.parametrize("name", NAMES)
@given(spec=specs(), n=st.integers(1, 3), k=st.integers(1, 3), data=st.data())
def test_multi_target_equals_per_target(name, spec, n, k, data):
    make, options, _, _ = METHODS_AND_SEEDED[name]
    model, x = _model_and_inputs(spec, n, name=name)
    n = x.shape[0]
    targets = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, spec.classes - 1), min_size=k, max_size=k), min_size=n, max_size=n))
    )
    multi = make(model).attribute(x, target=targets, **options)
    assert multi.shape[:2] == (n, k)
    for j in range(k):
        torch.testing.assert_close(multi[:, j], make(model).attribute(x, target=targets[:, j], **options))


@pytest.mark.parametrize("name", NAMES)
@given(spec=specs(), n=st.integers(1, 5), data=st.data())
def test_batch_size_does_not_change_results(name, spec, n, data):
    make, options, _, _ = METHODS_AND_SEEDED[name]
    model, x = _model_and_inputs(spec, n, name=name)
    n = x.shape[0]
    low = MIN_BATCH_SIZE.get(name, 1)
    batch_size = data.draw(st.integers(low, max(low, 3 * n)))
    whole = make(model).attribute(x, target=0, **options)
    torch.testing.assert_close(make(model).attribute(x, target=0, batch_size=batch_size, **options), whole)


@pytest.mark.parametrize("name", [name for name in NAMES if METHODS_AND_SEEDED[name][3]])
@given(spec=specs(), n=st.integers(1, 3), a=st.floats(-2, 2), b=st.floats(-2, 2))
def test_linear_in_a_callable_target(name, spec, n, a, b):
    make, options, _, _ = METHODS_AND_SEEDED[name]
    model, x = _model_and_inputs(spec, n, name=name)
    n = x.shape[0]
    first, second = 0, spec.classes - 1
    mixed = make(model).attribute(x, target=lambda out: a * out[:, first] + b * out[:, second], **options)
    parts = a * make(model).attribute(x, target=first, **options) + b * make(model).attribute(
        x, target=second, **options
    )
    torch.testing.assert_close(mixed, parts)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_and_shape_follow_the_input(name, dtype):
    make, options, _, _ = METHODS_AND_SEEDED[name]
    model = ResidualBNNet(seed=2).to(dtype)
    x = inputs_for((3, 6, 6), 2, 2, dtype)
    maps = make(model).attribute(x, target=[1, 3], **options)
    assert maps.dtype == dtype and maps.device == x.device
    expected = (2, 1, 6, 6) if name == "pipeline" else (2, 4, 6, 6) if name in LAYER else x.shape
    assert maps.shape == expected
    assert torch.isfinite(maps).all()


@pytest.mark.parametrize("name", NAMES)
def test_repeated_calls_are_identical(name):
    make, options, _, _ = METHODS_AND_SEEDED[name]
    model = ResidualBNNet(seed=3)
    x = inputs_for((3, 6, 6), 3, 3)
    assert torch.equal(make(model).attribute(x, **options), make(model).attribute(x, **options))


# --- transformer methods, on the tiny ViT ------------------------------------------------------------

TRANSFORMER_METHODS = {
    "attention_rollout": attrib.AttentionRollout,
    "gradient_weighted_rollout": attrib.GradientWeightedRollout,
    "attn_lrp": attrib.AttnLRP,
}


@pytest.mark.parametrize("name", sorted(TRANSFORMER_METHODS))
def test_transformer_methods_are_batch_equivariant_batch_size_free_and_per_target(name):
    from .test_reliability_methods import vit_images, vit_model

    make = TRANSFORMER_METHODS[name]
    model = vit_model().double()
    x = vit_images(3).double()
    targets = torch.tensor([[1, 4], [0, 2], [3, 3]])
    multi = make(model).attribute(x, target=targets)
    expected_map = (3, 1, 4, 4) if name != "attn_lrp" else tuple(x.shape)
    assert multi.shape == (3, 2, *expected_map[1:]) and multi.dtype == torch.float64
    for k in range(2):
        single = make(model).attribute(x, target=targets[:, k])
        torch.testing.assert_close(multi[:, k], single)
        assert single.shape == expected_map
    whole = multi[:, 0]
    for i in range(3):  # one example at a time
        torch.testing.assert_close(make(model).attribute(x[i : i + 1], target=targets[i : i + 1, 0]), whole[i : i + 1])
    for batch_size in (1, 2):
        torch.testing.assert_close(make(model).attribute(x, target=targets[:, 0], batch_size=batch_size), whole)
    assert torch.equal(make(model).attribute(x, target=targets[:, 0]), make(model).attribute(x, target=targets[:, 0]))


@pytest.mark.parametrize("name", sorted(TRANSFORMER_METHODS))
def test_transformer_maps_follow_the_inputs_dtype(name):
    from .test_reliability_methods import vit_images, vit_model

    make = TRANSFORMER_METHODS[name]
    exact = make(vit_model().double()).attribute(vit_images(2).double(), target=[1, 3])
    maps = make(vit_model()).attribute(vit_images(2), target=[1, 3])
    assert maps.dtype == torch.float32 and maps.device == exact.device and torch.isfinite(maps).all()
    torch.testing.assert_close(maps.double(), exact, rtol=1e-3, atol=1e-4 * float(exact.abs().max()))
