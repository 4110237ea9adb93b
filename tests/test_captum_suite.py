"""Captum's own unit-test cases, run through Captum and through attrib (issue 12).

The cases (models, inputs, baselines, targets, masks and the values Captum's
tests hard-code) are recreated from Captum's ``tests/attr`` suite on the
models Captum ships in ``captum.testing.helpers``. Each case runs through
the Captum class and through attrib via the thin adapter of
:mod:`tests.captum_adapters`; they must agree to 1e-4 relative (to the largest
magnitude of Captum's map), and attrib must give the hard-coded values too.

Where the definitions differ on purpose the difference itself is asserted:

* Captum's DeepLift is wrong on a reused ReLU module (it refuses), on
  functional ReLUs and on ReLU next to max pooling; attrib equals a float64
  reference there. Softmax has no rescale rule in attrib (refused); the
  pre-softmax logits agree.
* Sampling methods draw with different RNGs, so the draws are made equal:
  Captum's Shapley sampling gets attrib's orders, FeaturePermutation gets
  attrib's permutations (``perm_func``), attrib's GradientShap replays
  Captum's draws. Exact Shapley values (Captum's ``ShapleyValues``) are
  attrib's sampler fed every order once.
* Captum-only forms (multiple layers at once, layers returning tuples, batch
  aggregated outputs) raise clear errors in attrib or run through an adapter.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from captum import attr as ca
from captum.testing.helpers import basic_models as bm
from captum.testing.helpers import classification_models as cm
from torch import Tensor, nn

import attrib
import attrib.methods.shapley as shapley_module
from attrib.methods.feature_ablation import batch_permutations
from attrib.methods.shapley import feature_orders
from attrib.rules import UnsupportedModelError

from . import reference_deeplift as ref
from .captum_adapters import ADAPTERS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns about its hooks

RTOL = 1e-4


# --- helpers -----------------------------------------------------------------------------------------


def seeded(build: Callable[[], Any], seed: int = 0) -> Any:
    """``build()`` with torch's global RNG seeded (Captum's models initialise from it), then restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def as_tuple(x: Any) -> tuple[Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def agree(ours: Any, theirs: Any, rtol: float = RTOL) -> None:
    """Every tensor of ``ours`` equals ``theirs`` to ``rtol`` relative to the largest magnitude in ``theirs``."""
    ours_t, theirs_t = as_tuple(ours), as_tuple(theirs)
    assert len(ours_t) == len(theirs_t)
    for o, t in zip(ours_t, theirs_t):
        t = torch.as_tensor(t).detach()
        o = torch.as_tensor(o).detach()
        assert o.shape == t.shape, f"shape {tuple(o.shape)} != Captum's {tuple(t.shape)}"
        scale = float(t.abs().max()) if t.numel() else 0.0
        torch.testing.assert_close(o.double(), t.double(), rtol=rtol, atol=rtol * max(scale, 1e-12))


def expect(ours: Any, expected: Any, atol: float = 1e-3) -> None:
    """``ours`` equals Captum's hard-coded values (lists, per input), absolutely to ``atol``."""
    for o, e in zip(as_tuple(ours), expected if isinstance(expected, tuple) else (expected,)):
        e = torch.as_tensor(e, dtype=torch.float64)
        torch.testing.assert_close(o.detach().double().reshape(e.shape), e, rtol=0, atol=atol)


def run_captum(name: str, model: Any, inputs: Any, kwargs: dict[str, Any], *init: Any, **init_kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(ca, name)(model, *init, **init_kwargs).attribute(inputs, **kwargs)


# --- the case table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One Captum test case: ``Captum name(model, *init(model)).attribute(inputs, **kwargs)``."""

    id: str
    cls: str
    model: Callable[[], Any]
    inputs: Callable[[], Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: Callable[[Any], tuple[Any, ...]] = lambda m: ()
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    expected: Any = None
    expected_atol: float = 1e-3
    expected_delta: Any = None
    delta_bound: float | None = None  # Captum's test bound on |delta|
    sweep: tuple[int, ...] = ()  # perturbations_per_eval / internal_batch_size values Captum's test loops over
    rtol: float = RTOL
    slow: bool = False


def t(*rows: Any, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.tensor(rows, dtype=dtype)


def _relu_deeplift_inputs() -> tuple[Tensor, Tensor]:
    return torch.tensor([1.0]), torch.tensor([2.0])


def _relu_linear_inputs() -> tuple[Tensor, Tensor]:
    return t([-10.0, 1.0, -5.0], [2.0, 3.0, 4.0]), t([3.0, 3.0, 1.0], [2.3, 5.0, 4.0])


def _shap_refs() -> tuple[Tensor, Tensor]:
    return t([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]), t([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


def _hypothetical_contrib(multipliers: tuple[Tensor, ...], inputs: tuple[Tensor, ...], baselines: tuple[Tensor, ...]):
    """Captum's test function: hypothetical contributions of each one-hot base (Kundaje lab's deeplift #36)."""
    out = []
    for m, b in zip(multipliers, baselines):
        hypothetical = torch.zeros_like(m)
        for i in range(m.shape[1]):
            one_hot = torch.zeros_like(m)
            one_hot[:, i] = 1.0
            hypothetical[:, i] = ((one_hot - b) * m).sum(1)
        out.append(hypothetical)
    return tuple(out)


def _multi_input() -> tuple[Tensor, Tensor, Tensor]:
    return (
        t([23.0, 100.0, 0.0], [20.0, 50.0, 30.0]),
        t([20.0, 50.0, 30.0], [0.0, 100.0, 0.0]),
        t([0.0, 100.0, 10.0], [2.0, 10.0, 3.0]),
    )


_MASKS3 = (
    t([1, 1, 1], [0, 1, 0], dtype=torch.long),
    t([0, 1, 2], dtype=torch.long),
    t([0, 1, 2], [0, 0, 0], dtype=torch.long),
)
# Captum's hard-coded multi-input values predate ids shared across inputs (Captum >= 0.8, attrib): they are
# the values of masks whose ids are disjoint per input, i.e. the same masks renumbered per input.
_MASKS3_PER_INPUT = (_MASKS3[0], _MASKS3[1] + 2, _MASKS3[2] + 5)

DEEPLIFT = [
    # test_deeplift_basic.py
    Case(
        "relu_deeplift_exact_match",
        "DeepLift",
        bm.ReLUDeepLiftModel,
        _relu_deeplift_inputs,
        {"baselines": (torch.tensor([0.0]), torch.tensor([0.0])), "return_convergence_delta": True},
        expected=((2.0,), (1.0,)),
        expected_delta=[0.0],
    ),
    Case(
        "relu_deeplift_wo_multiplying_by_inputs",
        "DeepLift",
        bm.ReLUDeepLiftModel,
        _relu_deeplift_inputs,
        init_kwargs={"multiply_by_inputs": False},
        expected=((2.0,), (0.5,)),
    ),
    Case(
        "tanh_deeplift",
        "DeepLift",
        bm.TanhDeepLiftModel,
        lambda: (torch.tensor([-1.0]), torch.tensor([-2.0])),
        {"baselines": (torch.tensor([0.0]), torch.tensor([0.0])), "return_convergence_delta": True},
    ),
    Case(
        "relu_deeplift_batch",
        "DeepLift",
        bm.ReLUDeepLiftModel,
        lambda: (torch.ones(4, 1), torch.full((4, 1), 2.0)),
        {"baselines": (torch.zeros(4, 1), torch.zeros(4, 1)), "return_convergence_delta": True},
    ),
    Case(
        "relu_linear_deeplift",
        "DeepLift",
        lambda: bm.ReLULinearModel(inplace=False),
        lambda: (t([-10.0, 1.0, -5.0]), t([3.0, 3.0, 1.0])),
        {"baselines": (0, 0.0001), "return_convergence_delta": True},
    ),
    Case("relu_linear_deeplift_inplace", "DeepLift", lambda: bm.ReLULinearModel(inplace=True), _relu_linear_inputs),
    Case(
        "relu_linear_deeplift_batch",
        "DeepLift",
        lambda: bm.ReLULinearModel(inplace=True),
        _relu_linear_inputs,
        {"baselines": (torch.zeros(1, 3), randn(1, 3, seed=1, scale=0.001)), "return_convergence_delta": True},
    ),
    Case(
        "relu_linear_deepliftshap_inplace",
        "DeepLiftShap",
        lambda: bm.ReLULinearModel(inplace=True),
        _relu_linear_inputs,
        {"baselines": _shap_refs(), "return_convergence_delta": True},
    ),
    Case(
        "relu_deepliftshap_batch_4D_input",
        "DeepLiftShap",
        bm.ReLUDeepLiftModel,
        lambda: (torch.ones(4, 1, 1, 1), torch.full((4, 1, 1, 1), 2.0)),
        {"baselines": (torch.zeros(4, 1, 1, 1), torch.zeros(4, 1, 1, 1)), "return_convergence_delta": True},
    ),
    Case(
        "relu_deepliftshap_batch_4D_input_wo_multiplying",
        "DeepLiftShap",
        bm.ReLUDeepLiftModel,
        lambda: (torch.ones(4, 1, 1, 1), torch.full((4, 1, 1, 1), 2.0)),
        {"baselines": (torch.zeros(4, 1, 1, 1), torch.zeros(4, 1, 1, 1))},
        init_kwargs={"multiply_by_inputs": False},
        expected=([[[[2.0]]]] * 4, [[[[0.5]]]] * 4),
    ),
    Case(
        "relu_deepliftshap_multi_ref",
        "DeepLiftShap",
        bm.ReLUDeepLiftModel,
        lambda: (t([1.0]), t([2.0])),
        {"baselines": (torch.zeros(4, 1), torch.zeros(4, 1)), "return_convergence_delta": True},
    ),
    Case(
        "relu_deepliftshap_baselines_as_func",
        "DeepLiftShap",
        lambda: bm.ReLULinearModel(inplace=True),
        lambda: (t([-10.0, 1.0, -5.0]), t([3.0, 3.0, 1.0])),
        {"baselines": _shap_refs},
    ),
    Case(
        "relu_deepliftshap_baselines_from_inputs",
        "DeepLiftShap",
        lambda: bm.ReLULinearModel(inplace=True),
        lambda: (t([-10.0, 1.0, -5.0]), t([3.0, 3.0, 1.0])),
        {"baselines": lambda inputs: tuple(torch.cat([x, x - 10]) for x in inputs)},
    ),
    Case(
        "relu_deepliftshap_custom_attr_func",
        "DeepLiftShap",
        lambda: bm.ReLULinearModel(inplace=True),
        lambda: (t([-10.0, 1.0, -5.0]), t([3.0, 3.0, 1.0])),
        {"baselines": _shap_refs(), "custom_attribution_func": lambda m, x, b: tuple(v * 0.0 for v in m)},
        expected=([[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]),
    ),
    Case(
        "relu_deeplift_hypothetical_contrib",
        "DeepLift",
        lambda: seeded(bm.Conv1dSeqModel),
        lambda: randn(2, 4, 1000, seed=2).abs(),
        {
            "baselines": randn(2, 4, 1000, seed=3).abs(),
            "custom_attribution_func": _hypothetical_contrib,
            "target": (1, 0),
        },
    ),
    Case(
        "relu_deepliftshap_hypothetical_contrib",
        "DeepLiftShap",
        lambda: seeded(bm.Conv1dSeqModel),
        lambda: randn(2, 4, 1000, seed=2).abs(),
        {
            "baselines": randn(3, 4, 1000, seed=3).abs(),
            "custom_attribution_func": _hypothetical_contrib,
            "target": (0, 0),
        },
    ),
    Case(
        "lin_maxpool_lin_classification",
        "DeepLift",
        bm.LinearMaxPoolLinearModel,
        lambda: torch.ones(2, 4),
        {"baselines": t([1, 2, 3, 9], [4, 8, 6, 7]), "target": 0, "return_convergence_delta": True},
        expected=[[0.0, 0.0, 0.0, -8.0], [0.0, -7.0, 0.0, 0.0]],
        expected_delta=[0.0, 0.0],
    ),
    # test_deeplift_classification.py (softmax models: see test_deeplift_softmax_models)
    Case(
        "sigmoid_classification",
        "DeepLift",
        lambda: cm.SigmoidDeepLiftModel(20, 5, 1),
        lambda: torch.arange(0.0, 20.0).unsqueeze(0),
        {"baselines": torch.zeros(1, 20), "target": torch.tensor(0), "return_convergence_delta": True},
    ),
]

_X1 = lambda: t([20.0, 50.0, 30.0])  # noqa: E731
_X2 = lambda: t([2.0, 10.0, 3.0], [20.0, 50.0, 30.0])  # noqa: E731
_MASK = t([0, 0, 1], dtype=torch.long)
_MASK2 = t([0, 0, 1], [1, 1, 0], dtype=torch.long)
_PPE = (1, 2, 3)

FEATURE_ABLATION = [
    # test_feature_ablation.py (target=0 unless said otherwise, as in Captum's helper)
    Case(
        "simple_ablation",
        "FeatureAblation",
        bm.BasicModel_MultiLayer,
        _X1,
        {"target": 0},
        expected=[[80.0, 200.0, 120.0]],
        sweep=_PPE,
    ),
    Case(
        "simple_ablation_int_to_int",
        "FeatureAblation",
        bm.BasicModel,
        lambda: t([-3, 1, 2], dtype=torch.long),
        {"target": 0},
        expected=[[-3, 0, 0]],
        sweep=_PPE,
    ),
    Case(
        "simple_ablation_with_mask",
        "FeatureAblation",
        bm.BasicModel_MultiLayer,
        _X1,
        {"target": 0, "feature_mask": _MASK},
        expected=[[280.0, 280.0, 120.0]],
        sweep=_PPE,
    ),
    Case(
        "simple_ablation_with_baselines",
        "FeatureAblation",
        bm.BasicModel_MultiLayer,
        _X1,
        {"target": 0, "feature_mask": _MASK, "baselines": 4},
        expected=[[248.0, 248.0, 104.0]],
        sweep=_PPE,
    ),
    Case(
        "simple_ablation_boolean",
        "FeatureAblation",
        bm.BasicModelBoolInput,
        lambda: torch.tensor([[True, False, True]]),
        {"target": 0, "feature_mask": _MASK},
        expected=[[40.0, 40.0, 40.0]],
        sweep=_PPE,
    ),
    Case(
        "simple_ablation_boolean_with_baselines",
        "FeatureAblation",
        bm.BasicModelBoolInput,
        lambda: torch.tensor([[True, False, True]]),
        {"target": 0, "feature_mask": _MASK, "baselines": True},
        expected=[[-40.0, -40.0, 0.0]],
        sweep=_PPE,
    ),
    Case(
        "multi_sample_ablation",
        "FeatureAblation",
        bm.BasicModel_MultiLayer,
        _X2,
        {"target": 0},
        expected=[[8.0, 35.0, 12.0], [80.0, 200.0, 120.0]],
        sweep=_PPE,
    ),
    Case(
        "multi_sample_ablation_with_mask",
        "FeatureAblation",
        bm.BasicModel_MultiLayer,
        _X2,
        {"target": 0, "feature_mask": _MASK2},
        expected=[[41.0, 41.0, 12.0], [280.0, 280.0, 120.0]],
        sweep=_PPE,
    ),
    Case(
        "multi_input_ablation_with_mask",
        "FeatureAblation",
        bm.BasicModel_MultiLayer_MultiInput,
        _multi_input,
        {"target": 0, "feature_mask": _MASKS3_PER_INPUT, "additional_forward_args": (1,)},
        expected=(
            [[492.0] * 3, [200.0] * 3],
            [[80.0, 200.0, 120.0], [0.0, 400.0, 0.0]],
            [[0.0, 400.0, 40.0], [60.0] * 3],
        ),
    ),
    Case(
        "multi_input_ablation_with_mask_extra_arg",
        "FeatureAblation",
        bm.BasicModel_MultiLayer_MultiInput,
        lambda: _multi_input()[:2],
        {"target": 0, "feature_mask": _MASKS3_PER_INPUT[:2], "additional_forward_args": (_multi_input()[2], 1)},
        expected=([[492.0] * 3, [200.0] * 3], [[80.0, 200.0, 120.0], [0.0, 400.0, 0.0]]),
        sweep=_PPE,
    ),
    Case(
        "multi_input_ablation_with_mask_and_baselines",
        "FeatureAblation",
        bm.BasicModel_MultiLayer_MultiInput,
        _multi_input,
        {"target": 0, "feature_mask": _MASKS3_PER_INPUT, "additional_forward_args": (1,), "baselines": (2, 3.0, 4)},
        expected=(
            [[468.0] * 3, [184.0, 192.0, 184.0]],
            [[68.0, 188.0, 108.0], [-12.0, 388.0, -12.0]],
            [[-16.0, 384.0, 24.0], [12.0] * 3],
        ),
        sweep=_PPE,
    ),
    Case(
        "multi_input_ablation_with_ids_shared_across_inputs",
        "FeatureAblation",
        bm.BasicModel_MultiLayer_MultiInput,
        _multi_input,
        {"target": 0, "feature_mask": _MASKS3, "additional_forward_args": (1,), "baselines": (2, 3.0, 4)},
        sweep=_PPE,
    ),
    Case(
        "multi_input_ablation",
        "FeatureAblation",
        bm.BasicModel_MultiLayer_MultiInput,
        _multi_input,
        {
            "target": 0,
            "additional_forward_args": (1,),
            "baselines": (t([3.0, 0.0, 0.0]), t([0.0, 1.0, 0.0]), t([1.0, 2.0, 3.0])),
        },
        expected=(
            [[80.0, 400.0, 0.0], [68.0, 200.0, 120.0]],
            [[80.0, 196.0, 120.0], [0.0, 396.0, 0.0]],
            [[-4.0, 392.0, 28.0], [4.0, 32.0, 0.0]],
        ),
        sweep=_PPE,
    ),
    Case(
        "multi_input_ablation_per_example_baselines",
        "FeatureAblation",
        bm.BasicModel_MultiLayer_MultiInput,
        _multi_input,
        {
            "target": 0,
            "additional_forward_args": (1,),
            "baselines": (
                t([3.0, 0.0, 0.0], [3.0, 0.0, 2.0]),
                t([0.0, 1.0, 0.0], [0.0, 1.0, 4.0]),
                t([3.0, 2.0, 4.0], [1.0, 2.0, 3.0]),
            ),
        },
        expected=(
            [[80.0, 400.0, 0.0], [68.0, 200.0, 112.0]],
            [[80.0, 196.0, 120.0], [0.0, 396.0, -16.0]],
            [[-12.0, 392.0, 24.0], [4.0, 32.0, 0.0]],
        ),
        sweep=_PPE,
    ),
    Case(
        "simple_multi_input_conv_masked",
        "FeatureAblation",
        bm.BasicModel_ConvNet_One_Conv,
        lambda: (torch.arange(16.0).view(1, 1, 4, 4), torch.ones(1, 1, 4, 4)),
        {"target": 0, "feature_mask": (torch.tensor(0), torch.tensor(1))},
        expected=([[[[67.0] * 4] * 4]], [[[[13.0] * 4] * 4]]),
        sweep=(1, 2, 4, 8, 12, 16),
    ),
    Case(
        "simple_multi_input_conv",
        "FeatureAblation",
        bm.BasicModel_ConvNet_One_Conv,
        lambda: (torch.arange(16.0).view(1, 1, 4, 4), torch.ones(1, 1, 4, 4)),
        {"target": 0},
        expected=(
            [[[[0.0, 2.0, 4.0, 3.0], [4.0, 9.0, 10.0, 7.0], [4.0, 13.0, 14.0, 11.0], [0.0] * 4]]],
            [[[[1.0, 2.0, 2.0, 1.0]] * 3 + [[0.0] * 4]]],
        ),
        sweep=(1, 3, 7, 14),
    ),
]


def _multi_task(extra: int) -> Callable[[], Callable[[Tensor], Tensor]]:
    """Captum's multi-task forward: BasicModel_MultiLayer's two outputs followed by ``extra`` constant ones."""

    def build() -> Callable[[Tensor], Tensor]:
        net = bm.BasicModel_MultiLayer()

        def forward(x: Tensor) -> Tensor:
            out = net(x)
            return torch.cat([out, torch.ones(out.shape[0], extra)], -1)

        return forward

    return build


_MI_SHAPLEY = lambda: (  # noqa: E731
    t([23.0, 100.0, 0.0], [20.0, 50.0, 30.0]),
    t([20.0, 50.0, 30.0], [0.0, 100.0, 0.0]),
    t([0.0, 100.0, 10.0], [2.0, 10.0, 3.0]),
)

SHAPLEY = [
    # test_shapley.py: ``expected`` are the exact Shapley values (Captum checks ShapleyValues to 0.001)
    Case(
        "simple_shapley_sampling",
        "ShapleyValueSampling",
        bm.BasicModel_MultiLayer,
        _X1,
        {"target": 0},
        expected=[[76.66666, 196.66666, 116.66666]],
        sweep=_PPE,
    ),
    Case(
        "simple_shapley_sampling_with_mask",
        "ShapleyValueSampling",
        bm.BasicModel_MultiLayer,
        _X1,
        {"target": 0, "feature_mask": _MASK},
        expected=[[275.0, 275.0, 115.0]],
        sweep=_PPE,
    ),
    Case(
        "simple_shapley_sampling_boolean",
        "ShapleyValueSampling",
        bm.BasicModelBoolInput,
        lambda: torch.tensor([[True, False, True]]),
        {"target": 0, "feature_mask": _MASK},
        expected=[[35.0, 35.0, 35.0]],
        sweep=_PPE,
    ),
    Case(
        "simple_shapley_sampling_boolean_with_baseline",
        "ShapleyValueSampling",
        bm.BasicModelBoolInput,
        lambda: torch.tensor([[True, False, True]]),
        {"target": 0, "feature_mask": _MASK, "baselines": True},
        expected=[[-40.0, -40.0, 0.0]],
        sweep=_PPE,
    ),
    Case(
        "simple_shapley_sampling_with_baselines",
        "ShapleyValueSampling",
        bm.BasicModel_MultiLayer,
        _X1,
        {"target": 0, "feature_mask": _MASK, "baselines": 4},
        expected=[[248.0, 248.0, 104.0]],
        sweep=_PPE,
    ),
    Case(
        "multi_sample_shapley_sampling",
        "ShapleyValueSampling",
        bm.BasicModel_MultiLayer,
        _X2,
        {"target": 0},
        expected=[[7.0, 32.5, 10.5], [76.66666, 196.66666, 116.66666]],
        sweep=_PPE,
    ),
    Case(
        "multi_sample_shapley_sampling_with_mask",
        "ShapleyValueSampling",
        bm.BasicModel_MultiLayer,
        _X2,
        {"target": 0, "feature_mask": _MASK2},
        expected=[[39.5, 39.5, 10.5], [275.0, 275.0, 115.0]],
        sweep=_PPE,
    ),
    Case(
        "multi_input_shapley_sampling_with_mask",
        "ShapleyValueSampling",
        bm.BasicModel_MultiLayer_MultiInput,
        _MI_SHAPLEY,
        {"target": 0, "feature_mask": _MASKS3, "additional_forward_args": (1,)},
        expected=(
            [[1088.6666] * 3, [255.0, 595.0, 255.0]],
            [[76.6666, 1088.6666, 156.6666], [255.0, 595.0, 0.0]],
            [[76.6666, 1088.6666, 156.6666], [255.0] * 3],
        ),
    ),
    Case(
        "multi_input_shapley_sampling_with_mask_and_baselines",
        "ShapleyValueSampling",
        bm.BasicModel_MultiLayer_MultiInput,
        _MI_SHAPLEY,
        {"target": 0, "feature_mask": _MASKS3, "additional_forward_args": (1,), "baselines": (2, 3.0, 4)},
        expected=(
            [[1040.0] * 3, [184.0, 580.0, 184.0]],
            [[52.0, 1040.0, 132.0], [184.0, 580.0, -12.0]],
            [[52.0, 1040.0, 132.0], [184.0] * 3],
        ),
        sweep=_PPE,
    ),
    Case(
        "multi_input_shapley_sampling_with_ids_shared_across_inputs",
        "ShapleyValueSampling",
        bm.BasicModel_MultiLayer_MultiInput,
        _MI_SHAPLEY,
        {"target": 0, "feature_mask": _MASKS3, "additional_forward_args": (1,), "baselines": (2, 3.0, 4)},
    ),
    Case(
        "shapley_sampling_multi_task_output",
        "ShapleyValueSampling",
        _multi_task(2),
        _X1,
        {"target": None},
        expected=[[[76.66666, 196.66666, 116.66666]] * 2 + [[0.0] * 3] * 2],
        sweep=_PPE,
    ),
    Case(
        "shapley_sampling_multi_task_output_with_mask",
        "ShapleyValueSampling",
        _multi_task(1),
        lambda: t([20.0, 50.0, 30.0], [20.0, 50.0, 30.0]),
        {"target": None, "feature_mask": t([1, 1, 0], [0, 1, 1], dtype=torch.long)},
        expected=[[[275.0, 275.0, 115.0]] * 2 + [[0.0] * 3], [[75.0, 315.0, 315.0]] * 2 + [[0.0] * 3]],
        sweep=_PPE,
    ),
]

LAYER = [
    # layer/test_layer_conductance.py (n_steps=500, Gauss-Legendre, target 0, internal_batch_size None / 4 / 20)
    Case(
        "simple_input_conductance",
        "LayerConductance",
        bm.BasicModel_MultiLayer,
        lambda: t([0.0, 100.0, 0.0]),
        {"target": 0, "n_steps": 500, "method": "gausslegendre", "return_convergence_delta": True},
        init=lambda m: (m.linear0,),
        expected=[[0.0, 390.0, 0.0]],
        expected_atol=0.1,
        delta_bound=0.01,
        sweep=(4, 20),
    ),
    Case(
        "simple_input_with_scalar_baseline_conductance",
        "LayerConductance",
        bm.BasicModel_MultiLayer,
        lambda: t([0.0, 100.0, 0.0]),
        {"target": 0, "n_steps": 500, "baselines": 0.0},
        init=lambda m: (m.linear0,),
        expected=[[0.0, 390.0, 0.0]],
        expected_atol=0.1,
    ),
    Case(
        "simple_linear_conductance",
        "LayerConductance",
        bm.BasicModel_MultiLayer,
        lambda: t([0.0, 100.0, 0.0]),
        {"target": 0, "n_steps": 500, "return_convergence_delta": True},
        init=lambda m: (m.linear1,),
        expected=[[90.0, 100.0, 100.0, 100.0]],
        expected_atol=0.1,
        delta_bound=0.01,
        sweep=(4, 20),
    ),
    Case(
        "simple_relu_conductance",
        "LayerConductance",
        bm.BasicModel_MultiLayer,
        lambda: t([0.0, 100.0, 0.0]),
        {"target": 0, "n_steps": 500},
        init=lambda m: (m.relu,),
        expected=[[90.0, 100.0, 100.0, 100.0]],
        expected_atol=0.1,
    ),
    Case(
        "simple_output_conductance",
        "LayerConductance",
        bm.BasicModel_MultiLayer,
        lambda: t([0.0, 100.0, 0.0]),
        {"target": 0, "n_steps": 500},
        init=lambda m: (m.linear2,),
        expected=[[390.0, 0.0]],
        expected_atol=0.1,
    ),
    Case(
        "simple_multi_input_linear2_conductance",
        "LayerConductance",
        bm.BasicModel_MultiLayer_MultiInput,
        lambda: (t([0.0, 10.0, 0.0]), t([0.0, 10.0, 0.0]), t([0.0, 5.0, 0.0])),
        {"target": 0, "n_steps": 500, "additional_forward_args": (4,)},
        init=lambda m: (m.model.linear2,),
        expected=[[390.0, 0.0]],
        expected_atol=0.1,
    ),
    Case(
        "simple_multi_input_relu_conductance_batch",
        "LayerConductance",
        bm.BasicModel_MultiLayer_MultiInput,
        lambda: (t([0.0, 10.0, 1.0], [0.0, 0.0, 10.0]), t([0.0, 4.0, 5.0], [0.0, 0.0, 10.0])),
        {"target": 0, "n_steps": 500, "additional_forward_args": (t([0.0, 0.0, 0.0], [0.0, 0.0, 5.0]), 5)},
        init=lambda m: (m.model.relu,),
        expected=[[90.0, 100.0, 100.0, 100.0], [100.0] * 4],
        expected_atol=0.1,
        sweep=(4, 20),
    ),
    *[
        Case(
            f"matching_{name}_conductance",
            "LayerConductance",
            bm.BasicModel_ConvNet,
            lambda n=n, s=s: randn(n, 1, 10, 10, seed=s, scale=100.0),
            {
                "target": 1,
                "n_steps": 300,
                "method": "gausslegendre",
                "return_convergence_delta": True,
                **({"baselines": randn(3, 1, 10, 10, seed=9, scale=100.0)} if name == "fc1" else {}),
            },
            init=lambda m, name=name: (getattr(m, name),),
            delta_bound=0.005,
            slow=name not in ("conv2", "pool1"),
        )
        for name, n, s in (
            ("conv1", 1, 1),
            ("pool1", 1, 2),
            ("conv2", 1, 3),
            ("pool2", 1, 4),
            ("relu3", 4, 5),
            ("fc1", 3, 6),
        )
    ],
    # layer/test_layer_integrated_gradients.py
    *[
        Case(
            f"compare_with_emb_patching{suffix}",
            "LayerIntegratedGradients",
            lambda: bm.BasicEmbeddingModel(nested_second_embedding=True),
            lambda x1=x1: x1,
            {
                "baselines": torch.zeros(1, 4, dtype=torch.long),
                "additional_forward_args": extra,
                # Captum's delta without the factor is not a completeness gap (its test skips it); see below
                "return_convergence_delta": not init_kwargs,
            },
            init=lambda m: (m.embedding1,),
            init_kwargs=init_kwargs,
        )
        for suffix, x1, extra, init_kwargs in (
            (
                "",
                t([2, 5, 0, 1], dtype=torch.long),
                (t([0, 2, 4, 1], dtype=torch.long), t([2, 3, 0, 1], dtype=torch.long)),
                {},
            ),
            (
                "_wo_mult_by_inputs",
                t([2, 5, 0, 1], dtype=torch.long),
                (t([0, 2, 4, 1], dtype=torch.long), t([2, 3, 0, 1], dtype=torch.long)),
                {"multiply_by_inputs": False},
            ),
            (
                "_batch",
                t([2, 5, 0, 1], [3, 1, 1, 0], dtype=torch.long),
                (t([0, 2, 4, 1], [2, 3, 5, 7], dtype=torch.long), t([3, 5, 6, 7], [2, 3, 0, 1], dtype=torch.long)),
                {},
            ),
        )
    ],
    Case(
        "compare_with_layer_conductance_attr_to_outputs",
        "LayerIntegratedGradients",
        bm.BasicModel_MultiLayer,
        lambda: t([50.0, 50.0, 50.0]),
        {"target": 0, "n_steps": 1500, "return_convergence_delta": True},
        init=lambda m: (m.linear2,),
    ),
    Case(
        "compare_with_layer_conductance_attr_to_inputs",
        "LayerIntegratedGradients",
        bm.BasicModel_MultiLayer,
        lambda: t([50.0, 50.0, 50.0]),
        {"target": 0, "n_steps": 1500, "return_convergence_delta": True, "attribute_to_layer_input": True},
        init=lambda m: (m.linear2,),
    ),
    # layer/test_layer_gradient_x_activation.py
    *[
        Case(
            f"{name}_gradient_activation{suffix}",
            "LayerGradientXActivation",
            build,
            inputs,
            {"target": 0, **({"additional_forward_args": extra} if extra is not None else {})},
            init=layer,
            init_kwargs=init_kwargs,
            expected=expected if not init_kwargs else None,
        )
        for name, build, inputs, layer, extra, expected in (
            (
                "simple_input",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 100.0, 0.0]),
                lambda m: (m.linear0,),
                None,
                [[0.0, 400.0, 0.0]],
            ),
            (
                "simple_linear",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 100.0, 0.0]),
                lambda m: (m.linear1,),
                None,
                [[90.0, 101.0, 101.0, 101.0]],
            ),
            (
                "simple_relu",
                bm.BasicModel_MultiLayer,
                lambda: t([3.0, 4.0, 0.0]),
                lambda m: (m.relu,),
                None,
                [[0.0, 8.0, 8.0, 8.0]],
            ),
            (
                "simple_output",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 100.0, 0.0]),
                lambda m: (m.linear2,),
                None,
                [[392.0, 0.0]],
            ),
            (
                "multi_input_linear2",
                bm.BasicModel_MultiLayer_MultiInput,
                lambda: (t([0.0, 10.0, 0.0]), t([0.0, 10.0, 0.0]), t([0.0, 5.0, 0.0])),
                lambda m: (m.model.linear2,),
                (4,),
                [[392.0, 0.0]],
            ),
            (
                "multi_input_relu",
                bm.BasicModel_MultiLayer_MultiInput,
                lambda: (t([0.0, 10.0, 1.0]), t([0.0, 4.0, 5.0])),
                lambda m: (m.model.relu,),
                (t([0.0, 0.0, 0.0]), 5),
                [[90.0, 101.0, 101.0, 101.0]],
            ),
        )
        for suffix, init_kwargs in (("", {}), ("_wo_mult_by_inputs", {"multiply_by_inputs": False}))
    ],
    Case(
        "gradient_activation_embedding",
        "LayerGradientXActivation",
        lambda: seeded(bm.BasicEmbeddingModel),
        lambda: (torch.tensor([2, 5, 0, 1]), torch.tensor([3, 0, 0, 2])),
        init=lambda m: (m.embedding1,),
    ),
    # layer/test_layer_activation.py
    *[
        Case(f"{name}_activation", "LayerActivation", build, inputs, kwargs, init=layer, expected=expected)
        for name, build, inputs, layer, kwargs, expected in (
            (
                "simple_input",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 100.0, 0.0]),
                lambda m: (m.linear0,),
                {},
                [[0.0, 100.0, 0.0]],
            ),
            (
                "simple_linear",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 100.0, 0.0]),
                lambda m: (m.linear1,),
                {},
                [[90.0, 101.0, 101.0, 101.0]],
            ),
            (
                "simple_relu_input_inplace",
                lambda: bm.BasicModel_MultiLayer(inplace=True),
                lambda: t([2.0, -5.0, 4.0]),
                lambda m: (m.relu,),
                {"attribute_to_layer_input": True},
                [[-9.0, 2.0, 2.0, 2.0]],
            ),
            (
                "simple_linear_inplace",
                lambda: bm.BasicModel_MultiLayer(inplace=True),
                lambda: t([2.0, -5.0, 4.0]),
                lambda m: (m.linear1,),
                {},
                [[-9.0, 2.0, 2.0, 2.0]],
            ),
            (
                "simple_relu",
                bm.BasicModel_MultiLayer,
                lambda: t([3.0, 4.0, 0.0]),
                lambda m: (m.relu,),
                {},
                [[0.0, 8.0, 8.0, 8.0]],
            ),
            (
                "simple_output",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 100.0, 0.0]),
                lambda m: (m.linear2,),
                {},
                [[392.0, 394.0]],
            ),
            (
                "unused_relu_of_multi_input_module",
                lambda: bm.BasicModel_MultiLayer(multi_input_module=True),
                lambda: t([0.0, 6.0, 0.0]),
                lambda m: (m.relu,),
                {},
                [[0.0, 7.0, 7.0, 7.0]],
            ),
            (
                "unused_relu_input_of_multi_input_module",
                lambda: bm.BasicModel_MultiLayer(multi_input_module=True),
                lambda: t([0.0, 6.0, 0.0]),
                lambda m: (m.relu,),
                {"attribute_to_layer_input": True},
                [[-4.0, 7.0, 7.0, 7.0]],
            ),
            (
                "simple_multi_input_linear2",
                bm.BasicModel_MultiLayer_MultiInput,
                lambda: (t([0.0, 10.0, 0.0]), t([0.0, 10.0, 0.0]), t([0.0, 5.0, 0.0])),
                lambda m: (m.model.linear2,),
                {"additional_forward_args": (4,)},
                [[392.0, 394.0]],
            ),
            (
                "simple_multi_input_relu",
                bm.BasicModel_MultiLayer_MultiInput,
                lambda: (t([0.0, 10.0, 1.0]), t([0.0, 4.0, 5.0])),
                lambda m: (m.model.relu,),
                {"additional_forward_args": (t([0.0, 0.0, 0.0]), 5)},
                [[90.0, 101.0, 101.0, 101.0]],
            ),
            (
                "sequential_in_place",
                lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True)),
                lambda: randn(1, 3, 5, 5, seed=7),
                lambda m: (m[0],),
                {},
                None,
            ),
        )
    ],
]

NEURON = [
    # neuron/test_neuron_gradient.py: NeuronGradient is Saliency(abs=False) of a Neuron target
    *[
        Case(
            f"simple_gradient_{name}",
            "NeuronGradient",
            build,
            inputs,
            {"neuron_selector": selector, **({"additional_forward_args": extra} if extra is not None else {})},
            init=layer,
            expected=expected,
        )
        for name, build, inputs, layer, selector, extra, expected in (
            (
                "input_linear2",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 100.0, 0.0]),
                lambda m: (m.linear2,),
                (0,),
                None,
                [[4.0, 4.0, 4.0]],
            ),
            (
                "input_linear1",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 100.0, 0.0]),
                lambda m: (m.linear1,),
                (0,),
                None,
                [[1.0, 1.0, 1.0]],
            ),
            (
                "input_linear1_inplace",
                lambda: bm.BasicModel_MultiLayer(inplace=True),
                lambda: t([0.0, 5.0, 4.0]),
                lambda m: (m.linear1,),
                (0,),
                None,
                [[1.0, 1.0, 1.0]],
            ),
            (
                "input_relu",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 5.0, 4.0]),
                lambda m: (m.relu,),
                0,
                None,
                [[0.0, 0.0, 0.0]],
            ),
            (
                "input_relu2",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 5.0, 4.0]),
                lambda m: (m.relu,),
                1,
                None,
                [[1.0, 1.0, 1.0]],
            ),
            (
                "input_relu2_agg_neurons",
                bm.BasicModel_MultiLayer,
                lambda: t([0.0, 5.0, 4.0]),
                lambda m: (m.relu,),
                (slice(0, 2, 1),),
                None,
                [[1.0, 1.0, 1.0]],
            ),
            (
                "multi_input_linear2",
                bm.BasicModel_MultiLayer_MultiInput,
                lambda: (t([0.0, 100.0, 0.0]), t([0.0, 100.0, 0.0]), t([0.0, 100.0, 0.0])),
                lambda m: (m.model.linear2,),
                (0,),
                (3,),
                ([[12.0, 12.0, 12.0]],) * 3,
            ),
            (
                "multi_input_linear1",
                bm.BasicModel_MultiLayer_MultiInput,
                lambda: (t([0.0, 100.0, 0.0]), t([0.0, 100.0, 0.0])),
                lambda m: (m.model.linear1,),
                (0,),
                (t([0.0, 100.0, 0.0]), 5),
                ([[5.0, 5.0, 5.0]],) * 2,
            ),
        )
    ],
    *[
        Case(
            f"matching_{layer}_gradient_{i}",
            "NeuronGradient",
            bm.BasicModel_ConvNet,
            lambda n=n: randn(n, 1, 10, 10, seed=n),
            {"neuron_selector": selector},
            init=lambda m, layer=layer: (getattr(m, layer),),
        )
        for layer, n, selectors in (
            ("softmax", 2, [(i,) for i in range(10)]),
            ("relu2", 3, [(i, 0, 0) for i in range(4)]),
        )
        for i, selector in enumerate(selectors)
    ],
]

SWEPT = {"FeatureAblation": "perturbations_per_eval", "ShapleyValueSampling": "perturbations_per_eval"}


def _params(cases: list[Case]) -> list[Any]:
    out = []
    for case in cases:
        marks = [pytest.mark.slow] if case.slow else []
        out.append(pytest.param(case, None, id=case.id, marks=marks))
        for value in case.sweep:  # Captum's batch sweep: the result must not depend on it
            out.append(pytest.param(case, value, id=f"{case.id}-batch{value}", marks=[pytest.mark.slow]))
    return out


def _build(case: Case) -> tuple[Any, Any]:
    model = seeded(case.model)
    if isinstance(model, nn.Module):
        model.eval()
    return model, case.inputs()


def _both(case: Case, batch: int | None, **extra: Any) -> tuple[Any, Any, Any]:
    """(attrib's, Captum's) result of a case, and its model."""
    model, inputs = _build(case)
    kwargs = dict(case.kwargs, **extra)
    if batch is not None:
        kwargs[SWEPT.get(case.cls, "internal_batch_size")] = batch
    init = case.init(model)
    theirs = run_captum(case.cls, model, inputs, kwargs, *init, **case.init_kwargs)
    ours = ADAPTERS[case.cls](model, *init, **case.init_kwargs)(inputs, **kwargs)
    return ours, theirs, model


@pytest.mark.parametrize(("case", "batch"), _params(DEEPLIFT + FEATURE_ABLATION + LAYER + NEURON))
def test_captum_case(case: Case, batch: int | None) -> None:
    """attrib equals Captum on Captum's own case (maps and deltas), and gives the values Captum's test hard-codes."""
    ours, theirs, _ = _both(case, batch)
    if case.kwargs.get("return_convergence_delta"):
        (ours, our_delta), (theirs, their_delta) = ours, theirs
        # Deltas are differences of nearly equal sums: compare them on the scale of the maps.
        scale = max(float(m.detach().abs().max()) for m in as_tuple(theirs))
        torch.testing.assert_close(
            our_delta.detach().double(),
            their_delta.detach().double().reshape(our_delta.shape),
            rtol=0,
            atol=case.rtol * max(scale, 1.0),
        )
        if case.expected_delta is not None:
            expect(our_delta, case.expected_delta, case.expected_atol)
        if case.delta_bound is not None:
            assert float(our_delta.abs().max()) < case.delta_bound
    agree(ours, theirs, case.rtol)
    if case.expected is not None:
        expect(ours, case.expected, case.expected_atol)


def test_layer_integrated_gradients_delta_without_the_factor_is_that_of_the_completed_map() -> None:
    """A documented difference: with multiply_by_inputs=False attrib's delta still measures completeness."""
    from attrib.methods.layer_integrated_gradients import LayerIntegratedGradients

    model = seeded(lambda: bm.BasicEmbeddingModel(nested_second_embedding=True)).eval()
    x1 = t([2, 5, 0, 1], dtype=torch.long)
    extra = (t([0, 2, 4, 1], dtype=torch.long), t([2, 3, 0, 1], dtype=torch.long))
    options = {"baselines": torch.zeros(1, 4, dtype=torch.long), "additional_forward_args": extra}
    _, delta = LayerIntegratedGradients(model, model.embedding1).attribute(x1, **options, return_convergence_delta=True)
    grads, same = LayerIntegratedGradients(model, model.embedding1, multiply_by_inputs=False).attribute(
        x1, **options, return_convergence_delta=True
    )
    torch.testing.assert_close(same, delta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, theirs = ca.LayerIntegratedGradients(model, model.embedding1, multiply_by_inputs=False).attribute(
            x1, **options, return_convergence_delta=True
        )
    assert float((theirs - delta).abs().max()) > 1.0  # Captum's is sum(gradients) - gain: not a gap


def test_neuron_target_on_a_layer_whose_output_the_next_module_overwrites_in_place() -> None:
    """attrib bug (found by Captum's ``test_simple_gradient_input_linear1_inplace``).

    ``Neuron(model.linear1, 0)`` must score linear1's output, ``x.sum() - 10``,
    whose gradient is ``[1, 1, 1]``. ``attrib.core.probes.capturing`` records
    the layer's output tensor itself; the next module, ``ReLU(inplace=True)``,
    then overwrites it, so the score read is ``relu(linear1(x))[0] = 0`` with
    gradient 0. A copy must be recorded (or handed on to the model, as
    ``LayerAttribution._captured`` does).
    """
    model = bm.BasicModel_MultiLayer(inplace=True).eval()
    x = t([0.0, 5.0, 4.0])
    score = attrib.FeatureAblation(model).attribute(x, target=attrib.Neuron(model.linear1, 0), baselines=0.0)
    expect(score, [[0.0, 5.0, 4.0]])  # the drop of x.sum() - 10 when one element goes to 0
    grad = attrib.Saliency(model).attribute(x, target=attrib.Neuron(model.linear1, 0), abs=False)
    expect(grad, [[1.0, 1.0, 1.0]])


# --- Shapley values: identical orders, and exact values from every order once ----------------------------


def every_order(count: int, features: int, generator: torch.Generator, antithetic: bool = False) -> Tensor:
    """All ``features!`` orders once each: attrib's sampler then gives the exact Shapley values."""
    return torch.tensor(list(itertools.permutations(range(features))), device=generator.device)


def _n_features(inputs: Any, mask: Any) -> int:
    if mask is None:
        return sum(x[0].numel() for x in as_tuple(inputs))
    return int(max(int(m.max()) for m in as_tuple(mask))) + 1


@pytest.mark.parametrize(("case", "batch"), _params(SHAPLEY))
def test_shapley_case(case: Case, batch: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling: attrib equals Captum fed attrib's orders. Exact: attrib over every order equals Captum's
    ShapleyValues and the values Captum's test hard-codes."""
    model, inputs = _build(case)
    kwargs = dict(case.kwargs)
    if batch is not None:
        kwargs["perturbations_per_eval"] = batch
    attribute = ADAPTERS[case.cls](model)
    n_samples, seed = 6, 3
    ours = attribute(inputs, n_samples=n_samples, seed=seed, **kwargs)
    orders = feature_orders(
        n_samples, _n_features(inputs, kwargs.get("feature_mask")), torch.Generator().manual_seed(seed)
    )
    captum = ca.ShapleyValueSampling(model)
    captum.permutation_generator = lambda features, n: iter(orders.tolist())
    agree(ours, captum.attribute(inputs, n_samples=n_samples, **kwargs))

    monkeypatch.setattr(shapley_module, "feature_orders", every_order)
    exact = attribute(inputs, **kwargs)
    agree(exact, run_captum("ShapleyValues", model, inputs, kwargs))
    if case.expected is not None:
        expect(exact, case.expected, 1e-3)


def test_shapley_sampling_multi_input_without_mask_within_captums_bound() -> None:
    """``test_multi_input_shapley_sampling_without_mask``: 9 features (9! orders), 200 samples, Captum's delta 1.0."""
    model = bm.BasicModel_MultiLayer_MultiInput().eval()
    inputs = (
        t([23.0, 0.0, 0.0], [20.0, 50.0, 30.0]),
        t([20.0, 0.0, 50.0], [0.0, 100.0, 0.0]),
        t([0.0, 100.0, 10.0], [0.0, 10.0, 0.0]),
    )
    ours = ADAPTERS["ShapleyValueSampling"](model)(
        inputs, target=0, additional_forward_args=(1,), n_samples=200, seed=0
    )
    expect(
        ours,
        ([[90, 0, 0], [78.0, 198.0, 118.0]], [[78, 0, 198], [0.0, 398.0, 0.0]], [[0, 398, 38], [0.0, 38.0, 0.0]]),
        atol=1.0,
    )
    orders = feature_orders(200, 9, torch.Generator().manual_seed(0))
    captum = ca.ShapleyValueSampling(model)
    captum.permutation_generator = lambda features, n: iter(orders.tolist())
    agree(ours, captum.attribute(inputs, target=0, additional_forward_args=(1,), n_samples=200))


def batch_aggregate(net: nn.Module) -> Callable[..., Tensor]:
    """Captum's batch-scalar forward ``sum(net(x))`` as a per-example model: one example holds the whole batch."""

    def forward(*xs: Tensor, scale: Any = None) -> Tensor:
        rows = xs[0].shape[0]
        flat = [x.reshape(-1, *x.shape[2:]) for x in xs]
        out = net(*flat) if scale is None else net(*flat, scale)
        return out.reshape(rows, -1).sum(1)

    return forward


@pytest.mark.parametrize("cls", ["FeatureAblation", "ShapleyValues"])
def test_batch_scalar_output_through_the_aggregate_adapter(cls: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Captum's ``*_batch_scalar_*`` cases: a forward returning one number per batch is attrib's one-example model."""
    net = bm.BasicModel_MultiLayer().eval()
    x = t([2.0, 10.0, 3.0], [20.0, 50.0, 30.0])
    theirs = run_captum(cls, lambda inp: torch.sum(net(inp)), x, {"feature_mask": _MASK})
    name = "FeatureAblation" if cls == "FeatureAblation" else "ShapleyValueSampling"
    if cls == "ShapleyValues":
        monkeypatch.setattr(shapley_module, "feature_orders", every_order)
    ours = ADAPTERS[name](batch_aggregate(net))(x.unsqueeze(0), feature_mask=_MASK.unsqueeze(0))
    agree(ours[0, :1], theirs)
    expect(ours[0, :1], [[642.0, 642.0, 264.0]] if cls == "FeatureAblation" else [[629.0, 629.0, 251.0]])


# --- FeaturePermutation: attrib's permutations replayed in Captum -------------------------------------------


def replayed_permutations(masks: tuple[Tensor, ...], sources: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """A Captum ``perm_func`` applying attrib's permutation of each feature (its id read off the mask).

    ``sources[j, n]`` is the example whose values example ``n`` takes on feature ``j``.
    """

    def perm(x: Tensor, mask: Tensor) -> Tensor:
        ids = next(m for m in masks if m.shape == mask.shape or m.dim() == 0)
        j = int(ids.expand(mask.shape)[mask].unique().item())
        return torch.where(mask, x[sources[j]], x)

    return perm


def _captum_permutation(model: Any, inputs: Any, masks: Any, seed: int, **kwargs: Any) -> Any:
    xs = as_tuple(inputs)
    if masks is None:
        offsets = itertools.accumulate([0] + [x[0].numel() for x in xs])
        masks = tuple(torch.arange(o, o + x[0].numel()).view(1, *x.shape[1:]) for o, x in zip(offsets, xs))
    masks = as_tuple(masks)
    features = int(max(int(m.max()) for m in masks)) + 1
    sources = batch_permutations(features, xs[0].shape[0], torch.Generator().manual_seed(seed))
    captum = ca.FeaturePermutation(model, perm_func=replayed_permutations(masks, sources))
    return captum.attribute(inputs, feature_mask=masks if isinstance(inputs, tuple) else masks[0], **kwargs)


def _pairwise_loss(a: Tensor, b: Tensor, labels: Tensor) -> Tensor:
    """Captum's multi-input forward, per example: ``(sum_k x_k[:, :, 0] x_k[:, :, 1] - label)^2``."""
    y = (a[:, :, 0] * a[:, :, 1] + b[:, :, 0] * b[:, :, 1]).sum(-1)
    return (y - labels) ** 2


@pytest.mark.parametrize(
    ("name", "model", "inputs", "mask", "kwargs"),
    [
        (
            "single_input",
            lambda x: x.sum(-1),
            lambda: randn(2, 6, seed=1).index_fill(1, torch.tensor([0]), 1e4),
            None,
            {},
        ),
        (
            "multiple_perturbations_per_eval",
            lambda x: 1 - x,
            lambda: randn(2, 4, seed=2),
            None,
            {"target": 1, "perturbations_per_eval": 4},
        ),
        *[
            (
                f"broadcastable_mask_{i}",
                lambda x: x.view(x.shape[0], -1).sum(-1),
                lambda: randn(2, 3, 4, 4, seed=3),
                mask,
                {},
            )
            for i, mask in enumerate(
                [
                    torch.tensor([0]),
                    torch.tensor([[0, 1, 2, 3]]),
                    torch.tensor([[[0, 1, 2, 3], [3, 3, 4, 5], [6, 6, 4, 6], [7, 8, 9, 10]]]),
                ]
            )
        ],
        (
            "multi_input",
            _pairwise_loss,
            lambda: (randn(20, 5, 2, seed=4), randn(20, 5, 3, seed=5).index_fill(2, torch.tensor([1]), 4.0)),
            (torch.arange(10).view(1, 5, 2), torch.arange(10, 25).view(1, 5, 3)),
            {"additional_forward_args": (randn(20, seed=11),)},
        ),
        (
            "multi_input_group_across_input_tensors",
            _pairwise_loss,
            lambda: (randn(20, 5, 2, seed=4), randn(20, 5, 3, seed=5)),
            (torch.zeros(1, 5, 2, dtype=torch.long), torch.zeros(1, 5, 3, dtype=torch.long)),
            {"additional_forward_args": (randn(20, seed=11),)},
        ),
    ],
)
def test_feature_permutation_case(name: str, model: Any, inputs: Any, mask: Any, kwargs: dict[str, Any]) -> None:
    """attrib equals Captum given attrib's permutations, and has the properties Captum's test asserts."""
    x = inputs()
    options = dict(kwargs, **({"feature_mask": mask} if mask is not None else {}))
    ours = ADAPTERS["FeaturePermutation"](model)(x, seed=7, **options)
    agree(ours, _captum_permutation(model, x, mask, 7, **kwargs))
    if name == "single_input":  # a feature equal in every example has no importance
        assert float(ours[:, 0].abs().max()) == 0.0 and bool((ours[:, 1:].abs() > 0).all())
    if name == "multiple_perturbations_per_eval":
        y = 1 - x
        expect(ours[:, 1], [float((y[0] - y[1])[1]), float((y[1] - y[0])[1])], 1e-5)
        assert float(ours[:, [0, 2, 3]].abs().max()) == 0.0
    if name.startswith("broadcastable"):  # two examples swap: the drops are opposite
        torch.testing.assert_close(ours[0], -ours[1])
    if name == "multi_input":  # constant and unused features have no importance (an example may keep its value)
        assert bool((ours[1][:, :, 1:] == 0).all()) and bool((ours[0] != 0).any())
    if name == "multi_input_group_across_input_tensors":  # one feature: one value per example in both inputs
        for n in range(20):
            assert bool((ours[0][n] == ours[0][n].flatten()[0]).all() and (ours[1][n] == ours[0][n].flatten()[0]).all())


def test_feature_permutation_across_inputs_moves_one_feature_as_one_unit() -> None:
    """A documented difference: Captum's default perm_func draws one permutation per input tensor of a feature."""
    x = (randn(20, 5, 2, seed=4), randn(20, 5, 3, seed=5))
    masks = (torch.zeros(1, 5, 2, dtype=torch.long), torch.zeros(1, 5, 3, dtype=torch.long))
    model = lambda a, b: (a.flatten(1) - 1).sum(1) * (b.flatten(1) + 1).sum(1)  # noqa: E731 (an interaction)
    ours = ADAPTERS["FeaturePermutation"](model)(x, feature_mask=masks, target=None, seed=1)
    sources = batch_permutations(1, 20, torch.Generator().manual_seed(1))[0]
    moved = (x[0][sources], x[1][sources])  # both inputs from the same example
    expect(ours[0][:, 0, 0], (model(*x) - model(*moved)).tolist(), 1e-3)


# --- GradientShap: attrib replays Captum's draws ----------------------------------------------------------


class ReplayedGradientShap(attrib.GradientShap):
    """attrib's GradientShap drawing given ``(noise, alpha, index)`` rows (example-major, ``N * S``) in order."""

    def __init__(self, model: Any, draws: tuple[list[Tensor], Tensor, Tensor], n: int, n_samples: int, **kw: Any):
        super().__init__(model, **kw)
        self.draws, self.n, self.s, self.copy = draws, n, n_samples, 0

    def sample_draws(self, inputs: Any, baselines: Any, stdevs: Any, generator: Any) -> tuple[Tensor, ...]:
        noise, alpha, index = self.draws
        s, self.copy = self.copy, self.copy + 1
        per = [z.view(self.n, self.s, *z.shape[1:])[:, s] for z in noise]
        return (*per, alpha.view(self.n, self.s)[:, s], index.view(self.n, self.s)[:, s])


def captum_gradient_shap_draws(inputs: tuple[Tensor, ...], n_refs: int, n_samples: int, stdev: float, seed: int):
    """The draws Captum 0.9's GradientShap makes after seeding torch and numpy with ``seed``, in its order.

    NoiseTunnel adds ``torch.normal`` noise to each input repeated ``n_samples`` times (example-major),
    then draws reference indices with ``np.random.choice`` (once per input: equal here, one input or
    one reference set) and InputBaselineXGradient draws ``alpha`` with ``np.random.uniform``.
    """
    n = inputs[0].shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np_state = np.random.get_state()
        np.random.seed(seed)
        try:
            noise = [torch.normal(0, torch.tensor(stdev).repeat((n * n_samples, *x.shape[1:]))) for x in inputs]
            index = [torch.as_tensor(np.random.choice(n_refs, n_samples * n)) for _ in inputs][0]
            alpha = torch.as_tensor(np.random.uniform(0.0, 1.0, n * n_samples))
        finally:
            np.random.set_state(np_state)
    return noise, alpha, index


def run_captum_seeded(seed: int, name: str, model: Any, inputs: Any, kwargs: dict[str, Any], **init: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np_state = np.random.get_state()
        np.random.seed(seed)
        try:
            return run_captum(name, model, inputs, kwargs, **init)
        finally:
            np.random.set_state(np_state)


@pytest.mark.parametrize(
    ("name", "build", "inputs", "baselines", "kwargs"),
    [
        (
            "classification",
            lambda: cm.SoftmaxModel(40, 20, 10),
            lambda: torch.arange(80.0).reshape(2, 40),
            lambda: torch.arange(160.0).reshape(4, 40),
            {"target": torch.tensor(1), "n_samples": 10, "stdevs": 0.009},
        ),
        (
            "classification_baselines_with_inputs",
            lambda: cm.SoftmaxModel(40, 20, 10),
            lambda: torch.arange(80.0).reshape(2, 40),
            lambda: lambda x: torch.arange(0.0, x.shape[1] * 2.0).reshape(2, -1),
            {"target": torch.tensor(1), "n_samples": 10, "stdevs": 0.00001},
        ),
        (
            "basic_relu_multi_input",
            bm.BasicModel2,
            lambda: (t([3.0]), t([1.0])),
            lambda: (t([0.0]), t([0.0])),
            {"n_samples": 300},
        ),
        pytest.param(
            "basic_relu_multi_input_30000",
            bm.BasicModel2,
            lambda: (t([3.0]), t([1.0])),
            lambda: (t([0.0]), t([0.0])),
            {"n_samples": 30000},
            marks=pytest.mark.slow,
        ),
    ],
)
def test_gradient_shap_with_captums_draws(name: str, build: Any, inputs: Any, baselines: Any, kwargs: Any) -> None:
    """attrib replaying Captum's draws equals Captum (maps and per-sample deltas) on test_gradient_shap.py's cases."""
    model = seeded(build).eval()
    x, b = inputs(), baselines()
    refs = b(x) if callable(b) else b
    n_refs = as_tuple(refs)[0].shape[0]
    options = dict(kwargs, baselines=b, return_convergence_delta=True)
    theirs, their_delta = run_captum_seeded(5, "GradientShap", model, x, options)
    draws = captum_gradient_shap_draws(as_tuple(x), n_refs, kwargs["n_samples"], kwargs.get("stdevs", 0.0), 5)
    ours, delta = ReplayedGradientShap(model, draws, as_tuple(x)[0].shape[0], kwargs["n_samples"]).attribute(
        x,
        target=int(kwargs["target"]) if "target" in kwargs else None,
        baselines=refs,
        n_samples=kwargs["n_samples"],
        stdev=kwargs.get("stdevs", 0.0),
        return_convergence_delta=True,
    )
    agree(ours, theirs)
    scale = max(float(m.abs().max()) for m in as_tuple(theirs))
    torch.testing.assert_close(delta.double(), their_delta.double(), rtol=0, atol=RTOL * max(scale, 1.0))
    if name.startswith("basic_relu"):  # Captum's check: GradientShap ~ IG, and small mean deltas
        ig = attrib.IntegratedGradients(model).attribute(x, baselines=refs)
        tol = 0.01 if kwargs["n_samples"] >= 30000 else 0.1  # Captum's 0.005 holds for its own seed
        for o, g in zip(ours, ig):
            torch.testing.assert_close(o, g, rtol=0, atol=tol)


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_gradient_shap_basic_multi_input_linear(multiply_by_inputs: bool) -> None:
    """``test_basic_multi_input(_wo_mutliplying_by_inputs)``: on a linear model every draw gives the same map."""
    model = seeded(bm.BasicLinearModel).eval()
    x = (torch.ones(10, 3), torch.ones(10, 4))
    shift = 0.0 if multiply_by_inputs else 1.0 + 2e-5
    refs = (torch.zeros(20, 3) + shift, torch.zeros(20, 4) + shift)
    theirs = run_captum_seeded(
        0, "GradientShap", model, x, {"baselines": refs, "n_samples": 50}, multiply_by_inputs=multiply_by_inputs
    )
    ours = ADAPTERS["GradientShap"](model, multiply_by_inputs=multiply_by_inputs)(x, refs, n_samples=50, seed=0)
    agree(ours, theirs)
    ig = attrib.IntegratedGradients(model, multiply_by_inputs=multiply_by_inputs).attribute(
        x, baselines=(refs[0][:10], refs[1][:10])
    )
    agree(ours, ig)


# --- DeepLift where Captum is wrong, and softmax ----------------------------------------------------------


def test_deeplift_reused_relu_module_equals_captum_on_distinct_modules_and_the_float64_reference() -> None:
    """``test_reusable_modules``: Captum refuses a ReLU module used twice; attrib gives the rescale rule's map."""
    model = seeded(bm.BasicModelWithReusedModules).eval()
    x = randn(3, 3, seed=1)
    with pytest.raises(RuntimeError):
        run_captum("DeepLift", model, x, {"target": 0})
    ours, delta = ADAPTERS["DeepLift"](model)(x, target=0, return_convergence_delta=True)
    distinct = nn.Sequential(model.lin1, nn.ReLU(), model.lin2, nn.ReLU()).eval()
    agree(ours, run_captum("DeepLift", distinct, x, {"target": 0}))
    agree(ours, ref.deeplift(distinct, x, torch.zeros_like(x), [0] * 3), rtol=1e-5)
    assert float(delta.abs().max()) < 1e-5


class ModuleReLUModel2(nn.Module):
    """BasicModel2 with ReLU modules, which Captum's DeepLift hooks: ``relu(relu(x1) - 1 - relu(x2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.r1, self.r2, self.r3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.r3(self.r1(x1) - 1 - self.r2(x2))


def test_deeplift_functional_relus_equal_captum_on_relu_modules() -> None:
    """Captum's DeepLift passes the plain gradient through ``F.relu``; attrib applies the rescale rule to it."""
    x = (t([3.0], [1.0], [2.0]), t([1.0], [0.5], [-1.0]))
    refs = (torch.zeros(3, 1), torch.zeros(3, 1))
    ours, delta = ADAPTERS["DeepLift"](bm.BasicModel2())(x, refs, return_convergence_delta=True)
    agree(ours, run_captum("DeepLift", ModuleReLUModel2(), x, {"baselines": refs}))
    assert float(delta.abs().max()) < 1e-6
    _, their_delta = run_captum("DeepLift", bm.BasicModel2(), x, {"baselines": refs, "return_convergence_delta": True})
    assert float(their_delta.abs().max()) > 0.1  # summation-to-delta broken


def _logits(model: nn.Module) -> nn.Module:
    model.softmax = nn.Identity()
    return model


@pytest.mark.parametrize(
    ("name", "cls", "build", "inputs", "baselines", "target"),
    [
        (
            "softmax_classification_zero_baseline",
            "DeepLift",
            lambda: cm.SoftmaxDeepLiftModel(20, 20, 10),
            lambda: torch.arange(20.0).unsqueeze(0),
            0.0,
            torch.tensor(2),
        ),
        (
            "softmax_classification_batch_zero_baseline",
            "DeepLift",
            lambda: cm.SoftmaxDeepLiftModel(40, 20, 10),
            lambda: torch.arange(120.0).reshape(3, 40),
            0,
            torch.tensor([2, 2, 2]),
        ),
        (
            "softmax_classification_batch_multi_target",
            "DeepLift",
            lambda: cm.SoftmaxDeepLiftModel(40, 20, 10),
            lambda: torch.arange(120.0).reshape(3, 40),
            torch.arange(1.0, 41.0).reshape(1, 40),
            torch.tensor([2, 2, 2]),
        ),
        (
            "softmax_classification_multi_baseline",
            "DeepLiftShap",
            lambda: cm.SoftmaxDeepLiftModel(40, 20, 10),
            lambda: torch.arange(40.0).unsqueeze(0),
            randn(5, 40, seed=3),
            torch.tensor(2),
        ),
        (
            "softmax_classification_batch_multi_baseline",
            "DeepLiftShap",
            lambda: cm.SoftmaxDeepLiftModel(40, 20, 10),
            lambda: torch.arange(80.0).reshape(2, 40),
            randn(5, 40, seed=3),
            torch.tensor(2),
        ),
    ],
)
def test_deeplift_softmax_models(name, cls, build, inputs, baselines, target) -> None:
    """attrib has no rescale rule for softmax (refused, naming it); on the logits attrib equals Captum."""
    model = seeded(build).eval()
    x = inputs()
    with pytest.raises(UnsupportedModelError, match="(?i)softmax"):
        ADAPTERS[cls](model)(x, baselines, target=target)
    logits = _logits(model)
    for tgt in (target, torch.tensor(1)):  # Captum's test runs the given target and class 1
        ours, delta = ADAPTERS[cls](logits)(x, baselines, target=tgt, return_convergence_delta=True)
        theirs, their_delta = run_captum(
            cls, logits, x, {"baselines": baselines, "target": tgt, "return_convergence_delta": True}
        )
        agree(ours, theirs)
        assert float(delta.abs().max()) < 0.003 * max(1.0, float(theirs.abs().max()))


def _as_2d(model: nn.Module) -> nn.Sequential:
    """BasicModel_ConvNet(_MaxPool1d) without its softmax as a 2-D nn.Sequential for the float64 reference."""
    layers: list[nn.Module] = []
    for name in ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2"):
        layer = getattr(model, name)
        if isinstance(layer, nn.Conv1d):
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, (1, layer.kernel_size[0]))
            conv.weight.data, conv.bias.data = layer.weight.data.unsqueeze(2), layer.bias.data
            layer = conv
        elif isinstance(layer, nn.MaxPool1d):
            layer = nn.MaxPool2d((1, layer.kernel_size))
        layers.append(layer)
    return nn.Sequential(*layers, nn.Flatten(), model.fc1, model.relu3, model.fc2).eval()


@pytest.mark.parametrize("pool", ["maxpool1d", "maxpool2d", "maxpool3d"])
@pytest.mark.parametrize("scale", [20.0, 500.0])
def test_deeplift_convnets_with_relu_next_to_max_pool(pool: str, scale: float) -> None:
    """``test_convnet_with_maxpool{1,2,3}d(_large_baselines)``: ReLU then max pool (Captum #1104).

    Captum breaks summation-to-delta there; attrib keeps it, and equals the float64 reference (1-D and 2-D).
    The softmax is dropped (attrib refuses it; see test_deeplift_softmax_models).
    """
    build, shape = {
        "maxpool1d": (bm.BasicModel_ConvNet_MaxPool1d, (2, 1, 10)),
        "maxpool2d": (bm.BasicModel_ConvNet, (2, 1, 10, 10)),
        "maxpool3d": (bm.BasicModel_ConvNet_MaxPool3d, (2, 1, 10, 10, 10)),
    }[pool]
    model = _logits(seeded(build).eval())
    x, b = randn(*shape, seed=1, scale=100.0), randn(*shape, seed=2, scale=scale)
    ours, delta = ADAPTERS["DeepLift"](model)(x, b, target=2, return_convergence_delta=True)
    gain = float((model(x) - model(b))[:, 2].abs().max())
    assert float(delta.abs().max()) < 1e-5 * max(gain, 1.0)
    if pool != "maxpool3d":
        seq = _as_2d(model)
        lift = (lambda z: z.unsqueeze(2)) if pool == "maxpool1d" else (lambda z: z)
        expected = ref.deeplift(seq, lift(x), lift(b), [2, 2]).reshape(x.shape)
        agree(ours, expected, rtol=1e-4)
    _, their_delta = run_captum("DeepLift", model, x, {"baselines": b, "target": 2, "return_convergence_delta": True})
    assert float(their_delta.abs().max()) > 1e-3 * max(gain, 1.0)


def test_layer_methods_refuse_what_only_captum_takes() -> None:
    """Captum's multi-layer and tuple-output-layer cases: attrib takes one layer with one Tensor output."""
    from attrib.methods.layer_integrated_gradients import LayerConductance, LayerIntegratedGradients

    net = bm.BasicModel_MultiLayer(multi_input_module=True).eval()
    x = t([0.0, 100.0, 0.0])
    for cls in (LayerConductance, LayerIntegratedGradients):
        with pytest.raises(TypeError, match="one Tensor"):
            cls(net, net.multi_relu).attribute(x, target=0)
    with pytest.raises(NotImplementedError):
        ADAPTERS["LayerIntegratedGradients"](net, [net.linear0, net.linear1])
    # One layer at a time instead: Captum's multi-layer expectation for linear0 and linear1
    for layer, expected in ((net.linear0, [[0.0, 400.0, 0.0]]), (net.linear1, [[90.0, 101.0, 101.0, 101.0]])):
        single = bm.BasicModel_MultiLayer().eval()
        name = "linear0" if layer is net.linear0 else "linear1"
        expect(ADAPTERS["LayerGradientXActivation"](single, getattr(single, name))(x, target=0), expected, 0.01)


# --- KernelShap: every coalition once is the exact Shapley value --------------------------------------------


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in SHAPLEY])
def test_kernel_shap_over_every_coalition_equals_captums_shapley_values(case: Case) -> None:
    """KernelSHAP over all ``2^M`` coalitions (attrib's exact mode) is Captum's ShapleyValues on its cases."""
    from attrib.methods.kernel_shap import KernelShap

    model, inputs = _build(case)
    kwargs = dict(case.kwargs)
    target = kwargs.pop("target")
    if target is None:
        from .captum_adapters import every_output

        target = every_output(model, inputs, kwargs.get("additional_forward_args"))
    if isinstance(kwargs.get("baselines"), bool):
        kwargs["baselines"] = torch.tensor(kwargs["baselines"])
    features = _n_features(inputs, kwargs.get("feature_mask"))
    ours = KernelShap(model).attribute(inputs, target, n_samples=2**features, seed=0, **kwargs)
    agree(ours, run_captum("ShapleyValues", model, inputs, case.kwargs))
    if case.expected is not None:
        expect(ours, case.expected, 1e-3)
