"""Bad input, one table over every public method: each bad call raises a clear ValueError/TypeError
naming the argument, and leaves the model exactly as it was.

A row is ``(method, bad call) -> (exception type, message substring)``. Common rows (bad inputs,
targets, batch sizes, devices, dtypes, model outputs) apply to every method, on its own model and
inputs (the transformer methods' tiny ViT and its images); specific rows cover each method's own options.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from attrib.methods.attention import AttentionRollout
from attrib.methods.attn_lrp import AttnLRP
from attrib.methods.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from attrib.methods.deeplift import DeepLift
from attrib.methods.eigen_cam import EigenCAM
from attrib.methods.excitation import ContrastiveExcitationBackprop, ExcitationBackprop
from attrib.methods.gradient_shap import GradientShap
from attrib.methods.guided_grad_cam import GuidedGradCAM
from attrib.methods.layer_activation import LayerActivation, LayerGradientXActivation
from attrib.methods.layer_integrated_gradients import LayerConductance, LayerIntegratedGradients
from attrib.methods.lrp import LRP
from attrib.methods.score_cam import AblationCAM, ScoreCAM
from attrib.metrics.completeness import CompletenessGap
from attrib.metrics.deletion import Deletion, Insertion
from attrib.metrics.pointing_game import PointingGame
from attrib.metrics.sparseness import Sparseness
from attrib.targets import Neuron

from .test_reliability_methods import ALL, BACKGROUND, CELLS, Method, N, conv_model, images, vit_model
from .test_state import assert_same, snapshot

METHODS = ALL


@dataclass(frozen=True)
class Bad:
    """One bad call: changes the good inputs and/or adds options; expects ``error`` matching ``says``."""

    label: str
    error: type[Exception]
    says: str
    inputs: Callable[[torch.Tensor], Any] = lambda x: x  # the good inputs -> the call's inputs
    options: dict[str, Any] = field(default_factory=dict)
    model: Callable[[nn.Module], nn.Module] | None = None  # the good model -> a bad one (devices, outputs)


def _with(x: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    x = x.clone()
    x[index] = value
    return x


def _dict_output(model: nn.Module) -> nn.Module:
    """The same model (same layer names) returning ``{"logits": ...}``."""

    class DictOutput(type(model)):  # type: ignore[misc]
        def forward(self, *args: Any) -> dict[str, torch.Tensor]:
            return {"logits": super().forward(*args)}

    model.__class__ = DictOutput
    return model


def _on_meta(model: nn.Module) -> nn.Module:
    return model.to("meta")


COMMON: list[Bad] = [
    Bad("nan", ValueError, "inputs must be finite", inputs=lambda x: _with(x, (0, 1, 2, 3), float("nan"))),
    Bad("inf", ValueError, "inputs must be finite", inputs=lambda x: _with(x, (1, 0, 0, 0), float("inf"))),
    Bad("empty batch", ValueError, "inputs must hold at least one example", inputs=lambda x: x[:0]),
    Bad("0-d input", ValueError, "inputs must have a batch dimension", inputs=lambda x: torch.tensor(1.0)),
    Bad("not a tensor", TypeError, "inputs must be a Tensor", inputs=lambda x: x.tolist()[0][0][0][0]),
    Bad("target out of range", ValueError, "target class indices must lie in [0, 5)", options={"target": 7}),
    Bad("negative target", ValueError, "target class index must be >= 0", options={"target": -1}),
    Bad(
        "target wrong length",
        ValueError,
        "one class per example (length N=2)",
        options={"target": torch.tensor([0, 1, 2])},
    ),
    Bad("float target", ValueError, "target must be an integer class index", options={"target": 1.5}),
    Bad(
        "float target tensor",
        ValueError,
        "target must hold integer class indices",
        options={"target": torch.tensor([0.0, 1.0])},
    ),
    Bad("target of a wrong type", TypeError, "target has unsupported type", options={"target": object()}),
    Bad(
        "callable target, wrong rows",
        ValueError,
        "a callable target must return one score per output row",
        options={"target": lambda out: out[:1, 0]},
    ),
    Bad("batch_size 0", ValueError, "batch_size must be a positive int", options={"batch_size": 0}),
    Bad("batch_size text", ValueError, "batch_size must be a positive int", options={"batch_size": "big"}),
    Bad(
        "model on another device",
        ValueError,
        "inputs are on cpu but the model's parameters are on meta",
        model=_on_meta,
    ),
    Bad(
        "half inputs, float model",
        TypeError,
        "inputs of dtype torch.float16, while its parameters are torch.float32",
        inputs=lambda x: x.half(),
    ),
    Bad(
        "dict output without a callable target",
        TypeError,
        "returned a dict, not a Tensor; pass a callable target",
        model=_dict_output,
    ),
    Bad(
        "dict output, top-1 target",
        TypeError,
        "returned a dict, not a Tensor; pass a callable target",
        model=_dict_output,
        options={"target": None},
    ),
]

INTEGER_INPUTS: list[Bad] = [
    Bad("integer inputs", TypeError, "inputs must be a floating-point tensor", inputs=lambda x: (x * 9).long()),
]

#: Methods that also take token ids let integer images reach the model, whose dtype error is caught and named.
TOKEN_ID_INPUTS: list[Bad] = [
    Bad(
        "integer inputs",
        TypeError,
        "the model failed on inputs of dtype torch.int64, while its parameters are torch.float32",
        inputs=lambda x: (x * 9).long(),
    ),
]

#: Rows about the ``target`` argument: they do not apply where the factory fixes the target (a Neuron).
TARGET_ROWS = {bad.label for bad in COMMON if "target" in bad.label or "dict output" in bad.label}
#: A class-agnostic method with ``target=None`` never reads the model output, so a dict output is fine there.
TOP1_DICT_ROW = "dict output, top-1 target"

IMAGES_ONLY: list[Bad] = [
    Bad("3-d inputs", ValueError, "(N, C, H, W)", inputs=lambda x: x[:, 0]),
    Bad("a tuple of inputs", ValueError, "(N, C, H, W)", inputs=lambda x: (x, x)),
]

SPECIFIC: dict[str, list[Bad]] = {
    "RISE": [
        Bad("num_masks 0", ValueError, "num_masks must be a positive int", options={"num_masks": 0}),
        Bad(
            "p above 1", ValueError, "p (the keep probability of a cell) must be a number in (0, 1]", options={"p": 1.5}
        ),
        Bad("p 0", ValueError, "p (the keep probability of a cell) must be a number in (0, 1]", options={"p": 0.0}),
        Bad("num_cells 0", ValueError, "num_cells must be a positive int", options={"num_cells": 0}),
        Bad("unknown score", ValueError, "score must be one of", options={"score": "probability"}),
        Bad(
            "seed and generator",
            ValueError,
            "pass either seed or generator, not both",
            options={"seed": 1, "generator": torch.Generator()},
        ),
    ],
    "Occlusion": [
        Bad(
            "window larger than the input",
            ValueError,
            "dimension 1 needs a window between 1 and 8, got 9",
            options={"window": (3, 9, 9)},
        ),
        Bad("window 0", ValueError, "needs a window between 1 and 8, got 0", options={"window": (3, 0, 2)}),
        Bad("stride 0", ValueError, "stride must be positive", options={"stride": (3, 0, 1)}),
    ],
    "ExtremalPerturbation": [
        Bad(
            "area above 1",
            ValueError,
            "areas must be a number or a non-empty list of numbers in (0, 1)",
            options={"areas": [1.5]},
        ),
        Bad(
            "area 0",
            ValueError,
            "areas must be a number or a non-empty list of numbers in (0, 1)",
            options={"areas": [0.0]},
        ),
        Bad("max_iter 0", ValueError, "max_iter must be a positive int", options={"max_iter": 0}),
        Bad("unknown variant", ValueError, "variant must be one of", options={"variant": "keep"}),
    ],
    "IntegratedGradients": [
        Bad("n_steps 0", ValueError, "n_steps must be a positive int", options={"n_steps": 0}),
        Bad("n_steps float", ValueError, "n_steps must be a positive int", options={"n_steps": 2.5}),
        Bad("unknown rule", ValueError, "method must be one of", options={"method": "simpson"}),
        Bad(
            "trapezoid with 1 step",
            ValueError,
            "riemann_trapezoid needs n_steps >= 2",
            options={"method": "riemann_trapezoid", "n_steps": 1},
        ),
        Bad(
            "baselines wrong shape",
            ValueError,
            "baselines of shape (2, 3) does not broadcast",
            options={"baselines": torch.zeros(2, 3)},
        ),
        Bad("baselines wrong type", TypeError, "baselines has unsupported type", options={"baselines": "black"}),
        Bad(
            "baselines wrong count",
            ValueError,
            "baselines must have one entry per input",
            options={"baselines": (0.0, 0.0)},
        ),
        Bad(
            "extra arg wrong rows",
            ValueError,
            "additional_forward_args[0] is a tensor of shape (3,)",
            options={"additional_forward_args": torch.ones(3)},
        ),
    ],
    "NoiseTunnel": [
        Bad("n_samples 0", ValueError, "n_samples must be a positive int", options={"n_samples": 0}),
        Bad("negative stdev", ValueError, "stdev must be a non-negative finite number", options={"stdev": -0.1}),
        Bad("NaN stdev", ValueError, "stdev must be a non-negative finite number", options={"stdev": float("nan")}),
        Bad(
            "stdev per input, wrong count",
            ValueError,
            "stdev must be a number or a tuple with one number per input",
            options={"stdev": (0.1, 0.2)},
        ),
        Bad("unknown kind", ValueError, "kind must be one of", options={"kind": "smoothest"}),
        Bad(
            "unknown stdev_mode",
            ValueError,
            "stdev_mode must be 'relative' or 'absolute'",
            options={"stdev_mode": "percent"},
        ),
        Bad("seed of a wrong type", TypeError, "seed must be an int or None", options={"seed": "zero"}),
        Bad(
            "seed and generator",
            ValueError,
            "pass either seed or generator, not both",
            options={"seed": 1, "generator": torch.Generator()},
        ),
        Bad(
            "delta of a method without one",
            ValueError,
            "needs a wrapped method with a convergence delta",
            options={"return_convergence_delta": True},
        ),
    ],
    "Product": [
        Bad("option neither takes", TypeError, "takes the option 'n_steps'", options={"n_steps": 3}),
    ],
    "DeepLift": [
        Bad("batch_size 1", ValueError, "batch_size must be at least 2 for DeepLift", options={"batch_size": 1}),
        Bad(
            "baselines wrong shape",
            ValueError,
            "baselines of shape (2, 3) does not broadcast",
            options={"baselines": torch.zeros(2, 3)},
        ),
        Bad("baselines wrong type", TypeError, "baselines has unsupported type", options={"baselines": "black"}),
    ],
    "DeepLiftShap": [
        Bad("no baselines", ValueError, "baselines is required", options={"baselines": None}),
        Bad(
            "empty baselines",
            ValueError,
            "baselines is an empty set",
            options={"baselines": BACKGROUND[:0]},
        ),
        Bad(
            "baselines wrong shape",
            ValueError,
            "baselines must have shape (B, 3, 8, 8) to match the input's (2, 3, 8, 8), got (3, 3, 4, 4)",
            options={"baselines": BACKGROUND[:, :, :4, :4]},
        ),
        Bad("baselines a number", TypeError, "baselines must be a floating-point Tensor", options={"baselines": 0.0}),
        Bad("batch_size 1", ValueError, "batch_size must be at least 2 for DeepLift", options={"batch_size": 1}),
    ],
    "GradientShap": [
        Bad("n_samples 0", ValueError, "n_samples must be a positive int", options={"n_samples": 0}),
        Bad("negative stdev", ValueError, "stdev must be a non-negative finite number", options={"stdev": -1.0}),
        Bad("no baselines", ValueError, "baselines is required", options={"baselines": None}),
        Bad(
            "baselines wrong shape",
            ValueError,
            "baselines must have shape (B, 3, 8, 8)",
            options={"baselines": BACKGROUND[:, :, :4, :4]},
        ),
        Bad("seed of a wrong type", TypeError, "seed must be an int or None", options={"seed": "zero"}),
        Bad(
            "seed and generator",
            ValueError,
            "pass either seed or generator, not both",
            options={"seed": 1, "generator": torch.Generator()},
        ),
    ],
    "FeatureAblation": [
        Bad(
            "feature_mask wrong shape",
            ValueError,
            "feature_mask of shape (1, 1, 4, 4) does not broadcast to the input's shape (2, 3, 8, 8)",
            options={"feature_mask": CELLS[..., :4, :4]},
        ),
        Bad(
            "float feature_mask",
            TypeError,
            "feature_mask must hold integer feature ids",
            options={"feature_mask": CELLS.float()},
        ),
        Bad(
            "baselines wrong shape",
            ValueError,
            "baselines of shape (2, 3) does not broadcast",
            options={"baselines": torch.zeros(2, 3)},
        ),
    ],
    "FeaturePermutation": [
        Bad("n_permutations 0", ValueError, "n_permutations must be a positive int", options={"n_permutations": 0}),
        Bad(
            "feature_mask wrong shape",
            ValueError,
            "feature_mask of shape (1, 1, 4, 4) does not broadcast",
            options={"feature_mask": CELLS[..., :4, :4]},
        ),
        Bad(
            "seed and generator",
            ValueError,
            "pass either seed or generator, not both",
            options={"seed": 1, "generator": torch.Generator()},
        ),
    ],
    "ShapleyValueSampling": [
        Bad("n_samples 0", ValueError, "n_samples must be a positive int", options={"n_samples": 0}),
        Bad(
            "feature_mask wrong shape",
            ValueError,
            "feature_mask of shape (1, 1, 4, 4) does not broadcast",
            options={"feature_mask": CELLS[..., :4, :4]},
        ),
        Bad(
            "seed and generator",
            ValueError,
            "pass either seed or generator, not both",
            options={"seed": 1, "generator": torch.Generator()},
        ),
    ],
    "KernelShap": [
        Bad("n_samples 1", ValueError, "n_samples must be an int >= 2", options={"n_samples": 1}),
        Bad(
            "float feature_mask",
            TypeError,
            "feature_mask must hold integer feature ids",
            options={"feature_mask": CELLS.float()},
        ),
        Bad(
            "seed and generator",
            ValueError,
            "pass either seed or generator, not both",
            options={"seed": 1, "generator": torch.Generator()},
        ),
    ],
    "Lime": [
        Bad("n_samples 0", ValueError, "n_samples must be a positive int", options={"n_samples": 0}),
        Bad(
            "unknown interpretable_model",
            ValueError,
            "interpretable_model must be 'lasso', 'ridge', 'linear' or a callable",
            options={"interpretable_model": "tree"},
        ),
        Bad("kernel_width 0", ValueError, "kernel_width must be a positive number", options={"kernel_width": 0.0}),
        Bad("unknown distance", ValueError, "distance must be 'cosine' or 'euclidean'", options={"distance": "l1"}),
        Bad("negative alpha", ValueError, "alpha must be a positive number", options={"alpha": -1.0}),
        Bad(
            "seed and generator",
            ValueError,
            "pass either seed or generator, not both",
            options={"seed": 1, "generator": torch.Generator()},
        ),
    ],
    "LayerIntegratedGradients": [
        Bad("n_steps 0", ValueError, "n_steps must be a positive int", options={"n_steps": 0}),
        Bad("unknown rule", ValueError, "method must be one of", options={"method": "simpson"}),
        Bad(
            "layer input flag not a bool",
            TypeError,
            "attribute_to_layer_input must be a bool",
            options={"attribute_to_layer_input": "yes"},
        ),
        Bad(
            "baselines wrong shape",
            ValueError,
            "baselines of shape (2, 3) does not broadcast",
            options={"baselines": torch.zeros(2, 3)},
        ),
    ],
    "LayerConductance": [
        Bad("n_steps 0", ValueError, "n_steps must be a positive int", options={"n_steps": 0}),
        Bad("unknown rule", ValueError, "method must be one of", options={"method": "simpson"}),
    ],
    "LayerActivation": [
        Bad(
            "layer input flag not a bool",
            TypeError,
            "attribute_to_layer_input must be a bool",
            options={"attribute_to_layer_input": "yes"},
        ),
    ],
    "LayerGradientXActivation": [
        Bad(
            "layer input flag not a bool",
            TypeError,
            "attribute_to_layer_input must be a bool",
            options={"attribute_to_layer_input": 2},
        ),
    ],
    "AttentionRollout": [
        Bad("unknown head_fusion", ValueError, "head_fusion must be one of", options={"head_fusion": "median"}),
        Bad("residual above 1", ValueError, "residual must be a float in [0, 1]", options={"residual": 1.5}),
        Bad("token out of range", ValueError, "token positions must lie in [-17, 17)", options={"token": 99}),
        Bad("float token", TypeError, "token must be the explained token's position", options={"token": 1.5}),
        Bad(
            "tokens wrong length",
            ValueError,
            "token must be an int or hold one position per example (N=2,)",
            options={"token": torch.tensor([0, 1, 2])},
        ),
    ],
    "GradientWeightedRollout": [
        Bad("token out of range", ValueError, "token positions must lie in [-17, 17)", options={"token": 99}),
        Bad("text token", TypeError, "token must be the explained token's position", options={"token": "cls"}),
    ],
    "AttnLRP": [
        # Token ids need an embedding to read the relevance at; a ViT has none, and AttnLRP says so.
        Bad(
            "integer inputs",
            ValueError,
            "the inputs hold token ids but VisionTransformer has no get_input_embeddings() and no nn.Embedding",
            inputs=lambda x: (x * 9).long(),
        ),
    ],
}
for _lrp in ("LRP", "LRP-EpsilonPlus", "LRP-EpsilonAlpha2Beta1", "LRP-EpsilonGammaBox"):
    SPECIFIC[_lrp] = []  # LRP has no options beyond the common ones; its constructor is checked below

#: Methods whose integer-input row is their own (in SPECIFIC).
OWN_INTEGER_ROW = {"AttnLRP"}


#: Checks a method still lacks: (method, row label) -> what its owner must add. strict: fixing it flags the entry.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def _bad_calls(name: str, method: Method) -> list[Bad]:
    common = [
        bad
        for bad in COMMON
        if not (method.fixed_target and bad.label in TARGET_ROWS)
        and not (method.class_agnostic and bad.label == TOP1_DICT_ROW)
    ]
    # Every method refuses integer images: up front, or (methods that also take token ids) when the model does.
    integers = [] if name in OWN_INTEGER_ROW else TOKEN_ID_INPUTS if method.token_ids else INTEGER_INPUTS
    return common + integers + (IMAGES_ONLY if method.images_only else []) + SPECIFIC.get(name, [])


def _rows() -> list[Any]:
    rows = []
    for name, method in METHODS.items():
        for bad in _bad_calls(name, method):
            gap = KNOWN_GAPS.get((name, bad.label))
            marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
            rows.append(pytest.param(name, bad, id=f"{name}-{bad.label}", marks=marks))
    return rows


@pytest.mark.parametrize("name, bad", _rows())
def test_bad_call_raises_a_clear_error_and_leaves_the_model_alone(name: str, bad: Bad) -> None:
    method = METHODS[name]
    model = method.model() if bad.model is None else bad.model(method.model())
    options = {"target": 1, **method.options, **bad.options}
    inputs = bad.inputs(method.inputs())
    before = snapshot(model, ()) if bad.model is not _on_meta else None
    with pytest.raises(bad.error, match=re.escape(bad.says)):
        method.factory(model).attribute(inputs, **options)
    if before is not None:
        assert_same(before, snapshot(model, ()))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_good_call_of_every_row_works(name: str) -> None:
    """The table's baseline call succeeds, so each row's error is due to its one bad ingredient."""
    method = METHODS[name]
    result = method.factory(method.model()).attribute(method.inputs(), **{"target": 1, **method.options})
    maps = result if isinstance(result, torch.Tensor) else result[0]
    assert maps.shape[0] == N and torch.isfinite(maps).all()


LAYER_METHODS = [
    LayerIntegratedGradients,
    LayerConductance,
    LayerActivation,
    LayerGradientXActivation,
    GradCAM,
    HiResCAM,
    XGradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    AblationCAM,
    EigenCAM,
    ExcitationBackprop,
    GuidedGradCAM,
]


@pytest.mark.parametrize("cls", LAYER_METHODS, ids=lambda c: c.__name__)
def test_a_layer_that_does_not_exist_is_named_with_close_matches(cls):
    with pytest.raises(ValueError, match=re.escape("the model has no layer named 'features.9'")):
        cls(conv_model(), "features.9")
    with pytest.raises(TypeError, match="layer must be a dotted module name or an nn.Module"):
        cls(conv_model(), 3)


@pytest.mark.parametrize(
    "build, error, says",
    [
        (lambda: LRP(conv_model(), composite="epsilon"), TypeError, "composite must be an attrib.lrp.Composite"),
        (lambda: LRP(lambda x: x), TypeError, "so model must be an nn.Module"),
        (lambda: AttnLRP(vit_model(), composite=3), TypeError, "composite must be an attrib.lrp.Composite"),
        (lambda: AttnLRP(vit_model(), epsilon=-1.0), ValueError, "epsilon must be a finite non-negative float"),
        (lambda: AttnLRP(vit_model(), "encoder.nope"), ValueError, "the model has no layer named 'encoder.nope'"),
        (lambda: DeepLift(conv_model(), multiply_by_inputs=1), TypeError, "multiply_by_inputs must be a bool"),
        (lambda: GradientShap(conv_model(), multiply_by_inputs="no"), TypeError, "multiply_by_inputs must be a bool"),
        (
            lambda: LayerGradientXActivation(conv_model(), "0", multiply_by_inputs=0),
            TypeError,
            "multiply_by_inputs must be a bool",
        ),
        (
            lambda: AttentionRollout(conv_model()).attribute(images(), target=1),
            ValueError,
            "no attention probabilities were found in the forward pass of Sequential",
        ),
    ],
    ids=[
        "lrp-composite",
        "lrp-callable",
        "attnlrp-composite",
        "attnlrp-epsilon",
        "attnlrp-layer",
        "deeplift-flag",
        "gradientshap-flag",
        "layergxa-flag",
        "rollout-no-attention",
    ],
)
def test_bad_constructor_arguments_of_the_newer_methods(build, error, says):
    with pytest.raises(error, match=re.escape(says)):
        build()


def _bad_neurons(method: Method) -> tuple[list[tuple[str, Neuron, str]], nn.Module]:
    """Bad Neuron targets for the method's model (and the model), each with what its error says."""
    model = method.model()
    inner = model.encoder.layers[1].mlp if method.transformer else model[4]
    return [
        ("out of range", Neuron(inner, (99,)), "is out of range for the layer's output"),
        ("too many indices", Neuron(inner, (0, 0, 0, 0)), "non-batch dimensions"),
        ("outside the model", Neuron(nn.Linear(2, 2), 0), "did not run"),
    ], model


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[(name, "bad neuron")])])
        if (name, "bad neuron") in KNOWN_GAPS
        else name
        for name in sorted(METHODS)
        if not METHODS[name].fixed_target
    ],
)
def test_a_bad_neuron_target_is_a_clear_error_for_every_method(name):
    """Every method takes a Neuron target, so every method refuses a bad one clearly."""
    method = METHODS[name]
    cases, model = _bad_neurons(method)
    before = snapshot(model, ())
    for _label, neuron, says in cases:
        with pytest.raises(ValueError, match=re.escape(says)):
            method.factory(model).attribute(method.inputs(), **{**method.options, "target": neuron})
        assert_same(before, snapshot(model, ()))


def test_contrastive_excitation_backprop_names_a_missing_contrast_layer():
    with pytest.raises(ValueError, match=re.escape("the model has no layer named '9'")):
        ContrastiveExcitationBackprop(conv_model(), "1", "9")


# Metrics: (label, call, error, says). Each call builds the metric and scores a good map.
def _good_maps() -> torch.Tensor:
    return torch.rand((N, 1, 8, 8), generator=torch.Generator().manual_seed(2))


METRIC_ROWS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "Deletion nan inputs",
        lambda: Deletion(conv_model(), _with(images(), (0, 0, 0, 0), float("nan")), 1),
        ValueError,
        "inputs must be finite",
    ),
    (
        "Deletion steps 0",
        lambda: Deletion(conv_model(), images(), 1, steps=0),
        ValueError,
        "steps (the curve has steps + 1 points) must be a positive int, got 0",
    ),
    (
        "Deletion 3-d inputs",
        lambda: Deletion(conv_model(), images()[:, 0], 1),
        ValueError,
        "inputs must be images (N, C, H, W)",
    ),
    (
        "Deletion target out of range",
        lambda: Deletion(conv_model(), images(), 9)(_good_maps()),
        ValueError,
        "target class indices must lie in [0, 5)",
    ),
    ("Deletion target wrong length", lambda: Deletion(conv_model(), images(), [0, 1, 2]), ValueError, "length N=2"),
    (
        "Deletion batch_size 0",
        lambda: Deletion(conv_model(), images(), 1, batch_size=0),
        ValueError,
        "batch_size must be a positive int",
    ),
    (
        "Insertion unknown score",
        lambda: Insertion(conv_model(), images(), 1, score="prob"),
        ValueError,
        "score must be one of",
    ),
    ("Insertion empty batch", lambda: Insertion(conv_model(), images()[:0], 1), ValueError, "at least one example"),
    (
        "PointingGame negative tolerance",
        lambda: PointingGame(torch.ones(N, 8, 8, dtype=torch.bool), tolerance=-1),
        ValueError,
        "tolerance must be a non-negative number",
    ),
    (
        "PointingGame NaN tolerance",
        lambda: PointingGame(torch.ones(N, 8, 8, dtype=torch.bool), tolerance=float("nan")),
        ValueError,
        "tolerance must be a non-negative number",
    ),
    (
        "CompletenessGap nan inputs",
        lambda: CompletenessGap(conv_model(), _with(images(), (1, 1, 1, 1), float("inf")), 1),
        ValueError,
        "inputs must be finite",
    ),
    (
        "CompletenessGap wrong baselines",
        lambda: CompletenessGap(conv_model(), images(), 1, baselines=torch.zeros(2, 3))(_good_maps()),
        ValueError,
        "does not broadcast",
    ),
    ("Sparseness not a tensor", lambda: Sparseness()("map"), TypeError, "maps"),
]


@pytest.mark.parametrize("label, call, error, says", METRIC_ROWS, ids=[row[0] for row in METRIC_ROWS])
def test_bad_metric_call_raises_a_clear_error(label, call, error, says):
    with pytest.raises(error, match=re.escape(says)):
        call()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_channels_last_inputs_give_the_same_maps(name: str) -> None:
    method = METHODS[name]
    model = method.model()
    x = method.inputs()
    expected = method.factory(model).attribute(x, **{"target": 1, **method.options})
    got = method.factory(model).attribute(x.to(memory_format=torch.channels_last), **{"target": 1, **method.options})
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("baselines", [0.5, torch.tensor([[0.0, 1.5, 2.0]]), float("nan")])
def test_fractional_baselines_for_token_ids_are_refused_not_truncated(baselines):
    from attrib.methods.feature_ablation import FeatureAblation

    model = torch.nn.Sequential(torch.nn.Embedding(5, 2), torch.nn.Flatten(), torch.nn.Linear(6, 2))
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="whole numbers"):
        FeatureAblation(model).attribute(ids, target=0, baselines=baselines)
    # Whole numbers in any dtype are fine (a pad id).
    assert FeatureAblation(model).attribute(ids, target=0, baselines=torch.tensor([[0.0, 0.0, 0.0]])).shape == (1, 3)
