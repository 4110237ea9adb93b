"""Excitation backprop and its contrastive form: TorchRay, a float64 reference, and invariants."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchray.attribution.excitation_backprop import contrastive_excitation_backprop as torchray_ceb
from torchray.attribution.excitation_backprop import excitation_backprop as torchray_eb

import attrib.methods.excitation as excitation_module
from attrib.core.excitation_rules import ExcitationRule
from attrib.methods.excitation import ContrastiveExcitationBackprop, ExcitationBackprop
from attrib.rules import UnsupportedModelError

from . import reference_excitation as reference
from .models import reinitialise, relu
from .reference_excitation import Residual

STYLES = ("module", "module_inplace", "functional", "torch_inplace", "tensor")


def vgg_like(style: str = "module", seed: int = 0, bn: bool = False) -> nn.Sequential:
    """conv-ReLU-maxpool, conv-ReLU-avgpool, conv-ReLU-adaptive avgpool, linear-ReLU-dropout-linear (8x8 input)."""
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        norm(6),
        relu(style),
        nn.MaxPool2d(2),  # 0-3
        nn.Conv2d(6, 8, 3, padding=1),
        norm(8),
        relu(style),
        nn.AvgPool2d(2),  # 4-7
        nn.Conv2d(8, 8, 3, padding=1),
        relu(style),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),  # 8-11
        nn.Linear(8, 12),
        relu(style),
        nn.Dropout(),
        nn.Linear(12, 5),  # 12-15
    )
    return reinitialise(model, seed, scale=1.0).eval()


def images(n: int, seed: int, size: int = 8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=g, dtype=torch.float64).to(dtype)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.abs().max()) + 1e-12)


# Differential: TorchRay --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("layer", ["2", "6", "9"])
def test_matches_torchray_excitation_backprop(style, layer):
    model = vgg_like(style, seed=1)
    x = images(3, 0)
    targets = [0, 3, 4]
    ours = ExcitationBackprop(model, layer).attribute(x, target=targets)
    theirs = torchray_eb(model, x.clone(), targets, saliency_layer=layer)
    assert ours.shape == theirs.shape == (3, 1) + theirs.shape[2:]
    assert float(theirs.abs().max()) > 0
    close(ours, theirs)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(("layer", "contrast"), [("2", "9"), ("3", "13"), ("6", "6")])
def test_matches_torchray_contrastive_excitation_backprop(style, layer, contrast):
    model = vgg_like(style, seed=2)
    x = images(3, 1)
    targets = [1, 2, 4]
    ours = ContrastiveExcitationBackprop(model, layer, contrast, "15").attribute(x, target=targets)
    theirs = torchray_ceb(
        model, x.clone(), targets, saliency_layer=layer, contrast_layer=contrast, classifier_layer="15"
    )
    assert ours.shape == theirs.shape
    close(ours, theirs)


def test_matches_torchray_on_batchnorm_and_default_classifier():
    model = vgg_like("module", seed=3, bn=True)
    x = images(2, 2)
    close(
        ExcitationBackprop(model, "2").attribute(x, target=[1, 0]),
        torchray_eb(model, x.clone(), [1, 0], saliency_layer="2"),
    )
    close(
        ContrastiveExcitationBackprop(model, "2", "10").attribute(x, target=[1, 0]),
        torchray_ceb(model, x.clone(), [1, 0], saliency_layer="2", contrast_layer="10"),
    )


def test_matches_torchray_on_resnet18_after_update_resnet():
    import torchvision  # a dev dependency
    from torchray.attribution.excitation_backprop import update_resnet

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = images(2, 3, size=32)
    ours = ExcitationBackprop(model, "layer2").attribute(x, target=[5, 7])
    patched = update_resnet(copy.deepcopy(model))  # TorchRay rewrites the blocks; attrib runs the model as is
    theirs = torchray_eb(patched, x.clone(), [5, 7], saliency_layer="layer2")
    close(ours, theirs)


# Float64 reference -------------------------------------------------------------------------------------------


def residual_net(seed: int) -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),  # 0-1
        Residual(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)),  # 2
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AvgPool2d(2),  # 3-5
        nn.Flatten(),
        nn.Linear(16, 6),
        nn.ReLU(),
        nn.Linear(6, 4),  # 6-9
    )
    return reinitialise(model, seed, scale=1.0).eval().double()


@pytest.mark.parametrize("layer", [2, 4, 7, 10])
def test_matches_float64_reference_vgg(layer):
    model = vgg_like("functional", seed=4, bn=True).double()
    x = images(2, 4, dtype=torch.float64)
    ours = ExcitationBackprop(model, str(layer - 1)).attribute(x, target=[2, 3])
    expected = reference.excitation_backprop(model, x, [2, 3], layer)
    torch.testing.assert_close(ours, expected.reshape(ours.shape))


@pytest.mark.parametrize("layer", [2, 3, 4])
def test_matches_float64_reference_residual(layer):
    model = residual_net(5)
    x = images(2, 5, dtype=torch.float64)
    ours = ExcitationBackprop(model, str(layer - 1)).attribute(x, target=[1, 3])
    torch.testing.assert_close(ours, reference.excitation_backprop(model, x, [1, 3], layer))


@pytest.mark.parametrize(("layer", "contrast"), [(3, 10), (7, 7), (4, 13)])
def test_contrastive_matches_float64_reference(layer, contrast):
    model = vgg_like("module", seed=6, bn=True).double()
    x = images(2, 6, dtype=torch.float64)
    ceb = ContrastiveExcitationBackprop(model, str(layer - 1), str(contrast - 1), "15")
    ours = ceb.attribute(x, target=[0, 4])
    expected = reference.contrastive_excitation_backprop(model, x, [0, 4], layer, contrast, 15)
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(ours, expected)


# Properties --------------------------------------------------------------------------------------------------


@st.composite
def positive_nets(draw: st.DrawFn) -> tuple[nn.Sequential, torch.Tensor, list[int], list[int], bool]:
    """Linear/conv/ReLU/avg-pool nets, their non-negative inputs and the indices of their spatial layers."""
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    channels = [draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3)))]
    layers: list[nn.Module] = []
    c, size = 2, 8
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=bias), nn.ReLU()]
        if draw(st.booleans()) and size >= 2:
            layers.append(nn.AvgPool2d(2))
            size //= 2
        c = out
    spatial = list(range(len(layers)))
    hidden = draw(st.integers(2, 6))
    layers += [nn.Flatten(), nn.Linear(c * size * size, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, 3, bias=bias)]
    model = reinitialise(nn.Sequential(*layers), seed, scale=1.0).eval().double()
    n = draw(st.integers(1, 3))
    x = images(n, seed, dtype=torch.float64)[:, :2]
    targets = [draw(st.integers(0, 2)) for _ in range(n)]
    return model, x, targets, spatial, bias


@settings(max_examples=10)
@given(positive_nets())
def test_maps_are_non_negative_and_conserve_mass(case):
    """With non-negative inputs the signal stays non-negative. A linear layer passes on
    sum_i p_i z_i / (z_i + eps) with z = f(x, W+): without biases every unit holding mass has z_i > 0
    (it is active, so W x > 0, so W+ x > 0), hence the mass is the same at every layer; with biases a
    unit can be active with z_i = 0 and its mass is dropped, so the mass can only decrease going down."""
    model, x, targets, spatial, bias = case
    masses = []
    for index in spatial:
        maps = ExcitationBackprop(model, str(index)).attribute(x, target=targets)
        assert (maps >= 0).all()
        masses.append(maps.sum((1, 2, 3)))
    masses_t = torch.stack(masses)  # (layers, N), top layer last
    assert (masses_t <= 1 + 1e-9).all()
    if bias:
        assert (masses_t[:-1] <= masses_t[1:] + 1e-9).all()
    else:
        torch.testing.assert_close(masses_t, masses_t[-1:].expand_as(masses_t))
        top = masses_t[-1]
        assert ((top - 1).abs() < 1e-9).logical_or(top == 0).all()


@settings(max_examples=5)
@given(seed=st.integers(0, 2**16), contrast=st.sampled_from(["2", "6", "9"]), n=st.integers(1, 3))
def test_contrastive_is_the_clamped_difference_with_the_dual_at_the_contrast_layer(seed, contrast, n):
    model = vgg_like("module", seed=seed).double()
    x = images(n, seed, dtype=torch.float64)
    targets = [(seed + i) % 5 for i in range(n)]
    dual_model = copy.deepcopy(model)
    with torch.no_grad():
        dual_model[15].weight.neg_()  # the dual, built independently by negating a copy's classifier
    eb = ExcitationBackprop(model, contrast).attribute(x, target=targets)
    dual = ExcitationBackprop(dual_model, contrast).attribute(x, target=targets)
    ceb = ContrastiveExcitationBackprop(model, contrast, contrast, "15").attribute(x, target=targets)
    torch.testing.assert_close(ceb, (eb - dual).clamp(min=0))


@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 3), batch_size=st.sampled_from([None, 1, 2, "auto"]))
def test_multi_target_equals_per_target_and_batch_size_is_irrelevant(seed, k, batch_size):
    model = vgg_like("module_inplace", seed=seed)
    x = images(3, seed)
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 5, (3, k), generator=g)
    for method in (ExcitationBackprop(model, "6"), ContrastiveExcitationBackprop(model, "2", "9")):
        many = method.attribute(x, target=targets, batch_size=batch_size)
        assert many.shape == (3, k, 1, 4, 4) if method.layer_name == "6" else (3, k, 1, 8, 8)
        for j in range(k):
            torch.testing.assert_close(many[:, j], method.attribute(x, target=targets[:, j]), rtol=1e-5, atol=1e-7)


def test_default_target_is_the_prediction():
    model = vgg_like("module", seed=7)
    x = images(2, 7)
    predicted = model(x).argmax(1)
    eb = ExcitationBackprop(model, "6")
    torch.testing.assert_close(eb.attribute(x), eb.attribute(x, target=predicted))


# State, parameters, errors -----------------------------------------------------------------------------------


class SpyingRule(ExcitationRule):
    """Checks the parameters at every linear rule call, i.e. during the backward pass."""

    model: nn.Module
    before: dict[str, torch.Tensor]
    calls = 0

    def rule_for(self, node):  # type: ignore[no-untyped-def]
        rule = super().rule_for(node)
        if rule is None or node.name() not in ("ConvolutionBackward0", "AddmmBackward0"):
            return rule

        def spied(n, grads, trace):  # type: ignore[no-untyped-def]
            out = rule(n, grads, trace)
            assert_state_equal(SpyingRule.before, SpyingRule.model)
            assert not any(p.requires_grad for p in SpyingRule.model.parameters())
            SpyingRule.calls += 1
            return out

        return spied


def test_parameters_untouched_during_the_backward_and_state_restored(monkeypatch):
    model = vgg_like("module_inplace", seed=8, bn=True).train()
    model[12].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    SpyingRule.model, SpyingRule.before, SpyingRule.calls = model, state(model), 0
    monkeypatch.setattr(excitation_module, "ExcitationRule", SpyingRule)
    ceb = ContrastiveExcitationBackprop(model, "2", "9", "15")
    ceb.rule = SpyingRule()
    ceb.attribute(images(2, 8), target=[1, 2])
    assert SpyingRule.calls >= 6  # both passes ran through the spy, the dual's negated classifier included
    assert_state_equal(SpyingRule.before, model)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_state_restored_on_an_injected_error(monkeypatch):
    model = vgg_like("module", seed=9).train()
    before = state(model)

    def boom(self, node, grads, trace):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected")

    monkeypatch.setattr(ExcitationRule, "_convolution", boom)
    with pytest.raises(RuntimeError, match="injected"):
        ExcitationBackprop(model, "2").attribute(images(2, 9), target=0)
    assert_state_equal(before, model)
    assert model.training and all(p.requires_grad for p in model.parameters())


class GeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.gelu(self.conv(x)).flatten(1))


def test_unsupported_operation_raises_naming_the_node():
    model = GeluNet().eval()
    with pytest.raises(UnsupportedModelError, match="GELU.*GeluBackward0"):
        ExcitationBackprop(model, "conv").attribute(images(1, 0), target=0)
    assert all(p.requires_grad for p in model.parameters())
    # A node above the layer only: nothing unsupported lies on the path.
    maps = ExcitationBackprop(model, "head").attribute(images(1, 0), target=0)
    assert maps.shape == (1, 1)


def test_sigmoid_gate_is_refused_rather_than_plain():
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x))
            return self.head((h * torch.sigmoid(h)).mean((2, 3)))

    with pytest.raises(UnsupportedModelError, match="excitation backprop is not defined"):
        ExcitationBackprop(Gated().eval(), "conv").attribute(images(1, 0), target=0)


def test_bad_arguments():
    model = vgg_like()
    with pytest.raises(ValueError, match="eps"):
        ExcitationBackprop(model, "2", eps=-1.0)
    with pytest.raises(ValueError, match="no layer named"):
        ContrastiveExcitationBackprop(model, "2", "99")
    with pytest.raises(ValueError, match="depends on layer"):  # contrast below the layer
        ContrastiveExcitationBackprop(model, "6", "2").attribute(images(1, 0), target=0)
    with pytest.raises(ValueError, match="linear or convolution"):
        ContrastiveExcitationBackprop(model, "2", "6", "13").attribute(images(1, 0), target=0)
    assert "contrast_layer='9'" in repr(ContrastiveExcitationBackprop(model, "2", "9"))
    assert "classifier_layer='15'" in repr(ContrastiveExcitationBackprop(model, "2", "9"))


# torchvision models ------------------------------------------------------------------------------------------

TORCHVISION_CI = {
    "resnet18": "layer3",
    "squeezenet1_0": "features.12",
    "shufflenet_v2_x0_5": "stage4",
}
TORCHVISION_SLOW = {
    "resnet50": "layer3",
    "vgg16": "features.16",
    "densenet121": "features.denseblock3",
    "googlenet": "inception4c",
    "squeezenet1_0": "features.7",
    "shufflenet_v2_x1_0": "stage4",
}
# Layers below an operation excitation backprop is not defined for (ReLU6, GELU, LayerNorm, attention).
TORCHVISION_REFUSED = {
    "mobilenet_v2": "features.17",
    "vit_b_16": "conv_proj",
    "convnext_tiny": "features.5",
    "swin_t": "features.3",
}


def _torchvision(name: str) -> nn.Module:
    import torchvision  # a dev dependency
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **kwargs).eval()


def _check_torchvision(name: str, layer: str) -> None:
    model = _torchvision(name)
    before = state(model)
    if name in TORCHVISION_REFUSED:
        x = images(1, 0, size=224 if name in ("vit_b_16", "swin_t") else 64)
        with pytest.raises(UnsupportedModelError, match="excitation backprop is not defined"):
            ExcitationBackprop(model, layer).attribute(x, target=0)
        assert_state_equal(before, model)
        return
    x = images(2, 0, size=64)
    maps = ExcitationBackprop(model, layer).attribute(x)
    assert maps.shape[:2] == (2, 1) and maps.dim() == 4
    assert maps.isfinite().all() and (maps >= 0).all() and maps.sum() > 0
    ceb = ContrastiveExcitationBackprop(model, layer, layer).attribute(x)
    assert ceb.shape == maps.shape and ceb.isfinite().all() and (ceb >= 0).all()
    assert_state_equal(before, model)


@pytest.mark.parametrize("name", list(TORCHVISION_CI))
def test_torchvision_models_unmodified(name):
    _check_torchvision(name, TORCHVISION_CI[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHVISION_SLOW) + list(TORCHVISION_REFUSED))
def test_torchvision_sweep(name):
    _check_torchvision(name, {**TORCHVISION_SLOW, **TORCHVISION_REFUSED}[name])
