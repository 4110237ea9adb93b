"""The Neuron target: one unit of an inner layer explained by every method, against Captum's Neuron* classes."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from captum.attr import NeuronDeepLift, NeuronFeatureAblation, NeuronGradient, NeuronIntegratedGradients
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import attrib
from attrib import Neuron
from attrib.core import probes

from .models import inputs_for, reinitialise
from .test_deeplift import close_rel
from .test_state import assert_same, snapshot

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns about its hooks on every call


def cnn(seed: int = 0) -> nn.Sequential:
    layers = [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(80, 6)]
    layers += [nn.ReLU(), nn.Linear(6, 3)]
    return reinitialise(nn.Sequential(*layers), seed, scale=1.0).eval()


def peer(cls: type, model: nn.Module, layer: nn.Module, *args: object, **kwargs: object) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model, layer).attribute(*args, **kwargs)  # type: ignore[no-any-return]


X = inputs_for((3, 8, 8), 4, 0)
INDICES = [(1, 2, 2), (4, 0, 3), (slice(0, 3), 1, 1), (2, slice(1, 4), slice(None))]


@pytest.mark.parametrize("index", INDICES, ids=str)
def test_gradient_matches_captum_neuron_gradient(index):
    model = cnn()
    ours = attrib.Saliency(model).attribute(X, target=Neuron(model[2], index), abs=False)
    close_rel(ours, peer(NeuronGradient, model, model[2], X.clone(), index), 1e-5)


def test_integrated_gradients_matches_captum():
    model = cnn(1)
    baselines = inputs_for((3, 8, 8), 4, 1) * 0.3
    ours = attrib.IntegratedGradients(model).attribute(
        X, target=Neuron(model[5], 2), baselines=baselines, n_steps=20, batch_size=16
    )
    theirs = peer(NeuronIntegratedGradients, model, model[5], X.clone(), 2, baselines=baselines, n_steps=20)
    close_rel(ours, theirs, 1e-4)
    assert float(ours.abs().max()) > 0


def test_deeplift_matches_captum_and_sums_to_the_neuron_change():
    model = cnn(2)
    neuron = Neuron(model[5], 4)
    ours, delta = attrib.DeepLift(model).attribute(X, target=neuron, baselines=0.0, return_convergence_delta=True)
    theirs = peer(NeuronDeepLift, model, model[5], X.clone(), 4)
    close_rel(ours, theirs, 1e-5)
    gain = model[:6](X)[:, 4] - model[:6](torch.zeros_like(X))[:, 4]
    close_rel(ours.flatten(1).sum(1), gain.detach(), 1e-5)
    assert float(delta.abs().max()) < 1e-5 * max(1.0, float(gain.abs().max()))


def test_feature_ablation_matches_captum():
    model = cnn(3)
    mask = attrib.perturb.grid_mask((8, 8), 4).expand(1, 3, 8, 8)
    ours = attrib.FeatureAblation(model).attribute(X, target=Neuron(model[2], (3, 1, 2)), feature_mask=mask)
    theirs = peer(NeuronFeatureAblation, model, model[2], X.clone(), (3, 1, 2), feature_mask=mask)
    close_rel(ours, theirs, 1e-5)


def test_callable_neuron_is_any_score_of_the_layer_output():
    model = cnn(4)
    channel_mean = Neuron(model[3], lambda a: a[:, 1].mean((1, 2)))
    ours = attrib.Saliency(model).attribute(X, target=channel_mean, abs=False)
    x = X.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model[:4](x)[:, 1].mean((1, 2)).sum(), x)
    close_rel(ours, expected, 1e-6)


@given(n=st.integers(1, 5), batch_size=st.integers(1, 6), seed=st.integers(0, 3))
def test_batch_size_does_not_change_neuron_maps(n, batch_size, seed):
    model = cnn(seed)
    x = inputs_for((3, 8, 8), n, seed)
    method = attrib.IntegratedGradients(model)
    whole = method.attribute(x, target=Neuron(model[2], (0, 1, 1)), n_steps=8)
    blocked = method.attribute(x, target=Neuron(model[2], (0, 1, 1)), n_steps=8, batch_size=batch_size)
    close_rel(blocked, whole, 1e-5)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_no_hook_or_activation_outlives_the_call_even_after_a_fault():
    model = cnn(5)
    before = snapshot(model, (X,))
    attrib.Saliency(model).attribute(X, target=Neuron(model[2], (1, 1, 1)))
    assert _hook_count(model) == 0
    assert not probes._store()

    def failing(a: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        attrib.Saliency(model).attribute(X, target=Neuron(model[2], failing))
    assert _hook_count(model) == 0
    assert_same(before, snapshot(model, (X,)))
    # A later call with a class target watches nothing.
    attrib.Saliency(model).attribute(X, target=0)
    assert probes._watched() == ()


def test_threads_explaining_different_neurons_do_not_mix():
    model = cnn(6)
    results: dict[int, torch.Tensor] = {}

    def run(unit: int) -> None:
        for _ in range(5):
            results[unit] = attrib.Saliency(model).attribute(X, target=Neuron(model[5], unit), abs=False)

    threads = [threading.Thread(target=run, args=(u,)) for u in (0, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for unit in (0, 3):
        expected = attrib.Saliency(model).attribute(X, target=Neuron(model[5], unit), abs=False)
        close_rel(results[unit], expected, 1e-6)


@pytest.mark.parametrize(
    ("layer", "index", "error", "match"),
    [
        ("features.0", 1, TypeError, "nn.Module"),
        (None, "a", TypeError, "index must be"),
        (None, (), TypeError, "index must be"),
        (None, (1.5,), TypeError, "index must be"),
        (None, (1, 2, 3, 4), ValueError, "non-batch dimensions"),
        (None, (9, 0, 0), ValueError, "out of range"),
    ],
)
def test_bad_neurons_are_clear_errors(layer, index, error, match):
    model = cnn()
    with pytest.raises(error, match=match):
        attrib.Saliency(model).attribute(X, target=Neuron(model[2] if layer is None else layer, index))


def test_a_layer_outside_the_model_or_run_twice_is_refused():
    model = cnn()
    with pytest.raises(ValueError, match="did not run"):
        attrib.Saliency(model).attribute(X, target=Neuron(nn.Linear(2, 2), 0))

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(self.lin(x))

    twice = Twice()
    with pytest.raises(ValueError, match="ran 2 times"):
        attrib.Saliency(twice).attribute(torch.randn(2, 4), target=Neuron(twice.lin, 0))


def test_repr_names_the_layer_and_index():
    assert repr(Neuron(nn.Linear(2, 2), (1,))) == "Neuron(Linear, (1,))"


def test_an_in_place_op_after_the_layer_cannot_change_the_neuron():
    """Captum's NeuronGradient case: linear1 followed by ReLU(inplace=True), a negative unit."""
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(inplace=True), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.5, -1.0, 2.0]]))
        model[0].bias.fill_(-20.0)  # the unit is negative: the ReLU would zero it in place
    x = torch.tensor([[0.0, 5.0, 4.0]])
    grad = attrib.Saliency(model).attribute(x, target=Neuron(model[0], 0), abs=False)
    torch.testing.assert_close(grad, torch.ones(1, 3))
    gain = attrib.DeepLift(model).attribute(x, target=Neuron(model[0], 0)).sum()
    torch.testing.assert_close(gain, torch.tensor(9.0))  # (0 + 5 + 4 - 20) - (-20)


def test_a_neuron_below_the_explained_layer_is_refused_not_a_zero_map():
    model = cnn(7)
    with pytest.raises(ValueError, match="runs before the explained layer"):
        attrib.GradCAM(model, "3").attribute(X, target=Neuron(model[0], (1, 2, 2)))
    with pytest.raises(ValueError, match="runs before the explained layer"):
        attrib.LayerIntegratedGradients(model, "3").attribute(X, target=Neuron(model[0], (1, 2, 2)), n_steps=4)
    # At or above the explained layer it works.
    cam = attrib.GradCAM(model, "0").attribute(X, target=Neuron(model[2], (1, 2, 2)))
    assert float(cam.abs().max()) > 0
