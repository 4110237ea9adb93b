"""Models as users have them: structured outputs, torch.compile, DataParallel, frozen and half parameters."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import attrib
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
from attrib.rules import UnsupportedModelError

from .models import ResidualBNNet, inputs_for
from .test_state import assert_same, snapshot

BACKGROUND = torch.rand((2, 3, 6, 6), generator=torch.Generator().manual_seed(4))  # references (B=2)
CELLS = grid_mask((6, 6), 3)  # four 3x3 cells

METHODS = {
    "saliency": (Saliency, {}),
    "input_x_gradient": (InputXGradient, {}),
    "guided_backprop": (GuidedBackprop, {}),
    "deconvnet": (Deconvnet, {}),
    "integrated_gradients": (IntegratedGradients, {"n_steps": 4}),
    "noise_tunnel": (lambda m: NoiseTunnel(Saliency(m)), {"n_samples": 3, "seed": 1}),
    "deeplift": (DeepLift, {}),
    "deeplift_shap": (DeepLiftShap, {"baselines": BACKGROUND}),
    "gradient_shap": (GradientShap, {"baselines": BACKGROUND, "n_samples": 3, "stdev": 0.1, "seed": 1}),
    "lrp": (LRP, {}),
    "feature_ablation": (FeatureAblation, {"feature_mask": CELLS}),
    "feature_permutation": (FeaturePermutation, {"feature_mask": CELLS, "seed": 1}),
    "shapley": (ShapleyValueSampling, {"feature_mask": CELLS, "n_samples": 3, "seed": 1}),
    "kernel_shap": (KernelShap, {"feature_mask": CELLS, "n_samples": 16, "seed": 1}),
    # alpha: the default 0.01 shrinks every coefficient of this small-scored model to 0 (no map to compare).
    "lime": (Lime, {"feature_mask": CELLS, "n_samples": 16, "seed": 1, "alpha": 1e-3}),
    # Layer methods, at the stem (its output is the same whatever wraps the model: "net.stem", "module.stem").
    "layer_integrated_gradients": (lambda m: LayerIntegratedGradients(m, _stem(m)), {"n_steps": 4}),
    "layer_conductance": (lambda m: LayerConductance(m, _stem(m)), {"n_steps": 4}),
    "layer_activation": (lambda m: LayerActivation(m, _stem(m)), {}),
    "layer_gradient_x_activation": (lambda m: LayerGradientXActivation(m, _stem(m)), {}),
}


def _stem(model: nn.Module) -> nn.Module:
    """ResidualBNNet's stem, inside whatever wraps the model."""
    return next(m for m in model.modules() if isinstance(m, ResidualBNNet)).stem


@dataclass
class Output:
    """A HuggingFace-style output object."""

    logits: torch.Tensor
    hidden: torch.Tensor


Pair = namedtuple("Pair", ["logits", "hidden"])


class Structured(nn.Module):
    """ResidualBNNet whose output is wrapped in a tuple, dict, namedtuple or dataclass."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.net = ResidualBNNet(seed=3)
        self.form = form

    def forward(self, x: torch.Tensor) -> object:
        logits = self.net(x)
        hidden = logits * 2
        if self.form == "tuple":
            return logits, hidden
        if self.form == "dict":
            return {"logits": logits, "hidden": hidden}
        if self.form == "namedtuple":
            return Pair(logits, hidden)
        return Output(logits, hidden)


PICK = {
    "tuple": lambda out: out[0][:, 3],
    "dict": lambda out: out["logits"][:, 3],
    "namedtuple": lambda out: out.logits[:, 3],
    "dataclass": lambda out: out.logits[:, 3],
}


CASES = [("saliency", form) for form in sorted(PICK)] + [
    (name, "dataclass") for name in sorted(METHODS) if name != "saliency"
]


@pytest.mark.parametrize("name, form", CASES)
def test_structured_outputs_work_with_a_callable_target(name, form):
    factory, options = METHODS[name]
    model = Structured(form)
    x = inputs_for((3, 6, 6), 3, 0)
    got = factory(model).attribute(x, target=PICK[form], **options)
    expected = factory(model.net).attribute(x, target=3, **options)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("form", sorted(PICK))
def test_structured_outputs_without_a_callable_target_say_to_pass_one(form):
    hint = {"tuple": "out[0][:, 3]", "dict": "out['logits'][:, 3]"}.get(form, "out.logits[:, 3]")
    message = f"e.g. target=lambda out: {hint}".replace("[", r"\[")
    for target in (3, None, [1, 2, 3]):
        with pytest.raises(TypeError, match=r"not a Tensor; pass a callable target.*" + message):
            Saliency(Structured(form)).attribute(inputs_for((3, 6, 6), 3, 0), target=target)


def test_integrated_gradients_delta_with_a_structured_output():
    model = Structured("dataclass")
    x = inputs_for((3, 6, 6), 2, 1)
    maps, delta = IntegratedGradients(model).attribute(
        x, target=lambda out: out.logits[:, 1], n_steps=6, return_convergence_delta=True
    )
    ref_maps, ref_delta = IntegratedGradients(model.net).attribute(
        x, target=1, n_steps=6, return_convergence_delta=True
    )
    torch.testing.assert_close(maps, ref_maps)
    torch.testing.assert_close(delta, ref_delta)


# --- torch.compile --------------------------------------------------------------------------


def _small_relu_net() -> nn.Module:
    g = torch.Generator().manual_seed(4)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def _check_compiled(backend: str) -> None:
    eager = _small_relu_net()
    compiled = torch.compile(eager, backend=backend)
    x = inputs_for((2, 4, 4), 3, 2)
    for factory, options in (
        (Saliency, {}),
        (InputXGradient, {}),
        (IntegratedGradients, {"n_steps": 4}),
        (lambda m: NoiseTunnel(Saliency(m)), {"n_samples": 2, "seed": 0}),
    ):
        torch.testing.assert_close(
            factory(compiled).attribute(x, target=1, **options), factory(eager).attribute(x, target=1, **options)
        )
    # Rule-based methods either match the eager maps or refuse; never silently the plain gradient.
    for rule_method in (GuidedBackprop, Deconvnet):
        try:
            got = rule_method(compiled).attribute(x, target=1)
        except UnsupportedModelError as err:
            assert "compiled" in str(err) and "_orig_mod" in str(err)
        else:
            torch.testing.assert_close(got, rule_method(eager).attribute(x, target=1))
    # Eager module state is guarded through the compiled wrapper.
    before = snapshot(eager, ())
    Saliency(compiled).attribute(x, target=2)
    assert_same(before, snapshot(eager, ()))


def test_compiled_models_give_the_eager_maps_or_a_clear_error_aot_eager():
    # aot_eager traces through AOTAutograd like inductor (opaque CompiledFunction nodes) but compiles in seconds.
    _check_compiled("aot_eager")
    eager = _small_relu_net()
    with pytest.raises(UnsupportedModelError, match="compiled"):
        GuidedBackprop(torch.compile(eager, backend="aot_eager")).attribute(inputs_for((2, 4, 4), 2, 0), target=0)


def test_compiled_models_with_the_eager_backend_keep_rule_methods_exact():
    _check_compiled("eager")


@pytest.mark.slow
def test_compiled_models_give_the_eager_maps_or_a_clear_error_inductor():
    _check_compiled("inductor")


# --- DataParallel, frozen and half parameters ----------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_data_parallel_wrapped_models_give_the_same_maps(name):
    factory, options = METHODS[name]
    model = ResidualBNNet(seed=6)
    x = inputs_for((3, 6, 6), 2, 6)
    wrapped = nn.DataParallel(model)
    before = snapshot(wrapped, ())
    torch.testing.assert_close(
        factory(wrapped).attribute(x, target=2, **options), factory(model).attribute(x, target=2, **options)
    )
    assert_same(before, snapshot(wrapped, ()))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_frozen_parameters_stay_frozen_and_maps_are_unchanged(name):
    factory, options = METHODS[name]
    x = inputs_for((3, 6, 6), 2, 7)
    reference = factory(ResidualBNNet(seed=7)).attribute(x, target=0, **options)
    model = ResidualBNNet(seed=7)
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 2 == 0)
    before = snapshot(model, ())
    torch.testing.assert_close(factory(model).attribute(x, target=0, **options), reference)
    assert_same(before, snapshot(model, ()))
    assert all(p.grad is None for p in model.parameters())


KNOWN_GAPS: dict[tuple[str, torch.dtype], str] = {}


@pytest.mark.parametrize(
    "name, dtype",
    [
        pytest.param(
            name,
            dtype,
            id=f"{name}-{str(dtype).removeprefix('torch.')}",
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[(name, dtype)])]
            if (name, dtype) in KNOWN_GAPS
            else [],
        )
        for name in sorted(METHODS)
        for dtype in (torch.bfloat16, torch.float16)
    ],
)
def test_half_precision_models_work_and_stay_close_to_float32(name, dtype):
    factory, options = METHODS[name]
    x = inputs_for((3, 6, 6), 2, 8)
    exact = factory(ResidualBNNet(seed=8)).attribute(x, target=1, **options)
    low = ResidualBNNet(seed=8).to(dtype)
    maps = factory(low).attribute(x.to(dtype), target=1, **options)
    assert maps.dtype == dtype
    assert not maps.requires_grad
    error = float((maps.float() - exact).norm() / exact.norm())
    assert error < 0.1, error  # observed: at most a few percent (bfloat16 keeps 8 significant bits)


def test_deeplift_in_float16_with_a_unit_equal_at_input_and_baseline():
    """The minimal case: a ReLU unit whose input equals the baseline's (0 = 0) makes the float16 map NaN."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
        net[2].weight.fill_(1.0)
        net[2].bias.zero_()
    x = torch.tensor([[1.0, 0.0]])  # the second unit sees 0 at the input and at the (zero) baseline
    assert torch.equal(attrib.DeepLift(net).attribute(x, target=0), torch.tensor([[1.0, 0.0]]))
    assert torch.equal(attrib.DeepLift(net.half()).attribute(x.half(), target=0), torch.tensor([[1.0, 0.0]]).half())


def test_half_inputs_to_a_float_model_name_both_dtypes():
    with pytest.raises(TypeError, match=r"inputs of dtype torch.bfloat16, while its parameters are torch.float32"):
        Saliency(ResidualBNNet()).attribute(inputs_for((3, 6, 6), 2, 0, torch.bfloat16), target=0)


def test_plain_callables_and_parameterless_modules_skip_the_device_check():
    x = inputs_for((6,), 2, 0)
    torch.testing.assert_close(
        Saliency(nn.Identity()).attribute(x, target=lambda out: out[:, 0]).sum(), torch.tensor(2.0)
    )
    assert attrib.Saliency(lambda t: t * 2).attribute(x, target=1).shape == (2, 6)
