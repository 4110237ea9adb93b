"""Layer IG, Layer Conductance, Layer Activation and Layer Gradient x Activation.

Float64 references, Captum differentially (1e-4 relative or better) and Captum's
own unit-test cases through thin adapters, completeness, batching, targets,
token ids, state and errors.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import LayerActivation as CaptumLA
from captum.attr import LayerConductance as CaptumLC
from captum.attr import LayerGradientXActivation as CaptumLGXA
from captum.attr import LayerIntegratedGradients as CaptumLIG
from captum.testing.helpers.basic_models import (
    BasicEmbeddingModel,
    BasicModel_ConvNet,
    BasicModel_MultiLayer,
    BasicModel_MultiLayer_MultiInput,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.core.quadrature import METHODS
from attrib.methods.integrated_gradients import IntegratedGradients
from attrib.methods.layer_activation import LayerActivation, LayerGradientXActivation
from attrib.methods.layer_integrated_gradients import LayerConductance, LayerIntegratedGradients

from . import reference_layer as ref
from .models import ResidualBNNet, Spec, assert_batch_invariant, build, inputs_for, reinitialise
from .test_state import Tripwire, assert_same, snapshot, untidy

warnings.filterwarnings("ignore", module="captum")


class TextNet(nn.Module):
    """Token ids -> embedding -> LSTM -> last state -> linear; the output depends on ids only via the embedding."""

    def __init__(self, vocab: int = 20, dim: int = 6, hidden: int = 5, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        reinitialise(self, seed, scale=1.5)
        self.eval()

    def forward(self, ids: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        states, _ = self.lstm(self.embedding(ids))
        out = self.head(states[:, -1])
        return out if gain is None else out * gain.view(-1, 1)


class SmoothCNN(nn.Module):
    """conv, tanh, conv, tanh, pool, linear: smooth, so path sums converge fast."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(2, 3, 3, padding=1), nn.Tanh()
        self.conv2, self.act2 = nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()
        self.head = nn.Linear(4 * 2 * 2, 3)
        reinitialise(self, seed, scale=1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(nn.functional.adaptive_avg_pool2d(y, 2).flatten(1))


def ids_for(n: int, length: int, seed: int, vocab: int = 20) -> torch.Tensor:
    return torch.randint(1, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def relu_cnn(seed: int) -> nn.Sequential:
    """conv, relu (inplace), conv, relu, maxpool, flatten, linear, relu, linear: layer "2" is the second conv."""
    return build(Spec(2, 4, (3, 4), (False, True), (5,), 3, ("module_inplace", "functional"), seed))


# Float64 references --------------------------------------------------------------------------------


@settings(max_examples=6)
@given(seed=st.integers(0, 999), n=st.integers(1, 3), at_input=st.booleans(), data=st.data())
def test_gradient_x_activation_and_activation_match_reference(seed, n, at_input, data):
    model = relu_cnn(seed).double()
    x = inputs_for((2, 4, 4), n, seed, torch.float64)
    targets = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    for layer in ("2", "3", "6"):
        expected = ref.gradient_x_activation(model, layer, x, targets, at_input)
        ours = LayerGradientXActivation(model, layer).attribute(x, targets, attribute_to_layer_input=at_input)
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
        grads = ref.gradient_x_activation(model, layer, x, targets, at_input, multiply=False)
        ours = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(
            x, targets, attribute_to_layer_input=at_input, batch_size=2
        )
        torch.testing.assert_close(ours, grads, rtol=1e-9, atol=1e-12)
        acts = LayerActivation(model, layer).attribute(x, attribute_to_layer_input=at_input, batch_size=1)
        torch.testing.assert_close(acts, ref.activation(model, layer, x, at_input), rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=3)
@given(seed=st.integers(0, 999), n=st.integers(1, 3), n_steps=st.integers(2, 5), data=st.data())
def test_layer_ig_matches_reference_on_token_ids(method, seed, n, n_steps, data):
    model = TextNet(seed=seed).double()
    ids, base = ids_for(n, 4, seed), ids_for(n, 4, seed + 1)
    targets = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    batch_size = data.draw(st.none() | st.integers(1, n * n_steps + 1), label="batch_size")
    at_input = data.draw(st.booleans(), label="at_input")
    layer = "lstm" if at_input else "embedding"  # the LSTM's input is the embedding's output
    expected = ref.layer_integrated_gradients(model, layer, ids, base, targets, method, n_steps, at_input)
    ours = LayerIntegratedGradients(model, layer).attribute(
        ids,
        targets,
        baselines=base,
        n_steps=n_steps,
        method=method,
        batch_size=batch_size,
        attribute_to_layer_input=at_input,
    )
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=3)
@given(seed=st.integers(0, 999), n=st.integers(1, 3), n_steps=st.integers(1, 4), data=st.data())
def test_layer_conductance_matches_reference(method, seed, n, n_steps, data):
    model = relu_cnn(seed).double()
    x = inputs_for((2, 4, 4), n, seed, torch.float64)
    base = inputs_for((2, 4, 4), n, seed + 1, torch.float64) * 0.3
    targets = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    batch_size = data.draw(st.none() | st.integers(1, n * (n_steps + 1) + 1), label="batch_size")
    at_input = data.draw(st.booleans(), label="at_input")
    layer = data.draw(st.sampled_from(["2", "3", "7"]), label="layer")
    expected = ref.layer_conductance(model, layer, x, base, targets, method, n_steps, at_input)
    ours = LayerConductance(model, layer).attribute(
        x,
        targets,
        baselines=base,
        n_steps=n_steps,
        method=method,
        batch_size=batch_size,
        attribute_to_layer_input=at_input,
    )
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_layer_ig_on_a_hidden_layer_matches_reference_and_keeps_the_skip_path_at_x():
    """ResidualBNNet's relu1 output feeds conv2 while the stem's output bypasses it: only relu1 is replaced."""
    model = ResidualBNNet(channels=2, seed=3).double()
    x, base = inputs_for((2, 5, 5), 2, 0, torch.float64), inputs_for((2, 5, 5), 2, 1, torch.float64)
    expected = ref.layer_integrated_gradients(model, "relu1", x, base, [1, 4], "riemann_middle", 5)
    ours, delta = LayerIntegratedGradients(model, "relu1").attribute(
        x, [1, 4], baselines=base, n_steps=5, method="riemann_middle", return_convergence_delta=True
    )
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    # The delta compares with S(x) - S(x'), whose skip path moved too: it is not a quadrature error here.
    gain = ref.scores(model, x, [1, 4]) - ref.scores(model, base, [1, 4])
    torch.testing.assert_close(delta, ours.flatten(1).sum(1) - gain)


# Captum, differentially ----------------------------------------------------------------------------


def _rel_close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4) -> None:
    theirs = theirs.detach()
    scale = float(theirs.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("multiply", [True, False])
def test_layer_ig_matches_captum_on_an_embedding_lstm_model(method, multiply):
    model = TextNet(seed=1)
    ids, pad = ids_for(5, 6, 1), torch.zeros(5, 6, dtype=torch.long)
    gain = torch.linspace(0.5, 1.5, 5)
    target = torch.tensor([0, 1, 2, 1, 0])
    n_steps = 12
    theirs, their_delta = CaptumLIG(model, model.embedding, multiply_by_inputs=multiply).attribute(
        ids,
        baselines=pad,
        target=target,
        additional_forward_args=(gain,),
        n_steps=n_steps,
        method=method,
        return_convergence_delta=True,
    )
    ours, delta = LayerIntegratedGradients(model, "embedding", multiply_by_inputs=multiply).attribute(
        ids,
        target,
        baselines=0,
        additional_forward_args=(gain,),
        n_steps=n_steps,
        method=method,
        batch_size=7,
        return_convergence_delta=True,
    )
    assert ours.shape == (5, 6, 6)
    if method == "riemann_trapezoid":  # Captum's trapezoid weights are 1/n, attrib's 1/(n - 1) (they sum to 1)
        theirs = theirs * n_steps / (n_steps - 1)
    elif multiply:  # Captum's delta sums the map it returns, so only the multiplied maps' deltas agree
        _rel_close(delta, their_delta)
    _rel_close(ours, theirs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("at_input", [False, True])
@pytest.mark.parametrize("layer", ["conv2", "relu1"])
def test_layer_conductance_matches_captum(method, at_input, layer):
    model = ResidualBNNet(channels=2, seed=4)
    x, base = inputs_for((2, 5, 5), 3, 2), inputs_for((2, 5, 5), 3, 3) * 0.2
    theirs, their_delta = CaptumLC(model, getattr(model, layer)).attribute(
        x,
        baselines=base,
        target=2,
        n_steps=9,
        method=method,
        attribute_to_layer_input=at_input,
        return_convergence_delta=True,
    )
    ours, delta = LayerConductance(model, layer).attribute(
        x,
        2,
        baselines=base,
        n_steps=9,
        method=method,
        batch_size=8,
        attribute_to_layer_input=at_input,
        return_convergence_delta=True,
    )
    _rel_close(ours, theirs)
    _rel_close(delta, their_delta)


@pytest.mark.parametrize("multiply", [True, False])
@pytest.mark.parametrize("at_input", [False, True])
def test_gradient_x_activation_and_activation_match_captum(multiply, at_input):
    model = ResidualBNNet(channels=2, seed=5)
    x = inputs_for((2, 5, 5), 4, 5)
    theirs = CaptumLGXA(model, model.conv2, multiply_by_inputs=multiply).attribute(
        x, target=[0, 1, 2, 3], attribute_to_layer_input=at_input
    )
    ours = LayerGradientXActivation(model, "conv2", multiply_by_inputs=multiply).attribute(
        x, [0, 1, 2, 3], attribute_to_layer_input=at_input, batch_size=3
    )
    _rel_close(ours, theirs, 1e-6)
    acts = CaptumLA(model, model.conv2).attribute(x, attribute_to_layer_input=at_input)
    _rel_close(LayerActivation(model, "conv2").attribute(x, attribute_to_layer_input=at_input), acts, 1e-6)


def test_gradient_x_activation_on_token_ids_matches_captum():
    model = TextNet(seed=6)
    ids = ids_for(3, 5, 6)
    theirs = CaptumLGXA(model, model.embedding).attribute(ids, target=1)
    _rel_close(LayerGradientXActivation(model, "embedding").attribute(ids, 1), theirs, 1e-6)


# Captum's own unit-test cases, through thin adapters --------------------------------------------------


def _captum_layer(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


CONDUCTANCE_CASES = {
    "input": (lambda: BasicModel_MultiLayer(), "linear0", torch.tensor([[0.0, 100.0, 0.0]]), [[0.0, 390.0, 0.0]], None),
    "linear": (
        lambda: BasicModel_MultiLayer(),
        "linear1",
        torch.tensor([[0.0, 100.0, 0.0]]),
        [[90.0, 100.0, 100.0, 100.0]],
        None,
    ),
    "relu": (
        lambda: BasicModel_MultiLayer(),
        "relu",
        torch.tensor([[0.0, 100.0, 0.0]]),
        [[90.0, 100.0, 100.0, 100.0]],
        None,
    ),
    "output": (lambda: BasicModel_MultiLayer(), "linear2", torch.tensor([[0.0, 100.0, 0.0]]), [[390.0, 0.0]], None),
    "multi_input_linear2": (
        lambda: BasicModel_MultiLayer_MultiInput(),
        "model.linear2",
        (torch.tensor([[0.0, 10.0, 0.0]]), torch.tensor([[0.0, 10.0, 0.0]]), torch.tensor([[0.0, 5.0, 0.0]])),
        [[390.0, 0.0]],
        (4,),
    ),
    "multi_input_relu_batch": (
        lambda: BasicModel_MultiLayer_MultiInput(),
        "model.relu",
        (torch.tensor([[0.0, 10.0, 1.0], [0.0, 0.0, 10.0]]), torch.tensor([[0.0, 4.0, 5.0], [0.0, 0.0, 10.0]])),
        [[90.0, 100.0, 100.0, 100.0], [100.0, 100.0, 100.0, 100.0]],
        (torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0]]), 5),
    ),
}


@pytest.mark.parametrize("case", sorted(CONDUCTANCE_CASES))
def test_captum_conductance_cases(case):
    build_model, layer, inputs, expected, extra = CONDUCTANCE_CASES[case]
    model = build_model()
    for batch_size in (None, 4, 20):
        maps, delta = LayerConductance(model, layer).attribute(
            inputs,
            0,
            n_steps=500,
            additional_forward_args=extra,
            batch_size=batch_size,
            return_convergence_delta=True,
        )
        assert bool((delta.abs() < 0.01).all())
        torch.testing.assert_close(maps, torch.tensor(expected), rtol=0, atol=0.1)


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "pool2", "relu3", "fc1"])
def test_captum_conductance_matches_its_reference_on_the_convnet(layer):
    """Captum's ConductanceReference cases: the delta < 0.005 and attrib equals Captum's own output."""
    model = BasicModel_ConvNet()
    g = torch.Generator().manual_seed(7)
    x = 100 * torch.randn(2, 1, 10, 10, generator=g)
    base = 100 * torch.randn(2, 1, 10, 10, generator=g) if layer == "fc1" else None
    with torch.no_grad():
        target = int(model(x).sum(0).argmax())
    ours, delta = LayerConductance(model, layer).attribute(
        x, target, baselines=base, n_steps=100, batch_size=64, return_convergence_delta=True
    )
    theirs = CaptumLC(model, getattr(model, layer)).attribute(x, baselines=base, target=target, n_steps=100)
    assert bool((delta.abs() < 0.005).all())
    _rel_close(ours, theirs)


def test_captum_layer_ig_equals_ig_on_patched_embeddings():
    """Captum's test_compare_with_emb_patching: Layer IG at an embedding == IG on the embedded inputs."""
    model = BasicEmbeddingModel(nested_second_embedding=True)
    ids, base = torch.tensor([[2, 5, 0, 1], [3, 1, 1, 0]]), torch.tensor([[0, 0, 0, 0]])
    extra = (torch.tensor([[0, 2, 4, 1], [2, 3, 5, 7]]), torch.tensor([[3, 5, 6, 7], [2, 3, 0, 1]]))
    for multiply in (True, False):
        ours, delta = LayerIntegratedGradients(model, "embedding1", multiply_by_inputs=multiply).attribute(
            ids, 0, baselines=base, additional_forward_args=extra, return_convergence_delta=True
        )

        class Embedded(nn.Module):  # the model with embedding1 taken out: it takes embeddings
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, emb: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
                handle = model.embedding1.register_forward_hook(lambda m, a, out: emb)
                try:
                    return model(torch.zeros(emb.shape[:2], dtype=torch.long), *args)
                finally:
                    handle.remove()

        with torch.no_grad():
            emb, emb_base = model.embedding1(ids), model.embedding1(base).expand(2, -1, -1)
        expected, expected_delta = IntegratedGradients(Embedded(), multiply_by_inputs=multiply).attribute(
            emb, 0, baselines=emb_base, additional_forward_args=extra, return_convergence_delta=True
        )
        torch.testing.assert_close(ours, expected)
        torch.testing.assert_close(delta, expected_delta)


def test_captum_layer_ig_approaches_conductance_on_a_near_linear_path():
    model = BasicModel_MultiLayer()
    x = torch.tensor([[50.0, 50.0, 50.0]])
    for at_input in (False, True):
        cond = LayerConductance(model, "linear2").attribute(x, 0, n_steps=1500, attribute_to_layer_input=at_input)
        lig = LayerIntegratedGradients(model, "linear2").attribute(
            x, 0, n_steps=1500, attribute_to_layer_input=at_input
        )
        torch.testing.assert_close(cond, lig, rtol=0, atol=0.01)


GXA_CASES = {
    "input": ("linear0", [[0.0, 100.0, 0.0]], [[0.0, 400.0, 0.0]]),
    "linear": ("linear1", [[0.0, 100.0, 0.0]], [[90.0, 101.0, 101.0, 101.0]]),
    "relu": ("relu", [[3.0, 4.0, 0.0]], [[0.0, 8.0, 8.0, 8.0]]),
    "output": ("linear2", [[0.0, 100.0, 0.0]], [[392.0, 0.0]]),
}


@pytest.mark.parametrize("case", sorted(GXA_CASES))
def test_captum_gradient_x_activation_cases(case):
    layer, x, expected = GXA_CASES[case]
    model, inputs = BasicModel_MultiLayer(), torch.tensor(x)
    maps = LayerGradientXActivation(model, layer).attribute(inputs, 0)
    torch.testing.assert_close(maps, torch.tensor(expected), rtol=0, atol=0.01)
    grads = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(inputs, 0)
    torch.testing.assert_close(maps, grads * LayerActivation(model, layer).attribute(inputs), rtol=0, atol=0.01)
    with torch.no_grad():  # Captum's *_no_grad cases
        torch.testing.assert_close(LayerGradientXActivation(model, layer).attribute(inputs, 0), maps)


def test_captum_gradient_x_activation_multi_input_and_embedding_cases():
    model = BasicModel_MultiLayer_MultiInput()
    inputs = (torch.tensor([[0.0, 10.0, 1.0]]), torch.tensor([[0.0, 4.0, 5.0]]))
    maps = LayerGradientXActivation(model, "model.relu").attribute(
        inputs, 0, additional_forward_args=(torch.tensor([[0.0, 0.0, 0.0]]), 5)
    )
    torch.testing.assert_close(maps, torch.tensor([[90.0, 101.0, 101.0, 101.0]]), rtol=0, atol=0.01)
    emb = BasicEmbeddingModel()
    maps = LayerGradientXActivation(emb, "embedding1").attribute(
        (torch.tensor([2, 5, 0, 1]), torch.tensor([3, 0, 0, 2]))
    )
    assert maps.shape == (4, 100)  # the model's output is (N,): target=None explains it


ACTIVATION_CASES = {
    "input": (False, "linear0", [[0.0, 100.0, 0.0]], [[0.0, 100.0, 0.0]], False),
    "linear": (False, "linear1", [[0.0, 100.0, 0.0]], [[90.0, 101.0, 101.0, 101.0]], False),
    "relu_input_inplace": (True, "relu", [[2.0, -5.0, 4.0]], [[-9.0, 2.0, 2.0, 2.0]], True),
    "linear_inplace": (True, "linear1", [[2.0, -5.0, 4.0]], [[-9.0, 2.0, 2.0, 2.0]], False),
    "relu": (False, "relu", [[3.0, 4.0, 0.0]], [[0.0, 8.0, 8.0, 8.0]], False),
    "output": (False, "linear2", [[0.0, 100.0, 0.0]], [[392.0, 394.0]], False),
}


@pytest.mark.parametrize("case", sorted(ACTIVATION_CASES))
def test_captum_activation_cases(case):
    inplace, layer, x, expected, at_input = ACTIVATION_CASES[case]
    model = BasicModel_MultiLayer(inplace=inplace)
    acts = LayerActivation(model, layer).attribute(torch.tensor(x), attribute_to_layer_input=at_input)
    torch.testing.assert_close(acts, torch.tensor(expected), rtol=0, atol=0.01)


def test_captum_activation_before_an_inplace_relu():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
    x = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model[0](x)
    torch.testing.assert_close(LayerActivation(model, "0").attribute(x), expected)


# Completeness ----------------------------------------------------------------------------------------


@settings(max_examples=5)
@given(seed=st.integers(0, 999), n=st.integers(1, 3), length=st.integers(1, 6))
def test_layer_ig_is_complete_at_an_embedding(seed, n, length):
    """The model reads the ids only through the embedding: sum(map) == S(x) - S(x'), delta ~ 0 (Gauss-Legendre)."""
    model = TextNet(seed=seed).double()
    ids = ids_for(n, length, seed)
    lig = LayerIntegratedGradients(model, "embedding")
    maps, delta = lig.attribute(ids, 2, baselines=3, n_steps=48, batch_size=17, return_convergence_delta=True)
    gain = ref.scores(model, ids, [2] * n) - ref.scores(model, torch.full_like(ids, 3), [2] * n)
    torch.testing.assert_close(delta, maps.flatten(1).sum(1) - gain, rtol=0, atol=1e-12)
    assert float(delta.abs().max()) < 1e-9 * (1 + float(gain.abs().max()))
    grads, same_delta = LayerIntegratedGradients(model, "embedding", multiply_by_inputs=False).attribute(
        ids, 2, baselines=3, n_steps=48, return_convergence_delta=True
    )
    torch.testing.assert_close(same_delta, delta)
    emb = model.embedding.weight.detach()
    torch.testing.assert_close(grads * (emb[ids] - emb[3]), maps)


def test_conductance_is_complete_in_the_limit():
    model = SmoothCNN(seed=2).double()
    x = inputs_for((2, 4, 4), 2, 3, torch.float64)
    errors = []
    for n_steps in (8, 32, 128):
        _, delta = LayerConductance(model, "act1").attribute(
            x, 1, n_steps=n_steps, method="riemann_trapezoid", batch_size=64, return_convergence_delta=True
        )
        errors.append(float(delta.abs().max()))
    assert errors[2] < errors[1] < errors[0]
    with torch.no_grad():
        scale = 1 + float(model(x).abs().max())
    assert errors[2] < 1e-3 * scale


def test_layer_ig_at_the_first_layers_input_is_input_ig():
    model = SmoothCNN(seed=3)
    x = inputs_for((2, 4, 4), 3, 4)
    lig = LayerIntegratedGradients(model, "conv1").attribute(
        x, [0, 1, 2], baselines=0.5, n_steps=10, attribute_to_layer_input=True
    )
    ig = IntegratedGradients(model).attribute(x, [0, 1, 2], baselines=0.5, n_steps=10)
    torch.testing.assert_close(lig, ig)


# Batching, targets, determinism ----------------------------------------------------------------------


LAYER_METHODS = {
    "lig": lambda m: (LayerIntegratedGradients(m, "conv2"), {"n_steps": 5}),
    "conductance": lambda m: (LayerConductance(m, "relu1"), {"n_steps": 5, "method": "riemann_trapezoid"}),
    "gxa": lambda m: (LayerGradientXActivation(m, "conv2"), {}),
    "activation": lambda m: (LayerActivation(m, "relu2"), {}),
}


@pytest.mark.parametrize("name", sorted(LAYER_METHODS))
@settings(max_examples=3)
@given(seed=st.integers(0, 999), n=st.integers(2, 4), perm_seed=st.integers(0, 99), at_input=st.booleans())
def test_independent_of_batch_size_and_batch_equivariant(name, seed, n, perm_seed, at_input):
    method, options = LAYER_METHODS[name](ResidualBNNet(channels=2, seed=seed))
    x = inputs_for((2, 4, 4), n, seed)
    target = torch.arange(n) % 5
    options = {**options, "attribute_to_layer_input": at_input}
    assert_batch_invariant(method.attribute, x, target, (1, 3, 7, "auto"), perm_seed, **options)


@pytest.mark.parametrize("name", sorted(LAYER_METHODS))
def test_multi_target_equals_per_target(name):
    method, options = LAYER_METHODS[name](ResidualBNNet(channels=2, seed=8))
    x = inputs_for((2, 4, 4), 3, 8)
    targets = torch.tensor([[0, 4], [1, 1], [3, 2]])
    both = method.attribute(x, targets, batch_size=4, **options)
    for k in range(2):
        torch.testing.assert_close(both[:, k], method.attribute(x, targets[:, k], **options))
    if name in ("lig", "conductance"):
        _, delta = method.attribute(x, targets, return_convergence_delta=True, **options)
        assert delta.shape == (3, 2)
        _, first = method.attribute(x, targets[:, 0], return_convergence_delta=True, **options)
        torch.testing.assert_close(delta[:, 0], first)


def test_text_model_multi_target_and_forward_args():
    model = TextNet(seed=9)
    ids, gain = ids_for(3, 5, 9), torch.tensor([1.0, 2.0, 0.5])
    lig = LayerIntegratedGradients(model, model.embedding)
    both = lig.attribute(ids, [[0, 2]] * 3, additional_forward_args=gain, n_steps=6, batch_size=5)
    assert both.shape == (3, 2, 5, 6)
    torch.testing.assert_close(both[:, 1], lig.attribute(ids, 2, additional_forward_args=gain, n_steps=6))


@pytest.mark.parametrize("name", sorted(LAYER_METHODS))
def test_results_are_deterministic(name):
    method, options = LAYER_METHODS[name](ResidualBNNet(channels=2, seed=10))
    x = inputs_for((2, 4, 4), 3, 10)
    assert torch.equal(method.attribute(x, 1, batch_size=4, **options), method.attribute(x, 1, batch_size=4, **options))


def test_top1_target_is_the_clean_prediction():
    model = TextNet(seed=11)
    ids = ids_for(4, 5, 11)
    predicted = model(ids).argmax(1)
    lig = LayerIntegratedGradients(model, "embedding")
    torch.testing.assert_close(lig.attribute(ids, n_steps=4), lig.attribute(ids, predicted, n_steps=4))
    gxa = LayerGradientXActivation(model, "embedding")
    torch.testing.assert_close(gxa.attribute(ids), gxa.attribute(ids, predicted))


def test_activation_of_token_ids():
    model = TextNet(seed=17)
    ids = ids_for(3, 4, 17)
    assert torch.equal(LayerActivation(model, "embedding").attribute(ids, attribute_to_layer_input=True), ids)
    torch.testing.assert_close(
        LayerActivation(model, "embedding").attribute(ids, batch_size=2), model.embedding.weight.detach()[ids]
    )


def test_activation_ignores_the_target_but_for_k():
    model = ResidualBNNet(channels=2, seed=12)
    x = inputs_for((2, 4, 4), 2, 12)
    acts = LayerActivation(model, "conv1").attribute(x)
    torch.testing.assert_close(LayerActivation(model, "conv1").attribute(x, 3), acts)
    repeated = LayerActivation(model, "conv1").attribute(x, [[0, 1, 2]] * 2)
    assert repeated.shape == (2, 3, *acts.shape[1:])
    torch.testing.assert_close(repeated[:, 2], acts)


def test_memory_is_bounded_by_batch_size():
    """The model never sees more than batch_size rows, however many steps and examples."""
    seen: list[int] = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = SmoothCNN(seed=13)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return self.inner(x)

    model = Counting()
    x = inputs_for((2, 4, 4), 5, 13)
    LayerIntegratedGradients(model, "inner.conv2").attribute(x, 0, n_steps=40, batch_size=6)
    LayerConductance(model, "inner.conv2").attribute(x, 0, n_steps=40, batch_size=6, return_convergence_delta=True)
    LayerGradientXActivation(model, "inner.conv2").attribute(x, 0, batch_size=6)
    assert max(seen) <= 6 and sum(seen) > 400


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = TextNet(seed=14)
    ids = ids_for(4, 6, 14)
    cpu = LayerIntegratedGradients(model, "embedding").attribute(ids, 1, n_steps=8, batch_size=9)
    gpu = LayerIntegratedGradients(model.cuda(), "embedding").attribute(ids.cuda(), 1, n_steps=8, batch_size=9)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


# State and errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAYER_METHODS))
@settings(max_examples=4)
@given(seed=st.integers(0, 999), fail_at=st.integers(0, 4), n=st.integers(1, 3))
def test_state_restored_after_success_and_a_fault_mid_forward(name, seed, fail_at, n):
    inner = ResidualBNNet(channels=2, seed=seed)
    inner.stem.append(Tripwire(fail_at))
    untidy(inner, seed)
    x = inputs_for((2, 4, 4), n, seed).requires_grad_(seed % 2 == 0)
    before = snapshot(inner, (x,))
    rng = torch.random.get_rng_state()
    method, options = LAYER_METHODS[name](inner)
    try:
        method.attribute(x, 0, batch_size=2, **options)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(inner, (x,)))
    assert torch.equal(rng, torch.random.get_rng_state())


def test_works_under_no_grad_and_inference_mode():
    model = TextNet(seed=15)
    ids = ids_for(2, 4, 15)
    lig = LayerIntegratedGradients(model, "embedding")
    expected = lig.attribute(ids, 1, n_steps=4)
    with torch.no_grad():
        torch.testing.assert_close(lig.attribute(ids, 1, n_steps=4), expected)
    with torch.inference_mode():
        torch.testing.assert_close(lig.attribute(ids, 1, n_steps=4), expected)


class TwiceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(self.shared(x)))


class TwoArgLayer(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class TwoArgNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.add = TwoArgLayer()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.add(x, x))


def _text() -> TextNet:
    return TextNet(seed=16)


BAD = {
    "tuple_output": (
        lambda: LayerIntegratedGradients(_text(), "lstm").attribute(ids_for(2, 3, 0), 0),
        TypeError,
        "one Tensor",
    ),
    "tuple_output_gxa": (
        lambda: LayerGradientXActivation(_text(), "lstm").attribute(ids_for(2, 3, 0), 0),
        TypeError,
        "one Tensor",
    ),
    "tuple_output_act": (lambda: LayerActivation(_text(), "lstm").attribute(ids_for(2, 3, 0)), TypeError, "one Tensor"),
    "ids_at_layer_input_lig": (
        lambda: LayerIntegratedGradients(_text(), "embedding").attribute(
            ids_for(2, 3, 0), 0, attribute_to_layer_input=True
        ),
        TypeError,
        "input of dtype torch.int64, which has no gradient",
    ),
    "ids_at_layer_input_gxa": (
        lambda: LayerGradientXActivation(_text(), "embedding").attribute(
            ids_for(2, 3, 0), 0, attribute_to_layer_input=True
        ),
        TypeError,
        "has no gradient",
    ),
    "no_layer": (lambda: LayerIntegratedGradients(_text(), None), TypeError, "needs layer="),  # type: ignore[arg-type]
    "unknown_layer": (lambda: LayerConductance(SmoothCNN(), "conv3"), ValueError, "close matches: .*conv1"),
    "foreign_layer": (lambda: LayerActivation(SmoothCNN(), nn.Linear(2, 2)), ValueError, "not a sub-module"),
    "integer_inputs_to_conductance": (
        lambda: LayerConductance(_text(), "embedding").attribute(ids_for(2, 3, 0), 0),
        TypeError,
        "floating-point",
    ),
    "two_positional_inputs": (
        lambda: LayerGradientXActivation(TwoArgNet(), "add").attribute(
            torch.ones(2, 4), 0, attribute_to_layer_input=True
        ),
        TypeError,
        "2 positional inputs",
    ),
    "layer_runs_twice_lig": (
        lambda: LayerIntegratedGradients(TwiceNet(), "shared").attribute(torch.ones(2, 4), 0),
        ValueError,
        "ran 2 times",
    ),
    "layer_runs_twice_cond": (
        lambda: LayerConductance(TwiceNet(), "shared").attribute(torch.ones(2, 4), 0),
        ValueError,
        "ran 2 times",
    ),
    "n_steps": (
        lambda: LayerIntegratedGradients(_text(), "embedding").attribute(ids_for(2, 3, 0), 0, n_steps=0),
        ValueError,
        "n_steps",
    ),
    "n_steps_cond": (
        lambda: LayerConductance(SmoothCNN(), "conv1").attribute(torch.ones(2, 2, 4, 4), 0, n_steps=0),
        ValueError,
        "n_steps",
    ),
    "method": (
        lambda: LayerConductance(SmoothCNN(), "conv1").attribute(torch.ones(2, 2, 4, 4), 0, method="simpson"),
        ValueError,
        "method must be one of",
    ),
    "baselines_shape": (
        lambda: LayerIntegratedGradients(_text(), "embedding").attribute(
            ids_for(2, 3, 0), 0, baselines=torch.zeros(3, 3, dtype=torch.long)
        ),
        ValueError,
        "does not broadcast",
    ),
    "baselines_type": (
        lambda: LayerIntegratedGradients(_text(), "embedding").attribute(ids_for(2, 3, 0), 0, baselines="pad"),
        TypeError,
        "baselines",
    ),
    "batch_size": (
        lambda: LayerIntegratedGradients(_text(), "embedding").attribute(ids_for(2, 3, 0), 0, batch_size=0),
        ValueError,
        "batch_size",
    ),
    "target_range": (
        lambda: LayerGradientXActivation(_text(), "embedding").attribute(ids_for(2, 3, 0), 7),
        ValueError,
        "target class indices",
    ),
    "multiply_flag": (
        lambda: LayerIntegratedGradients(_text(), "embedding", multiply_by_inputs=1),
        TypeError,
        "multiply_by_inputs",
    ),  # type: ignore[arg-type]
    "layer_input_flag": (
        lambda: LayerActivation(_text(), "embedding").attribute(ids_for(2, 3, 0), attribute_to_layer_input="yes"),
        TypeError,
        "attribute_to_layer_input",
    ),  # type: ignore[arg-type]
    "nan_inputs": (
        lambda: LayerConductance(SmoothCNN(), "conv1").attribute(torch.full((1, 2, 4, 4), float("nan")), 0),
        ValueError,
        "finite",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_a_clear_error(name):
    call, error, says = BAD[name]
    with pytest.raises(error, match=says):
        call()


def test_a_failed_call_leaves_no_hook_behind():
    model = _text()
    before = snapshot(model, ())
    with pytest.raises(TypeError, match="one Tensor"):
        LayerIntegratedGradients(model, "lstm").attribute(ids_for(2, 3, 0), 0)
    assert_same(before, snapshot(model, ()))


def test_repr_names_the_layer():
    assert repr(LayerConductance(SmoothCNN(), "conv2")) == "LayerConductance(SmoothCNN, layer='conv2')"
