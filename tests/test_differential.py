"""Differential tests: attrib against Captum and TorchRay on the definitions they share.

Maps must agree to 1e-5 relative to the map's scale. Where the peers differ
from the definition, the test states the difference and checks it exactly.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import Deconvolution as CaptumDeconvolution
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import NoiseTunnel as CaptumNoiseTunnel
from captum.attr import Saliency as CaptumSaliency
from hypothesis import given
from hypothesis import strategies as st
from torchray.attribution.deconvnet import deconvnet as torchray_deconvnet
from torchray.attribution.gradient import gradient as torchray_gradient
from torchray.attribution.guided_backprop import guided_backprop as torchray_guided_backprop

import attrib
from attrib.core.quadrature import METHODS
from attrib.methods.noise_tunnel import KINDS

from .models import ResidualBNNet, Spec, TwoInputNet, build, inputs_for, specs

MODULE_RELUS = ("module",)
FUNCTIONAL_RELUS = ("functional", "functional_inplace", "torch", "torch_inplace")


def assert_close_rel(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5, scale: float | None = None) -> None:
    """Close to ``rtol`` relative to ``scale``, by default the largest magnitude in ``theirs``."""
    if scale is None:
        scale = float(theirs.detach().abs().max()) if theirs.numel() else 0.0
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=rtol, atol=rtol * max(scale, 1e-12))


def _case(spec, n, data):
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, spec.classes - 1), min_size=n, max_size=n)))
    return model, x, targets


# --- Captum ---------------------------------------------------------------------------


@given(spec=specs(), n=st.integers(1, 4), data=st.data())
def test_saliency_and_input_x_gradient_match_captum(spec, n, data):
    model, x, targets = _case(spec, n, data)
    for absolute in (True, False):
        theirs = CaptumSaliency(model).attribute(x.clone(), target=targets, abs=absolute)
        assert_close_rel(attrib.Saliency(model).attribute(x, target=targets, abs=absolute), theirs)
    theirs = CaptumInputXGradient(model).attribute(x.clone(), target=targets)
    assert_close_rel(attrib.InputXGradient(model).attribute(x, target=targets), theirs)


@pytest.mark.parametrize("method", METHODS)
@given(spec=specs(), n=st.integers(1, 3), steps=st.integers(2, 12), data=st.data())
def test_integrated_gradients_match_captum(method, spec, n, steps, data):
    model, x, targets = _case(spec, n, data)
    baseline = inputs_for(spec.input_shape, n, spec.seed + 1) * 0.5
    batch_size = data.draw(st.integers(1, n * steps))
    theirs, their_delta = CaptumIntegratedGradients(model).attribute(
        x.clone(),
        baselines=baseline,
        target=targets,
        n_steps=steps,
        method=method,
        internal_batch_size=batch_size,
        return_convergence_delta=True,
    )
    ours, our_delta = attrib.IntegratedGradients(model).attribute(
        x,
        target=targets,
        baselines=baseline,
        n_steps=steps,
        method=method,
        batch_size=batch_size,
        return_convergence_delta=True,
    )
    if method == "riemann_trapezoid":
        # Captum weights the trapezoid with 1/n instead of 1/(n-1): its integral is (n-1)/n of ours.
        theirs = theirs * steps / (steps - 1)
    else:
        # Deltas are float32 rounding noise when the rule is exact: compare on the scale of the maps.
        scale = 1.0 + float(theirs.detach().abs().flatten(1).sum(1).max())
        torch.testing.assert_close(our_delta, their_delta.detach(), rtol=1e-4, atol=1e-5 * scale)
    assert_close_rel(ours, theirs)


def _captum_noise(shape: tuple[int, ...], samples: int, stdev: float, seed: int) -> torch.Tensor:
    """The noise Captum's NoiseTunnel draws under ``seed`` (rows example-major)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.normal(0, torch.tensor(stdev).repeat((shape[0] * samples, *shape[1:])))


class ReplayTunnel(attrib.NoiseTunnel):
    """Feeds attrib's NoiseTunnel a given noise instead of its own draws."""

    def __init__(self, method, noise: torch.Tensor, samples: int) -> None:
        super().__init__(method)
        self.noise = noise
        self.samples = samples
        self.copy = 0

    def sample_noise(self, inputs, scales, generator):
        (x,) = inputs
        noise = self.noise.view(x.shape[0], self.samples, *x.shape[1:])[:, self.copy]
        self.copy += 1
        return (noise,)


@pytest.mark.parametrize("kind", KINDS)
@given(spec=specs(), n=st.integers(1, 3), samples=st.integers(1, 5), data=st.data())
def test_noise_tunnel_over_saliency_matches_captum_with_identical_noise(kind, spec, n, samples, data):
    model, x, targets = _case(spec, n, data)
    stdev, seed = 0.3, spec.seed
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        theirs = CaptumNoiseTunnel(CaptumSaliency(model)).attribute(
            x.clone(), nt_type=kind, nt_samples=samples, stdevs=stdev, target=targets
        )
    hook.remove()
    noise = _captum_noise(tuple(x.shape), samples, stdev, seed)
    torch.testing.assert_close(seen[0], x.repeat_interleave(samples, 0) + noise)  # the replayed noise is Captum's

    def ours(kind: str) -> torch.Tensor:
        tunnel = ReplayTunnel(attrib.Saliency(model), noise, samples)
        return tunnel.attribute(x, target=targets, kind=kind, n_samples=samples, stdev_mode="absolute", stdev=stdev)

    # VarGrad is E[a^2] - E[a]^2: its rounding error is on the scale of E[a^2].
    scale = float(ours("smoothgrad_sq").abs().max()) if kind == "vargrad" else None
    assert_close_rel(ours(kind), theirs, scale=scale)


def test_smoothgrad_over_integrated_gradients_matches_captum():
    model = ResidualBNNet(seed=5)
    x = inputs_for((3, 6, 6), 2, 5)
    targets = torch.tensor([1, 4])
    noise = _captum_noise(tuple(x.shape), 3, 0.2, 11)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        theirs = CaptumNoiseTunnel(CaptumIntegratedGradients(model)).attribute(
            x.clone(), nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.2, target=targets, n_steps=6
        )
    tunnel = ReplayTunnel(attrib.IntegratedGradients(model), noise, 3)
    ours = tunnel.attribute(
        x, target=targets, kind="smoothgrad_sq", n_samples=3, stdev=0.2, stdev_mode="absolute", n_steps=6
    )
    assert_close_rel(ours, theirs)


@pytest.mark.parametrize(
    "ours_cls, theirs_cls", [(attrib.GuidedBackprop, CaptumGuidedBackprop), (attrib.Deconvnet, CaptumDeconvolution)]
)
@given(spec=specs(styles=MODULE_RELUS), n=st.integers(1, 4), data=st.data())
def test_modified_backprop_matches_captum_on_module_relus(ours_cls, theirs_cls, spec, n, data):
    model, x, targets = _case(spec, n, data)
    theirs = theirs_cls(model).attribute(x.clone(), target=targets)
    assert_close_rel(ours_cls(model).attribute(x, target=targets), theirs)


@pytest.mark.parametrize(
    "ours_cls, theirs_cls", [(attrib.GuidedBackprop, CaptumGuidedBackprop), (attrib.Deconvnet, CaptumDeconvolution)]
)
def test_modified_backprop_matches_captum_on_a_residual_batchnorm_model(ours_cls, theirs_cls):
    model = ResidualBNNet(seed=6)
    model.relu1.inplace = False  # Captum's module hooks cannot follow an in-place ReLU
    x = inputs_for((3, 6, 6), 3, 6)
    targets = torch.tensor([0, 2, 4])
    assert_close_rel(
        ours_cls(model).attribute(x, target=targets), theirs_cls(model).attribute(x.clone(), target=targets)
    )


def test_multi_input_saliency_matches_captum():
    model = TwoInputNet(seed=3)
    inputs = (inputs_for((2, 4, 4), 3, 0), inputs_for((4,), 3, 1))
    gain = torch.tensor([1.0, -1.0, 2.0])
    theirs = CaptumIntegratedGradients(model).attribute(
        tuple(t.clone() for t in inputs), target=[0, 1, 2], additional_forward_args=(gain,), n_steps=7
    )
    ours = attrib.IntegratedGradients(model).attribute(
        inputs, target=[0, 1, 2], additional_forward_args=(gain,), n_steps=7
    )
    for a, b in zip(ours, theirs):
        assert_close_rel(a, b)


# --- TorchRay -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, theirs_fn",
    [
        (attrib.GuidedBackprop, torchray_guided_backprop),
        (attrib.Deconvnet, torchray_deconvnet),
        (attrib.Saliency, torchray_gradient),
    ],
    ids=["guided_backprop", "deconvnet", "gradient"],
)
@given(spec=specs(styles=FUNCTIONAL_RELUS), n=st.integers(1, 3), data=st.data())
def test_backprop_maps_match_torchray_on_functional_relus(method, theirs_fn, spec, n, data):
    model, x, targets = _case(spec, n, data)
    theirs = theirs_fn(model, x.clone(), targets)  # TorchRay's map: abs-max over channels
    ours = method(model).then(attrib.ReduceChannels("abs_max")).attribute(x, target=targets)
    assert ours.shape == theirs.shape
    assert_close_rel(ours, theirs)


def test_torchray_smoothing_and_resizing_pipeline():
    model = build(
        Spec(
            channels=3,
            size=6,
            convs=(4, 4),
            pools=(True, False),
            hidden=(5,),
            classes=3,
            relu_styles=("functional",),
            seed=3,
        )
    )
    x = inputs_for((3, 6, 6), 2, 1)
    theirs = torchray_guided_backprop(model, x.clone(), 1, resize=(12, 10), smooth=0.05)
    ours = (
        attrib.GuidedBackprop(model)
        .then(attrib.ReduceChannels("abs_max"), attrib.Resize((10, 12)), attrib.GaussianSmooth(0.05))
        .attribute(x, target=1)
    )
    assert_close_rel(ours, theirs)
