"""LRP: zennit and Captum as oracles, a float64 reference from the formulas, conservation and invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models.resnet import BasicBlock
from zennit import canonizers as zennit_canonizers
from zennit import composites as zennit_composites
from zennit import rules as zennit_rules
from zennit import torchvision as zennit_torchvision
from zennit.attribution import Gradient

from attrib import lrp
from attrib.methods.lrp import LRP
from attrib.rules import UnsupportedModelError
from attrib.targets import Neuron

from . import reference_lrp as reference
from .models import ResidualBNNet, TwoInputNet, assert_batch_invariant, build, reinitialise, relu, specs
from .reference_lrp import Residual

COMPOSITES = ("EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonGammaBox")


def vgg_like(bn: bool = False, seed: int = 0, style: str = "module", eps: float = 1e-5) -> nn.Sequential:
    """conv-[BN]-ReLU-maxpool, conv-[BN]-ReLU-avgpool, conv-ReLU-adaptive avgpool, linear-ReLU-dropout-linear."""

    def norm(c: int) -> nn.Module:
        return nn.BatchNorm2d(c, eps=eps) if bn else nn.Identity()

    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        norm(6),
        relu(style),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        norm(8),
        relu(style),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        relu(style),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 12),
        relu(style),
        nn.Dropout(),
        nn.Linear(12, 5),
    )
    return reinitialise(model, seed, scale=1.0).eval().double()


class TinyResNet(nn.Module):
    """torchvision's ResNet layout with two BasicBlocks (one with a strided 1x1 downsample)."""

    def __init__(self, seed: int = 0, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2, downsample=down))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)
        reinitialise(self, seed, scale=1.0)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = eps
        self.eval().double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def images(n: int, seed: int, size: int = 8, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 3, size, size), generator=g, dtype=torch.float64) * (high - low) + low).double()


def ours_and_zennit(name: str, low: float = 0.0, high: float = 1.0) -> tuple[lrp.Composite, type, dict]:
    if name == "EpsilonGammaBox":
        return lrp.EpsilonGammaBox(low, high), zennit_composites.EpsilonGammaBox, {"low": low, "high": high}
    return getattr(lrp, name)(), getattr(zennit_composites, name), {}


def zennit_lrp(model: nn.Module, zennit_composite: object, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """zennit's relevance with the output relevance set to the target's score (one-hot times the output)."""
    with Gradient(model, zennit_composite) as attributor:
        _, relevance = attributor(x.clone(), lambda out: F.one_hot(target, out.shape[1]).to(out) * out)
    return relevance


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4) -> None:
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * float(theirs.abs().max()))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, module
    assert all(p.requires_grad for p in model.parameters())


# Differential: zennit ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COMPOSITES)
@pytest.mark.parametrize("bn", [False, True])
def test_matches_zennit_on_a_vgg_style_model(name, bn):
    model = vgg_like(bn=bn, seed=1)
    x, target = images(3, 0), torch.tensor([0, 3, 4])
    ours, theirs, kwargs = ours_and_zennit(name)
    canonizers = [zennit_canonizers.SequentialMergeBatchNorm()]
    expected = zennit_lrp(model, theirs(canonizers=canonizers, **kwargs), x, target)
    close(LRP(model, ours).attribute(x, target=target), expected)


@pytest.mark.parametrize("name", COMPOSITES)
def test_matches_zennit_on_a_resnet_style_model(name):
    model = TinyResNet(seed=2)
    x, target = images(3, 1, size=12, low=-2.0, high=2.0), torch.tensor([1, 0, 4])
    ours, theirs, kwargs = ours_and_zennit(name, -2.0, 2.0)
    expected = zennit_lrp(model, theirs(canonizers=[zennit_torchvision.ResNetCanonizer()], **kwargs), x, target)
    close(LRP(model, ours).attribute(x, target=target), expected)


@pytest.mark.parametrize("name", ["EpsilonPlusFlat", "EpsilonGammaBox"])
def test_matches_zennit_to_rounding_when_batch_norm_has_no_epsilon(name):
    # zennit's merged BatchNorm keeps its eps: its canonized model computes y / sqrt(1 + eps) at each merged
    # BatchNorm (5e-6 relative at eps=1e-5). With eps = 0 the two agree to rounding.
    model = TinyResNet(seed=3, eps=0.0)
    x, target = images(2, 2, size=12, low=-2.0, high=2.0), torch.tensor([2, 3])
    ours, theirs, kwargs = ours_and_zennit(name, -2.0, 2.0)
    expected = zennit_lrp(model, theirs(canonizers=[zennit_torchvision.ResNetCanonizer()], **kwargs), x, target)
    close(LRP(model, ours).attribute(x, target=target), expected, rtol=1e-10)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lrp.WSquare(), zennit_rules.WSquare(zero_params=["bias"])),
        (lrp.Gamma(1.0), zennit_rules.Gamma(1.0)),
        (lrp.Epsilon(0.1, zero_bias=True), zennit_rules.Epsilon(0.1, zero_params=["bias"])),
        (lrp.ZPlus(zero_bias=True), zennit_rules.ZPlus(zero_params=["bias"])),
    ],
)
def test_single_rules_match_zennit(ours, theirs):
    model = vgg_like(bn=True, seed=4)
    x, target = images(2, 3, low=-1.0), torch.tensor([1, 2])
    composite = lrp.Composite([(nn.Module, ours)])
    layer_map = [
        (nn.ReLU, zennit_rules.Pass()),
        (nn.AvgPool2d, zennit_rules.Norm()),
        (nn.AdaptiveAvgPool2d, zennit_rules.Norm()),
        (nn.BatchNorm2d, zennit_rules.Pass()),
        (nn.Conv2d, theirs),
        (nn.Linear, theirs),
    ]
    merge = [zennit_canonizers.SequentialMergeBatchNorm()]
    expected = zennit_lrp(model, zennit_composites.LayerMapComposite(layer_map, canonizers=merge), x, target)
    close(LRP(model, composite).attribute(x, target=target), expected)


def test_transposed_convolutions_and_batch_norm_1d_match_zennit():
    """BatchNorm folded into a transposed convolution and into a linear layer (some of its scales negative)."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 10),
        nn.BatchNorm1d(10, eps=0.0),
        nn.ReLU(),
        nn.Linear(10, 4),
    )
    model[3].eps = 0.0
    reinitialise(model, 11, scale=1.0)
    with torch.no_grad():
        model[8].running_mean.normal_(generator=torch.Generator().manual_seed(1))
        model[8].weight[:3] *= -1
    model = model.eval().double()
    x, target = images(3, 17, low=-1.0), torch.tensor([0, 3, 2])
    canonizers = [zennit_canonizers.SequentialMergeBatchNorm()]
    for ours, theirs in [
        (lrp.EpsilonPlus(), zennit_composites.EpsilonPlus(canonizers=canonizers)),
        (lrp.EpsilonAlpha2Beta1(), zennit_composites.EpsilonAlpha2Beta1(canonizers=canonizers)),
    ]:
        close(LRP(model, ours).attribute(x, target=target), zennit_lrp(model, theirs, x, target), rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn"])
@pytest.mark.parametrize("name", COMPOSITES)
def test_matches_zennit_on_torchvision_models(arch, name):
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    reinitialise(model, 5, scale=1.0)
    model = model.eval().double()
    x, target = images(2, 4, size=32, low=-2.0, high=2.0), torch.tensor([3, 7])
    ours, theirs, kwargs = ours_and_zennit(name, -2.0, 2.0)
    canonizer = zennit_torchvision.ResNetCanonizer() if arch.startswith("resnet") else zennit_torchvision.VGGCanonizer()
    expected = zennit_lrp(model, theirs(canonizers=[canonizer], **kwargs), x, target)
    before = state(model)
    close(LRP(model, ours).attribute(x, target=target, batch_size=1), expected)
    assert_untouched(before, model)


# Differential: Captum ----------------------------------------------------------------------------------------


class CaptumVGG(nn.Module):
    """The VGG-style stack with flatten in ``forward``: Captum's LRP needs a rule for every leaf module."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        layers = list(vgg_like(seed=seed).float())
        self.features = nn.Sequential(*[m for m in layers[:11] if not isinstance(m, nn.Identity)])
        self.classifier = nn.Sequential(*layers[12:])
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def test_epsilon_matches_captum():
    from captum.attr import LRP as CaptumLRP

    model = CaptumVGG(seed=6)
    x, target = images(3, 5), torch.tensor([0, 2, 4])
    expected = CaptumLRP(model).attribute(x.clone().requires_grad_(), target=target).detach()
    # Captum: EpsilonRule(1e-9) on every layer, max pooling included (x R / (x + eps), the winner's share).
    ours = LRP(model, lrp.Composite([(nn.Module, lrp.Epsilon(1e-9))], stabilizer=1e-9)).attribute(x, target=target)
    close(ours, expected)


def test_captum_gamma_and_alpha1_beta0_agree_where_their_definitions_do():
    # Captum's GammaRule uses W + gamma W+ with the bias unchanged, its Alpha1_Beta0 W+ with the bias unchanged,
    # both on signed inputs; they agree with ours on layers with non-negative inputs and zero biases.
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, GammaRule

    model = CaptumVGG(seed=7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
    model.features[3].rule = Alpha1_Beta0_Rule()
    model.features[6].rule = GammaRule(0.5)
    x, target = images(2, 6), torch.tensor([1, 3])
    expected = CaptumLRP(model).attribute(x.clone().requires_grad_(), target=target).detach()
    composite = lrp.Composite(
        [(nn.Module, lrp.Epsilon(1e-9))],
        name_map={"features.3": lrp.ZPlus(1e-9), "features.6": lrp.Gamma(0.5, 1e-9)},
        stabilizer=1e-9,
    )
    close(LRP(model, composite).attribute(x, target=target), expected)


# Reference from the formulas ---------------------------------------------------------------------------------


def reference_model(seed: int) -> nn.Sequential:
    """conv-BN-ReLU-maxpool, a residual conv block, conv-ReLU-avgpool, linear-ReLU-linear (3x8x8 input)."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())),
        nn.Conv2d(4, 5, 3, padding=1, stride=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(20, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )
    return reinitialise(model, seed, scale=1.0).eval().double()


RULES = {
    "epsilon": lambda: lrp.Epsilon(0.01),
    "zplus": lambda: lrp.ZPlus(),
    "alpha2beta1": lambda: lrp.AlphaBeta(2.0, 1.0),
    "gamma": lambda: lrp.Gamma(0.25),
    "flat": lambda: lrp.Flat(),
    "wsquare": lambda: lrp.WSquare(),
    "zbox": lambda: lrp.ZBox(-1.0, 1.5),
}


@pytest.mark.parametrize("first", ["epsilon", "zplus", "flat", "wsquare", "zbox", "gamma"])
@pytest.mark.parametrize("hidden", ["epsilon", "zplus", "alpha2beta1", "gamma"])
def test_matches_the_float64_reference(first, hidden):
    model = reference_model(seed=len(first) * 7 + len(hidden))
    x, target = images(2, 8, low=-1.0), torch.tensor([0, 2])
    first_rule = lrp.ZBox(torch.tensor([-1.0, -2.0, -1.5]).view(1, 3, 1, 1), 1.0) if first == "zbox" else RULES[first]()
    names = {"0": first_rule, "4.body.0": RULES[hidden](), "5": RULES[hidden](), "9": lrp.Epsilon(1e-3)}
    composite = lrp.Composite(name_map=names, layer_map=[(nn.Linear, lrp.Epsilon(1e-6))], stabilizer=1e-6)
    assignment = composite.assign(model)
    expected = reference.lrp(model, x, target, assignment, 1e-6)
    close(LRP(model, composite).attribute(x, target=target), expected, rtol=1e-9)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), rule=st.sampled_from(sorted(RULES)))
def test_matches_the_reference_over_seeds(seed, rule):
    model = reference_model(seed)
    x, target = images(2, seed, low=-1.0), torch.tensor([seed % 3, (seed + 1) % 3])
    composite = lrp.Composite([(nn.Conv2d, RULES[rule]()), (nn.Linear, lrp.Epsilon(0.1))], stabilizer=1e-6)
    expected = reference.lrp(model, x, target, composite.assign(model), 1e-6)
    close(LRP(model, composite).attribute(x, target=target), expected, rtol=1e-9)


# Properties ----------------------------------------------------------------------------------------------------


def zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
    return model


@settings(max_examples=25, deadline=None)
@given(spec=specs(), n=st.integers(1, 3))
def test_epsilon_conserves_the_score(spec, n):
    """With zero biases and a tiny epsilon, the input relevance sums to the target's score."""
    model = zero_biases(build(spec)).double()
    x = torch.randn((n, *spec.input_shape), generator=torch.Generator().manual_seed(spec.seed), dtype=torch.float64)
    target = torch.arange(n) % spec.classes
    relevance = LRP(model, lrp.Composite([(nn.Module, lrp.Epsilon(1e-12))], stabilizer=1e-12)).attribute(
        x, target=target
    )
    score = model(x).gather(1, target[:, None]).squeeze(1).detach()
    torch.testing.assert_close(relevance.flatten(1).sum(1), score, rtol=1e-7, atol=1e-9)


def test_conservation_through_residual_sums_batch_norm_and_two_inputs():
    resnet = zero_biases(ResidualBNNet(seed=3)).double()
    x = images(3, 9, size=6, low=-1.0)
    composite = lrp.Composite([(nn.Module, lrp.Epsilon(1e-12))], stabilizer=1e-12)
    relevance = LRP(resnet, composite).attribute(x, target=[0, 1, 2])
    score = resnet(x).gather(1, torch.tensor([[0], [1], [2]])).squeeze(1).detach()
    torch.testing.assert_close(relevance.flatten(1).sum(1), score, rtol=1e-7, atol=1e-9)

    two = zero_biases(TwoInputNet(seed=1)).double()
    g = torch.Generator().manual_seed(0)
    image, vector = torch.randn(2, 2, 4, 4, generator=g).double(), torch.randn(2, 4, generator=g).double()
    r_image, r_vector = LRP(two, composite).attribute((image, vector), target=1)
    total = r_image.flatten(1).sum(1) + r_vector.sum(1)
    torch.testing.assert_close(total, two(image, vector)[:, 1].detach(), rtol=1e-7, atol=1e-9)


def test_several_targets_batch_size_and_batch_equivariance():
    model = TinyResNet(seed=4)
    method = LRP(model, lrp.EpsilonGammaBox(-2.0, 2.0))
    x = images(4, 10, size=12, low=-2.0, high=2.0)
    targets = torch.tensor([[0, 3], [1, 1], [4, 2], [2, 0]])
    both = method.attribute(x, target=targets)
    assert both.shape == (4, 2, 3, 12, 12)
    for k in range(2):
        torch.testing.assert_close(both[:, k], method.attribute(x, target=targets[:, k]))
    assert_batch_invariant(method.attribute, x, targets[:, 0], [1, 3], 0)


def test_relevance_starts_at_the_score_for_callable_targets_and_float32():
    model = vgg_like(seed=8).float()
    x = images(2, 11).float()
    method = LRP(model)
    by_index = method.attribute(x, target=3)
    torch.testing.assert_close(method.attribute(x, target=lambda out: out[:, 3]), by_index)
    assert by_index.dtype == torch.float32
    # A linear score y3 - y1 starts as y3 at unit 3 and -y1 at unit 1: the difference of the two maps.
    diff = method.attribute(x, target=lambda out: out[:, 3] - out[:, 1])
    torch.testing.assert_close(diff, by_index - method.attribute(x, target=1), rtol=1e-5, atol=1e-6)


def test_a_neuron_target_starts_from_the_unit():
    """Relevance of an inner unit: it starts at the unit's value and (zero biases) sums back to it."""
    model = zero_biases(vgg_like(seed=10))
    x = images(2, 16, low=-1.0)
    composite = lrp.Composite([(nn.Module, lrp.Epsilon(1e-12))], stabilizer=1e-12)
    relevance = LRP(model, composite).attribute(x, target=Neuron(model[12], 3))
    unit = model[:13](x)[:, 3].detach()
    torch.testing.assert_close(relevance.flatten(1).sum(1), unit, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("style", ["module_inplace", "functional", "torch_inplace", "tensor"])
def test_relu_spellings_and_a_reused_module_give_the_same_relevance(style):
    x, target = images(2, 12), torch.tensor([1, 4])
    expected = LRP(vgg_like(seed=9)).attribute(x, target=target)
    torch.testing.assert_close(LRP(vgg_like(seed=9, style=style)).attribute(x, target=target), expected)
    reused = vgg_like(seed=9)
    shared = nn.ReLU()
    for i, m in enumerate(reused):
        if isinstance(m, nn.ReLU):
            reused[i] = shared
    torch.testing.assert_close(LRP(reused).attribute(x, target=target), expected)


def test_threads_explaining_one_model_at_once_get_their_own_maps():
    from concurrent.futures import ThreadPoolExecutor

    model = TinyResNet(seed=7)
    method = LRP(model, lrp.EpsilonPlusFlat())
    xs = [images(2, 20 + i, size=12, low=-1.0) for i in range(4)]
    expected = [method.attribute(x, target=i) for i, x in enumerate(xs)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: method.attribute(xs[i], target=i), range(4)))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert all(not m._forward_hooks for m in model.modules())


def test_composite_assignment_follows_zennit():
    model = vgg_like(seed=0)
    flat = lrp.EpsilonPlusFlat().assign(model)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert isinstance(flat[convs[0]], lrp.Flat)
    assert all(isinstance(flat[m], lrp.ZPlus) for m in convs[1:])
    assert all(isinstance(flat[m], lrp.Epsilon) for m in linears)
    box = lrp.EpsilonGammaBox(0.0, 1.0, gamma=0.5).assign(model)
    assert isinstance(box[convs[0]], lrp.ZBox) and box[convs[1]].gamma == 0.5
    named = lrp.EpsilonPlus(name_map={"15": lrp.Epsilon(0.5)}).assign(model)
    assert named[linears[-1]].epsilon == 0.5 and named[linears[0]].epsilon == 1e-6
    assert lrp.Composite([(nn.Conv2d, lrp.Flat())]).assign(model).keys() == set(convs)


def test_model_state_is_restored_after_a_call_and_after_faults():
    model = TinyResNet(seed=5)
    model.train()
    before = state(model)
    LRP(model).attribute(images(2, 13, size=12), target=1)
    assert_untouched(before, model)
    assert model.training

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = vgg_like(bn=True, seed=1)
    broken.insert(9, Boom())
    before = state(broken)
    with pytest.raises(RuntimeError, match="boom"):
        LRP(broken).attribute(images(2, 14), target=0)
    assert_untouched(before, broken)

    gelu = vgg_like(bn=True, seed=1)
    gelu[13] = nn.Softmax(dim=1)
    before = state(gelu)
    with pytest.raises(UnsupportedModelError, match="SoftmaxBackward0"):
        LRP(gelu).attribute(images(2, 14), target=0)
    assert_untouched(before, gelu)


# Refusals and bad input --------------------------------------------------------------------------------------


class FunctionalConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3, dtype=torch.float64))
        self.fc = nn.Linear(4 * 36, 2).double()

    def forward(self, x):
        return self.fc(F.conv2d(x, self.weight).relu().flatten(1))


class Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3).double()

    def forward(self, x):
        h = self.fc(x)
        return h * h


def test_unsupported_operations_are_named():
    with pytest.raises(UnsupportedModelError, match="ConvolutionBackward0.*no nn.Linear"):
        LRP(FunctionalConv()).attribute(images(1, 0), target=0)
    with pytest.raises(UnsupportedModelError, match="MulBackward0"):
        LRP(Product()).attribute(torch.randn(2, 4, dtype=torch.float64), target=0)
    with pytest.raises(UnsupportedModelError, match="'15' \\(Linear\\).*composite assigns none"):
        LRP(vgg_like(), lrp.Composite([(nn.Conv2d, lrp.ZPlus())])).attribute(images(1, 0), target=0)
    trained = vgg_like(bn=True).train()
    with pytest.raises(UnsupportedModelError, match="batch statistics"):
        LRP(trained, eval_mode=False).attribute(images(2, 0), target=0)


def test_input_modified_in_place_after_a_linear_layer_is_refused():
    class Overwrite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3).double()

        def forward(self, x):
            h = x.relu()
            out = self.fc(h)
            h.mul_(2)
            return out

    with pytest.raises(RuntimeError, match="modified in place"):
        LRP(Overwrite()).attribute(torch.randn(2, 4, dtype=torch.float64), target=0)


def test_bad_arguments():
    model = vgg_like()
    with pytest.raises(TypeError, match="nn.Module"):
        LRP(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="composite must be"):
        LRP(model, lrp.Epsilon())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon must be"):
        lrp.Epsilon(-1.0)
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        lrp.AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="gamma must be"):
        lrp.Gamma(float("nan"))
    with pytest.raises(ValueError, match="ZBox low"):
        lrp.ZBox(float("inf"), 1.0)
    with pytest.raises(TypeError, match="layer_map\\[0\\]"):
        lrp.Composite([(nn.Conv2d,)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="LRP rule"):
        lrp.Composite([(nn.Conv2d, "zplus")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="name_map names \\['nope'\\]"):
        LRP(model, lrp.Composite(name_map={"nope": lrp.Flat()})).attribute(images(1, 0), target=0)
    with pytest.raises(ValueError, match="ZBox low .* does not broadcast"):
        LRP(model, lrp.EpsilonGammaBox(torch.zeros(1, 4, 1, 1), 1.0)).attribute(images(1, 0), target=0)
    with pytest.raises(ValueError, match="finite"):
        LRP(model).attribute(images(1, 0) * float("nan"), target=0)
    with pytest.raises(ValueError, match="batch_size"):
        LRP(model).attribute(images(1, 0), target=0, batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = TinyResNet(seed=6)
    x = images(2, 15, size=12, low=-2.0, high=2.0)
    method = lrp.EpsilonGammaBox(-2.0, 2.0)
    expected = LRP(model, method).attribute(x, target=[1, 2])
    got = LRP(model.cuda(), method).attribute(x.cuda(), target=[1, 2])
    close(got.cpu(), expected, rtol=1e-9)
