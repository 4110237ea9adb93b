"""Reliability over every public method: global RNG untouched, the same seed gives bit-identical maps,
``batch_size`` changes nothing but rounding, and a fault or KeyboardInterrupt mid-run (long RISE and
extremal-perturbation runs included) leaves the model as it was.

``ALL`` is the registry of every public method on one small conv model; the other reliability
tests (bad input, concurrency) draw on it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import attrib
from attrib.methods.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from attrib.methods.eigen_cam import EigenCAM
from attrib.methods.excitation import ContrastiveExcitationBackprop, ExcitationBackprop
from attrib.methods.extremal import ExtremalPerturbation
from attrib.methods.gradient import InputXGradient, Saliency
from attrib.methods.guided_grad_cam import GuidedGradCAM
from attrib.methods.integrated_gradients import IntegratedGradients
from attrib.methods.modified_backprop import Deconvnet, GuidedBackprop
from attrib.methods.noise_tunnel import NoiseTunnel
from attrib.methods.occlusion import Occlusion
from attrib.methods.rise import RISE
from attrib.methods.score_cam import AblationCAM, ScoreCAM
from attrib.postprocess import ReduceChannels

from .models import Spec, build
from .test_state import assert_same, snapshot, untidy

SPEC = Spec(channels=3, size=8, convs=(4,), pools=(True,), hidden=(), classes=5, relu_styles=("module",) * 4, seed=0)
N = 2


def conv_model() -> nn.Module:
    """conv "0" -> ReLU "1" -> maxpool "2" -> flatten "3" -> linear "4" (5 classes), on (3, 8, 8) images."""
    return build(SPEC)


def images(n: int = N) -> torch.Tensor:
    return torch.rand((n, *SPEC.input_shape), generator=torch.Generator().manual_seed(1))


@dataclass(frozen=True)
class Method:
    """How to build a method on a model and the options of a good call."""

    factory: Callable[[nn.Module], attrib.Attribution]
    options: dict[str, Any] = field(default_factory=dict)
    seeded: bool = False  # draws random numbers (takes seed/generator)
    layer: bool = False  # explains through an inner layer
    images_only: bool = False  # needs (N, C, H, W) inputs


ALL: dict[str, Method] = {
    "Saliency": Method(Saliency),
    "InputXGradient": Method(InputXGradient),
    "GuidedBackprop": Method(GuidedBackprop),
    "Deconvnet": Method(Deconvnet),
    "IntegratedGradients": Method(IntegratedGradients, {"n_steps": 3}),
    "NoiseTunnel": Method(lambda m: NoiseTunnel(Saliency(m)), {"n_samples": 3, "seed": 0}, seeded=True),
    "Pipeline": Method(lambda m: Saliency(m).then(ReduceChannels("abs_max"))),
    "Product": Method(lambda m: GuidedBackprop(m) * InputXGradient(m)),
    "GradCAM": Method(lambda m: GradCAM(m, "1"), layer=True),
    "HiResCAM": Method(lambda m: HiResCAM(m, "1"), layer=True),
    "XGradCAM": Method(lambda m: XGradCAM(m, "1"), layer=True),
    "GradCAMPlusPlus": Method(lambda m: GradCAMPlusPlus(m, "1"), layer=True),
    "LayerCAM": Method(lambda m: LayerCAM(m, "1"), layer=True),
    "ScoreCAM": Method(lambda m: ScoreCAM(m, "1"), layer=True),
    "AblationCAM": Method(lambda m: AblationCAM(m, "1"), layer=True),
    "EigenCAM": Method(lambda m: EigenCAM(m, "1"), layer=True),
    "ExcitationBackprop": Method(lambda m: ExcitationBackprop(m, "1"), layer=True),
    "ContrastiveExcitationBackprop": Method(lambda m: ContrastiveExcitationBackprop(m, "1", "2"), layer=True),
    "GuidedGradCAM": Method(lambda m: GuidedGradCAM(m, "1"), layer=True),
    "Occlusion": Method(Occlusion, {"window": (3, 4, 4), "stride": (3, 2, 2)}),
    "RISE": Method(RISE, {"num_masks": 40, "seed": 0}, seeded=True, images_only=True),
    "ExtremalPerturbation": Method(
        ExtremalPerturbation,
        # Small smoothing and blur suit 8 px images and keep the optimisation cheap.
        {"areas": [0.25], "max_iter": 4, "seed": 0, "sigma": 2.0, "max_blur": 2.0, "num_levels": 2, "step": 3},
        seeded=True,
        images_only=True,
    ),
}


def maps_of(result: Any) -> torch.Tensor:
    """The map tensor of a result (a tensor, or the first entry of a tuple)."""
    return result if isinstance(result, torch.Tensor) else result[0]


def _rng_states() -> tuple[torch.Tensor, object, bytes]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tobytes()


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_method_touches_the_global_rng_and_the_same_seed_gives_bit_identical_maps(name):
    method = ALL[name]
    model = conv_model()
    x = images()
    torch.manual_seed(1234)
    before = _rng_states()
    first = maps_of(method.factory(model).attribute(x, target=1, **method.options))
    after = _rng_states()
    assert torch.equal(before[0], after[0]) and before[1:] == after[1:]
    again = maps_of(method.factory(model).attribute(x, target=1, **method.options))
    assert torch.equal(first, again)  # the same seed (or no randomness) gives bit-identical maps
    if method.seeded:
        other = maps_of(method.factory(model).attribute(x, target=1, **{**method.options, "seed": 1}))
        assert not torch.equal(first, other)
        generator = torch.Generator().manual_seed(0)
        options = {k: v for k, v in method.options.items() if k != "seed"}
        from_generator = maps_of(method.factory(model).attribute(x, target=1, generator=generator, **options))
        assert torch.equal(from_generator, first)  # seed=s is a generator seeded with s


@pytest.mark.parametrize("name", sorted(ALL))
def test_batch_size_changes_nothing_but_rounding(name):
    """Maps agree across batch sizes to float rounding; blocks sum in different orders, so not bit for bit."""
    method = ALL[name]
    model = conv_model()
    x = images(3)
    reference = maps_of(method.factory(model).attribute(x, target=1, batch_size=None, **method.options))
    # Methods with many rows per example (masks, windows, channels, iterations) skip the slow batch_size=1.
    many_rows = name in LONG and name not in ("IntegratedGradients", "NoiseTunnel")
    for batch_size in (5, "auto") if many_rows else (1, 2, "auto"):
        got = maps_of(method.factory(model).attribute(x, target=1, batch_size=batch_size, **method.options))
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)


class Fault(nn.Module):
    """Identity that raises ``error`` on its ``fail_at``-th call."""

    def __init__(self, error: BaseException | None, fail_at: int) -> None:
        super().__init__()
        self.error = error
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.error is not None and self.calls == self.fail_at:
            raise self.error
        return x


def _faulty(fault: Fault) -> nn.Module:
    """conv_model with the fault nested two levels deep after the conv; layer names "0".."4" unchanged."""
    model = conv_model()
    model[0] = nn.Sequential()  # placeholder keeps the indices; rebuilt below
    inner = build(SPEC)
    model[0] = _ConvThenFault(inner[0], fault)
    return model


class _ConvThenFault(nn.Module):
    def __init__(self, conv: nn.Module, fault: Fault) -> None:
        super().__init__()
        self.conv = conv
        self.deeper = nn.Sequential(nn.Sequential(fault))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deeper(self.conv(x))


#: Long runs where the fault strikes in a later block.
LONG: dict[str, dict[str, Any]] = {
    "RISE": {"num_masks": 64, "batch_size": 16},
    "ExtremalPerturbation": {"max_iter": 12, "areas": [0.1, 0.3]},
    "IntegratedGradients": {"n_steps": 50, "batch_size": 8},
    "NoiseTunnel": {"n_samples": 40, "batch_size": 8},
    "Occlusion": {"window": (3, 2, 2), "stride": (3, 1, 1), "batch_size": 8},
    "ScoreCAM": {"batch_size": 2},
}


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError], ids=["interrupt", "error"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_fault_mid_run_leaves_the_model_as_it_was_and_the_next_call_is_as_fresh(name, error):
    method = ALL[name]
    options = {**method.options, **LONG.get(name, {"batch_size": 1})}
    x = images()
    fresh = maps_of(method.factory(_faulty(Fault(None, 0))).attribute(x, target=1, **options))
    fault = Fault(error("injected"), fail_at=2)
    model = _faulty(fault)
    untidy(model, 3)
    before = snapshot(model, (x,))
    rng = _rng_states()
    with pytest.raises(error):
        method.factory(model).attribute(x, target=1, **options)
    assert_same(before, snapshot(model, (x,)))
    after = _rng_states()
    assert torch.equal(rng[0], after[0]) and rng[1:] == after[1:]
    fault.error = None
    again = maps_of(method.factory(model).attribute(x, target=1, **options))
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
