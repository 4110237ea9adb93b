"""DeepLift and DeepLiftShap: float64 references, Captum, summation-to-delta, the model spellings Captum gets wrong.

Where Captum (0.9.0) is wrong, the test shows it against the float64
reference and checks that attrib agrees with the reference instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import DeepLiftShap as CaptumDeepLiftShap
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from attrib.methods.deeplift import DeepLift, DeepLiftShap
from attrib.rules import UnsupportedModelError

from . import reference_deeplift as ref
from .models import RELU_STYLES, ResidualBNNet, Spec, TwoInputNet, build, inputs_for, reinitialise, relu
from .test_state import Tripwire, assert_same, snapshot, untidy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum warns about its hooks on every call


def close_rel(ours: torch.Tensor, theirs: torch.Tensor, rtol: float) -> None:
    """Close to ``rtol`` relative to the largest magnitude in ``theirs``."""
    scale = float(theirs.detach().abs().max()) if theirs.numel() else 0.0
    torch.testing.assert_close(ours.detach(), theirs.detach().to(ours.dtype), rtol=rtol, atol=rtol * max(scale, 1e-12))


def far_rel(ours: torch.Tensor, theirs: torch.Tensor, at_least: float) -> None:
    """Differ by at least ``at_least`` relative to the largest magnitude in ``theirs`` (a peer's error)."""
    scale = float(theirs.detach().abs().max())
    gap = float((ours.detach().double() - theirs.detach().double()).abs().max())
    assert gap > at_least * scale, f"expected a deviation above {at_least} x {scale:.3g}, got {gap:.3g}"


def captum(cls: type, model: nn.Module, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model).attribute(*args, return_convergence_delta=True, **kwargs)  # type: ignore[no-any-return]


# --- model builders --------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    **{f"relu_{style}": (lambda style=style: relu(style)) for style in RELU_STYLES if style != "module"},
    "relu": nn.ReLU,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "leaky_relu_inplace": lambda: nn.LeakyReLU(0.2, inplace=True),
    "elu": nn.ELU,
    "elu_inplace": lambda: nn.ELU(inplace=True),
    "selu": nn.SELU,
    "celu": lambda: nn.CELU(0.7),
    "softplus": lambda: nn.Softplus(beta=2.0),
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "silu_inplace": lambda: nn.SiLU(inplace=True),
    "mish": nn.Mish,
    "relu6": nn.ReLU6,
    "hardtanh_inplace": lambda: nn.Hardtanh(-0.5, 0.5, inplace=True),
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "logsigmoid": nn.LogSigmoid,
    "softshrink": lambda: nn.Softshrink(0.1),
    "hardshrink": lambda: nn.Hardshrink(0.1),
    "prelu": lambda: nn.PReLU(init=0.3),
    "threshold": lambda: nn.Threshold(0.1, -0.2),
    "threshold_inplace": lambda: nn.Threshold(0.1, -0.2, inplace=True),
    "clamp": lambda: ref.Elementwise(lambda x: x.clamp(min=-0.2, max=0.4)),
    "clamp_inplace": lambda: ref.Elementwise(lambda x: x.clamp_(min=-0.1)),
    "exp": lambda: ref.Elementwise(torch.exp),
    "square": lambda: ref.Elementwise(lambda x: x**2),
    "abs": lambda: ref.Elementwise(torch.abs),
    "sin": lambda: ref.Elementwise(torch.sin),
    "cos": lambda: ref.Elementwise(torch.cos),
    "expm1": lambda: ref.Elementwise(torch.expm1),
    "atan": lambda: ref.Elementwise(torch.atan),
    "erf": lambda: ref.Elementwise(torch.erf),
    "clamp_min": lambda: ref.Elementwise(lambda x: torch.clamp_min(x, -0.1)),
    "clamp_max": lambda: ref.Elementwise(lambda x: torch.clamp_max(x, 0.2)),
    "celu_inplace": lambda: nn.CELU(0.7, inplace=True),
    "log_softplus": lambda: ref.Elementwise(lambda x: torch.log(F.softplus(x))),
    "sqrt_log1p": lambda: ref.Elementwise(lambda x: torch.sqrt(torch.log1p(x.abs()))),
    "rsqrt": lambda: ref.Elementwise(lambda x: torch.rsqrt(1 + x**2)),
}
RELU_LIKE = tuple(name for name in ACTIVATIONS if name.startswith("relu"))
CAPTUM_ACTIVATIONS = ("relu", "relu_inplace", "sigmoid", "tanh", "leaky_relu", "elu", "softplus")


@dataclass(frozen=True)
class Net:
    """conv blocks ``(channels, activation, pool)``, hidden ``(width, activation)``, a linear head."""

    channels: int
    size: int
    convs: tuple[tuple[int, str, str], ...]  # pool: "none", "after" (conv-act-pool) or "before" (conv-pool-act)
    hidden: tuple[tuple[int, str], ...]
    classes: int
    seed: int


def build_net(net: Net) -> nn.Sequential:
    layers: list[nn.Module] = []
    c, s = net.channels, net.size
    for out, act, pool in net.convs:
        layers.append(nn.Conv2d(c, out, 3, padding=1))
        block = [ACTIVATIONS[act]()]
        if pool != "none" and s >= 2:
            block.insert(0 if pool == "before" else 1, nn.MaxPool2d(2))
            s //= 2
        layers += block
        c = out
    layers.append(nn.Flatten())
    features = c * s * s
    for width, act in net.hidden:
        layers += [nn.Linear(features, width), ACTIVATIONS[act]()]
        features = width
    layers.append(nn.Linear(features, net.classes))
    return reinitialise(nn.Sequential(*layers), net.seed, scale=1.5).eval()


@st.composite
def nets(draw: st.DrawFn, activations: tuple[str, ...] = tuple(ACTIVATIONS), pools: bool = True) -> Net:
    act = st.sampled_from(activations)
    pool = st.sampled_from(("none", "after", "before") if pools else ("none",))
    return Net(
        channels=draw(st.integers(1, 2)),
        size=draw(st.integers(3, 5)),
        convs=tuple((draw(st.integers(1, 3)), draw(act), draw(pool)) for _ in range(draw(st.integers(0, 2)))),
        hidden=tuple((draw(st.integers(2, 5)), draw(act)) for _ in range(draw(st.integers(0, 2)))),
        classes=draw(st.integers(2, 4)),
        seed=draw(st.integers(0, 2**16)),
    )


def captum_cnn(act: str, seed: int, width: int = 3, pool: bool = True) -> nn.Sequential:
    """conv-act-conv-(maxpool)-linear-act-linear with module nonlinearities, none adjacent to another (see #1104)."""
    layers: list[nn.Module] = [nn.Conv2d(2, width, 3, padding=1), ACTIVATIONS[act](), nn.Conv2d(width, width, 3)]
    layers += [nn.MaxPool2d(2)] if pool else []
    layers += [nn.Flatten(), nn.Linear(width * (4 if pool else 16), 5), ACTIVATIONS[act](), nn.Linear(5, 3)]
    return reinitialise(nn.Sequential(*layers), seed, scale=1.5).eval()


def case(net: Net, n: int, data: st.DataObject) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = build_net(net)
    shape = (net.channels, net.size, net.size)
    x = inputs_for(shape, n, net.seed)
    baseline = inputs_for(shape, n, net.seed + 1) * data.draw(st.sampled_from((0.0, 0.3, 1.0)))
    targets = torch.tensor(data.draw(st.lists(st.integers(0, net.classes - 1), min_size=n, max_size=n)))
    return model, x, baseline, targets


# --- the float64 reference ------------------------------------------------------------------------


@given(net=nets(), n=st.integers(1, 3), data=st.data())
def test_matches_the_float64_reference(net, n, data):
    model, x, baseline, targets = case(net, n, data)
    expected = ref.deeplift(model, x, baseline, targets.tolist())
    ours64 = DeepLift(model.double()).attribute(x.double(), targets, baselines=baseline.double())
    close_rel(ours64, expected, 1e-9)
    ours32 = DeepLift(model.float()).attribute(x, targets, baselines=baseline)
    close_rel(ours32, expected, 1e-4)


@given(net=nets(), n=st.integers(1, 3), data=st.data())
def test_multipliers_match_the_reference(net, n, data):
    model, x, baseline, targets = case(net, n, data)
    expected = ref.deeplift_multipliers(model, x, baseline, targets.tolist())
    ours = DeepLift(model.double(), multiply_by_inputs=False).attribute(
        x.double(), targets, baselines=baseline.double()
    )
    close_rel(ours, expected, 1e-9)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_supported_nonlinearity_matches_the_reference_and_sums_to_delta(act):
    net = Net(2, 4, ((3, act, "none"),), ((4, act),), 3, seed=len(act))
    model = build_net(net).double()
    x, baseline = inputs_for((2, 4, 4), 3, 1).double(), inputs_for((2, 4, 4), 3, 2).double() * 0.5
    targets = torch.tensor([0, 2, 1])
    maps, delta = DeepLift(model).attribute(x, targets, baselines=baseline, return_convergence_delta=True)
    close_rel(maps, ref.deeplift(model, x, baseline, targets.tolist()), 1e-9)
    gain = ref_gain(model, x, baseline, targets)
    torch.testing.assert_close(delta, torch.zeros_like(delta), rtol=0, atol=1e-10 * max(1.0, float(gain.abs().max())))


def ref_gain(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        rows = torch.arange(x.shape[0])
        return model(x)[rows, targets] - model(baseline)[rows, targets]


@given(net=nets(), n=st.integers(1, 3), refs=st.integers(1, 3), data=st.data())
def test_deeplift_shap_matches_the_reference(net, n, refs, data):
    model, x, _, targets = case(net, n, data)
    references = inputs_for((net.channels, net.size, net.size), refs, net.seed + 2) * 0.5
    expected = ref.deeplift_shap(model, x, references, targets.tolist())
    ours = DeepLiftShap(model.double()).attribute(x.double(), targets, baselines=references.double(), batch_size=4)
    close_rel(ours, expected, 1e-9)


@given(net=nets(), n=st.integers(1, 3))
def test_at_the_baseline_the_multipliers_are_the_gradient(net, n):
    """x' = x everywhere: every nonlinearity falls back to its derivative, so m is the plain gradient."""
    model = build_net(net).double()
    x = inputs_for((net.channels, net.size, net.size), n, net.seed).double()
    targets = torch.arange(n) % net.classes
    multipliers = DeepLift(model, multiply_by_inputs=False).attribute(x, targets, baselines=x)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf.clone()).gather(1, targets[:, None]).sum(), leaf)
    close_rel(multipliers, grad, 1e-9)


def test_torchvision_resnet_sums_to_delta_where_captum_refuses_it():
    """torchvision's BasicBlock calls one in-place ReLU module twice: Captum raises, attrib explains it."""
    import torchvision  # a dev dependency

    with torch.random.fork_rng():  # torchvision initialises from the global RNG
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=4).eval()
    x, baseline = inputs_for((3, 32, 32), 2, 0), inputs_for((3, 32, 32), 2, 1) * 0.2
    targets = torch.tensor([1, 3])
    maps, delta = DeepLift(model).attribute(x, targets, baselines=baseline, return_convergence_delta=True)
    gain = ref_gain(model, x, baseline, targets)
    assert float(gain.abs().min()) > 1e-3 and float(delta.abs().max()) < 1e-5 * float(gain.abs().max()) + 1e-6
    with pytest.raises(RuntimeError, match="more than once"):
        captum(CaptumDeepLift, model, x.clone(), baseline, target=targets)


# --- summation-to-delta, spellings, batching ---------------------------------------------------------


@given(net=nets(activations=RELU_LIKE), n=st.integers(1, 4), data=st.data())
def test_summation_to_delta_on_relu_and_max_pool_networks(net, n, data):
    model, x, baseline, targets = case(net, n, data)
    maps, delta = DeepLift(model).attribute(x, targets, baselines=baseline, return_convergence_delta=True)
    gain = ref_gain(model, x, baseline, targets)
    torch.testing.assert_close(maps.flatten(1).sum(1) - gain, delta, rtol=0, atol=1e-5)
    assert float(delta.abs().max()) <= 1e-5 * max(1.0, float(gain.abs().max()))


@pytest.mark.parametrize("style", [s for s in RELU_STYLES if s != "module"])
def test_functional_and_in_place_relus_equal_module_relus(style):
    spec = Spec(2, 6, (3, 4), (True, False), (5,), 4, ("module",) * 4, seed=7)
    module_model = build(spec)
    styled = build(Spec(**{**spec.__dict__, "relu_styles": (style,) * 4}))
    x, baseline = inputs_for((2, 6, 6), 3, 0), inputs_for((2, 6, 6), 3, 1) * 0.5
    targets = torch.tensor([0, 3, 1])
    expected = DeepLift(module_model).attribute(x, targets, baselines=baseline)
    torch.testing.assert_close(DeepLift(styled).attribute(x, targets, baselines=baseline), expected)


@given(net=nets(), n=st.integers(2, 4), seed=st.integers(0, 99))
def test_independent_of_batch_size_and_batch_equivariant(net, n, seed):
    model = build_net(net)
    shape = (net.channels, net.size, net.size)
    x, baseline = inputs_for(shape, n, seed), inputs_for(shape, 1, seed + 1)
    targets = torch.arange(n) % net.classes

    def attribute(x, target, batch_size=None):
        return DeepLift(model).attribute(x, target, baselines=baseline, batch_size=batch_size)

    whole = attribute(x, targets)
    for batch_size in (2, 3, 5, "auto"):
        torch.testing.assert_close(attribute(x, targets, batch_size), whole)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(attribute(x[perm], targets[perm]), whole[perm])
    references = inputs_for(shape, 3, seed + 2)
    shap = DeepLiftShap(model)
    whole = shap.attribute(x, targets, baselines=references)
    for batch_size in (2, 3, 7, "auto"):
        torch.testing.assert_close(shap.attribute(x, targets, baselines=references, batch_size=batch_size), whole)


def test_k_targets_callable_target_and_top1():
    model = captum_cnn("relu", seed=3)
    x, baseline = inputs_for((2, 6, 6), 3, 0), inputs_for((2, 6, 6), 1, 1)
    dl = DeepLift(model)
    pairs = torch.tensor([[0, 2], [1, 1], [2, 0]])
    maps, delta = dl.attribute(x, pairs, baselines=baseline, return_convergence_delta=True)
    assert maps.shape == (3, 2, 2, 6, 6) and delta.shape == (3, 2)
    for k in range(2):
        torch.testing.assert_close(maps[:, k], dl.attribute(x, pairs[:, k], baselines=baseline))
    torch.testing.assert_close(
        dl.attribute(x, lambda out: out[:, 1], baselines=baseline), dl.attribute(x, 1, baselines=baseline)
    )
    top1 = model(x).argmax(1)
    torch.testing.assert_close(dl.attribute(x, baselines=baseline), dl.attribute(x, top1, baselines=baseline))
    shap = DeepLiftShap(model)
    references = inputs_for((2, 6, 6), 2, 5)
    torch.testing.assert_close(shap.attribute(x, baselines=references), shap.attribute(x, top1, baselines=references))
    many, deltas = shap.attribute(x, pairs, baselines=references, return_convergence_delta=True)
    assert many.shape == (3, 2, 2, 6, 6) and deltas.shape == (6, 2)


def test_tuple_inputs_forward_args_and_per_example_baselines():
    model = TwoInputNet(seed=4)
    image, vector = inputs_for((2, 4, 4), 3, 0), inputs_for((4,), 3, 1)
    gain = torch.tensor([1.0, -2.0, 0.5])
    baselines = (inputs_for((2, 4, 4), 3, 2) * 0.5, 0.1)
    maps, delta = DeepLift(model).attribute(
        (image, vector), 2, baselines=baselines, additional_forward_args=gain, return_convergence_delta=True
    )
    assert isinstance(maps, tuple) and maps[0].shape == image.shape and maps[1].shape == vector.shape
    with torch.no_grad():
        expected_gain = model(image, vector, gain)[:, 2] - model(baselines[0], torch.full_like(vector, 0.1), gain)[:, 2]
    total = maps[0].flatten(1).sum(1) + maps[1].sum(1)
    torch.testing.assert_close(total, expected_gain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(delta, total - expected_gain, rtol=0, atol=1e-6)
    shap = DeepLiftShap(model).attribute(
        (image, vector),
        lambda out: out[:, 0],
        baselines=(image[:2] * 0.5, vector[:2] * 0.5),
        additional_forward_args=gain,
    )
    assert shap[0].shape == image.shape and shap[1].shape == vector.shape


# --- Captum ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", CAPTUM_ACTIVATIONS)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 3), pool=st.booleans(), scale=st.sampled_from((0.0, 0.5)))
def test_matches_captum_on_module_nonlinearities(act, seed, n, pool, scale):
    model = captum_cnn(act, seed, pool=pool)
    x, baseline = inputs_for((2, 6, 6), n, seed), inputs_for((2, 6, 6), n, seed + 1) * scale
    targets = torch.arange(n) % 3
    theirs, their_delta = captum(CaptumDeepLift, model, x.clone(), baseline, target=targets)
    ours, delta = DeepLift(model).attribute(x, targets, baselines=baseline, return_convergence_delta=True)
    close_rel(ours, theirs, 1e-4)
    torch.testing.assert_close(delta, their_delta.detach(), rtol=0, atol=1e-5)
    references = inputs_for((2, 6, 6), 3, seed + 2)
    theirs, their_delta = captum(CaptumDeepLiftShap, model, x.clone(), references, target=targets)
    ours, delta = DeepLiftShap(model).attribute(x, targets, baselines=references, return_convergence_delta=True)
    close_rel(ours, theirs, 1e-4)
    torch.testing.assert_close(delta, their_delta.detach(), rtol=0, atol=1e-5)


def test_matches_captum_on_a_residual_batchnorm_block():
    model = ResidualBNNet(seed=3)  # conv-BN-ReLU stem, in-place ReLU, residual add, adaptive average pool
    x, baseline = inputs_for((3, 6, 6), 4, 0), inputs_for((3, 6, 6), 4, 1) * 0.3
    targets = torch.tensor([0, 4, 2, 1])
    theirs, their_delta = captum(CaptumDeepLift, model, x.clone(), baseline, target=targets)
    ours, delta = DeepLift(model).attribute(x, targets, baselines=baseline, return_convergence_delta=True)
    close_rel(ours, theirs, 1e-4)
    assert float(delta.abs().max()) < 1e-5 and float(their_delta.abs().max()) < 1e-5
    references = inputs_for((3, 6, 6), 3, 2)
    theirs, their_delta = captum(CaptumDeepLiftShap, model, x.clone(), references, target=targets)
    ours, delta = DeepLiftShap(model).attribute(
        x, targets, baselines=references, batch_size=6, return_convergence_delta=True
    )
    close_rel(ours, theirs, 1e-4)
    torch.testing.assert_close(delta, their_delta.detach(), rtol=0, atol=1e-5)


# --- what Captum gets wrong -----------------------------------------------------------------------


class FreshReLUs(nn.Module):
    """ReLU modules created inside forward (captum #1082): Captum's hooks never see them."""

    def __init__(self, twin: nn.Sequential) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = twin[0], twin[2], twin[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(nn.ReLU()(self.l2(nn.ReLU()(self.l1(x)))))


class ReusedReLU(nn.Module):
    """One ReLU module called twice (captum #1104 / #578)."""

    def __init__(self, twin: nn.Sequential) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = twin[0], twin[2], twin[4]
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(self.relu(self.l2(self.relu(self.l1(x)))))


class FunctionalCalls(nn.Module):
    """F.relu and torch.sigmoid called as functions (captum #1085's family): no module to hook."""

    def __init__(self, twin: nn.Sequential) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = twin[0], twin[2], twin[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.sigmoid(self.l2(F.relu(self.l1(x), inplace=True))))


class ExpHead(nn.Module):
    """torch.exp in the model (captum #1085)."""

    def __init__(self, twin: nn.Sequential) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = twin[0], twin[2], twin[4]
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.exp(self.l2(self.relu(self.l1(x)))))


def _mlp_twin(second: nn.Module, seed: int) -> nn.Sequential:
    layers = [nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), second, nn.Linear(4, 3)]
    return reinitialise(nn.Sequential(*layers), seed, scale=1.5).eval()


SPELLINGS = {
    "relu_created_in_forward": (FreshReLUs, nn.ReLU),
    "relu_module_reused": (ReusedReLU, nn.ReLU),
    "functional_relu_and_sigmoid": (FunctionalCalls, nn.Sigmoid),
    "exp": (ExpHead, lambda: ref.Elementwise(torch.exp)),
}


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_model_spellings_captum_gets_wrong(name):
    wrapper, second = SPELLINGS[name]
    twin = _mlp_twin(second(), seed=11)
    model = wrapper(twin).eval()
    x, baseline = inputs_for((6,), 4, 0), inputs_for((6,), 4, 1) * 0.5
    targets = torch.tensor([0, 1, 2, 1])
    expected = ref.deeplift(twin, x, baseline, targets.tolist())
    ours, delta = DeepLift(model).attribute(x, targets, baselines=baseline, return_convergence_delta=True)
    close_rel(ours, expected, 1e-5)
    # Summation-to-delta up to float32 rounding of the score difference (exp makes scores large).
    gain = ours.sum(1) - delta
    assert float((delta.abs() / gain.abs().clamp(min=1.0)).max()) < 1e-5
    try:
        theirs, their_delta = captum(CaptumDeepLift, model, x.clone(), baseline, target=targets)
    except RuntimeError as err:  # the reused module: Captum refuses
        assert "used more than once" in str(err) or "does not contain" in str(err)
        return
    far_rel(theirs, expected, 1e-2)  # silently wrong: plain gradients where a rescale multiplier belongs
    assert float(their_delta.abs().max()) > 1e-3


def test_adjacent_relu_and_max_pool_captum_1104():
    """conv-ReLU-maxpool, the commonest CNN layout: Captum 0.9.0 breaks summation-to-delta, attrib does not."""
    model = build_net(Net(2, 6, ((3, "relu", "after"),), (), 3, seed=5))
    x, baseline = inputs_for((2, 6, 6), 3, 0), inputs_for((2, 6, 6), 3, 1) * 0.3
    targets = torch.tensor([0, 1, 2])
    expected = ref.deeplift(model, x, baseline, targets.tolist())
    ours, delta = DeepLift(model).attribute(x, targets, baselines=baseline, return_convergence_delta=True)
    close_rel(ours, expected, 1e-5)
    assert float(delta.abs().max()) < 1e-5
    theirs, their_delta = captum(CaptumDeepLift, model, x.clone(), baseline, target=targets)
    far_rel(theirs, expected, 1e-2)
    assert float(their_delta.abs().max()) > 1e-3


def test_max_pool_fallback_uses_each_examples_gradient_captum_1276():
    """Where x = x' at a max pool's input the multiplier is that example's plain gradient (Captum: example 0's)."""
    model = reinitialise(nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)), seed=2).eval()
    x = inputs_for((2, 4, 4), 3, 0)
    baseline = x.clone()
    baseline[:, :, :2] += 0.5  # top half differs, bottom half equal: the fallback there
    targets = torch.tensor([0, 1, 2])
    expected = ref.deeplift_multipliers(model, x, baseline, targets.tolist())
    ours = DeepLift(model, multiply_by_inputs=False).attribute(x, targets, baselines=baseline)
    close_rel(ours, expected, 1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = CaptumDeepLift(model, multiply_by_inputs=False).attribute(x.clone(), baseline, target=targets)
    far_rel(theirs[:, :, 2:], expected[:, :, 2:].float(), 1e-2)


# --- refusals, bad input, state -----------------------------------------------------------------------


class Softmaxed(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x).softmax(1)


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) * torch.sigmoid(self.b(x))


class SequenceFirst(nn.Module):
    """Puts the batch second before a ReLU: the rows cannot be paired."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.l(x).T).T


UNSUPPORTED = {
    "softmax": lambda: Softmaxed(nn.Linear(6, 3)),
    "layer_norm": lambda: nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4), nn.Linear(4, 3)),
    "gating_product": Gated,
    "where": lambda: nn.Sequential(nn.Linear(6, 3), ref.Elementwise(lambda t: torch.where(t > 0, t, 0.0))),
    "composite_tanhshrink": lambda: nn.Sequential(nn.Linear(6, 3), nn.Tanhshrink()),
    "batch_not_first": SequenceFirst,
    "division_by_input": lambda: nn.Sequential(nn.Linear(6, 3), ref.Elementwise(lambda t: t / (1 + t.abs()))),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_operations_are_refused_and_state_restored(name):
    model = UNSUPPORTED[name]().eval()
    x = inputs_for((6,), 2, 0)
    before = snapshot(model, (x,))
    with pytest.raises(UnsupportedModelError):
        DeepLift(model).attribute(x, 0, baselines=0.1)
    assert_same(before, snapshot(model, (x,)))


def test_train_mode_batch_norm_is_refused():
    model = ResidualBNNet(seed=0).train()
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        DeepLift(model, eval_mode=False).attribute(inputs_for((3, 6, 6), 2, 0), 0)
    assert model.training


BAD = {
    "baseline_shape": (lambda m, x: DeepLift(m).attribute(x, 0, baselines=torch.zeros(2, 3)), ValueError, "broadcast"),
    "batch_size_1": (lambda m, x: DeepLift(m).attribute(x, 0, batch_size=1), ValueError, "at least 2"),
    "batch_size_0": (lambda m, x: DeepLift(m).attribute(x, 0, batch_size=0), ValueError, "batch_size"),
    "nan_baseline": (lambda m, x: DeepLift(m).attribute(x, 0, baselines=float("nan")), ValueError, "finite"),
    "eps": (lambda m, x: DeepLift(m, eps=-1.0), ValueError, "eps"),
    "multiply_flag": (lambda m, x: DeepLift(m, multiply_by_inputs=1), TypeError, "multiply_by_inputs"),  # type: ignore[arg-type]
    "shap_missing": (lambda m, x: DeepLiftShap(m).attribute(x, 0), ValueError, "required"),
    "shap_empty": (lambda m, x: DeepLiftShap(m).attribute(x, 0, baselines=torch.zeros(0, 6)), ValueError, "empty"),
    "shap_shape": (lambda m, x: DeepLiftShap(m).attribute(x, 0, baselines=torch.zeros(3, 5)), ValueError, "shape"),
    "shap_unbatched": (lambda m, x: DeepLiftShap(m).attribute(x, 0, baselines=torch.zeros(6)), ValueError, "shape"),
    "shap_scalar": (lambda m, x: DeepLiftShap(m).attribute(x, 0, baselines=0.0), TypeError, "Tensor"),
    "shap_tuple_length": (
        lambda m, x: DeepLiftShap(m).attribute(x, 0, baselines=(torch.zeros(2, 6), torch.zeros(2, 6))),
        ValueError,
        "one Tensor per input",
    ),
    "target_range": (lambda m, x: DeepLift(m).attribute(x, 7), ValueError, "target"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_a_clear_error(name):
    call, error, says = BAD[name]
    model = _mlp_twin(nn.ReLU(), seed=0)
    x = inputs_for((6,), 2, 0)
    before = snapshot(model, (x,))
    with pytest.raises(error, match=says):
        call(model, x)
    assert_same(before, snapshot(model, (x,)))


@pytest.mark.parametrize("cls", [DeepLift, DeepLiftShap])
@given(fail_at=st.integers(0, 3), n=st.integers(1, 3), seed=st.integers(0, 99))
def test_state_restored_after_success_and_a_fault_mid_forward(cls, fail_at, n, seed):
    inner = build(Spec(2, 4, (3,), (True,), (4,), 3, ("module_inplace", "functional"), seed))
    model = nn.Sequential(inner[0], Tripwire(fail_at), *list(inner)[1:])
    untidy(model, seed)
    x = inputs_for((2, 4, 4), n, seed).requires_grad_(seed % 2 == 0)
    references = inputs_for((2, 4, 4), 2, seed + 1)
    before = snapshot(model, (x, references))
    try:
        cls(model).attribute(x, 0, baselines=references[:1] if cls is DeepLift else references, batch_size=2)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(model, (x, references)))


def test_a_callable_model_with_trainable_weights_gives_the_same_maps():
    """A lambda around the model is not guarded: its weights require grad, yet they are constants for the rule."""
    model = ResidualBNNet(seed=2)
    x, references = inputs_for((3, 6, 6), 2, 0), inputs_for((3, 6, 6), 2, 1)
    expected = DeepLiftShap(model).attribute(x, 1, baselines=references)
    torch.testing.assert_close(DeepLiftShap(lambda t: model(t)).attribute(x, 1, baselines=references), expected)
    assert all(p.grad is None for p in model.parameters())


def test_works_under_no_grad_and_inference_mode():
    model = captum_cnn("relu", seed=1)
    x = inputs_for((2, 6, 6), 2, 0)
    expected = DeepLift(model).attribute(x, 1)
    with torch.no_grad():
        torch.testing.assert_close(DeepLift(model).attribute(x, 1), expected)
    with torch.inference_mode():
        torch.testing.assert_close(DeepLift(model).attribute(x, 1), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is absent on this machine")
def test_cuda_matches_cpu():
    model = ResidualBNNet(seed=1).double()
    x, references = inputs_for((3, 6, 6), 3, 0).double(), inputs_for((3, 6, 6), 2, 1).double()
    targets = torch.tensor([0, 2, 4])
    for cls, baselines in ((DeepLift, references[:1]), (DeepLiftShap, references)):
        cpu = cls(model).attribute(x, targets, baselines=baselines)
        gpu = cls(model.cuda()).attribute(x.cuda(), targets.cuda(), baselines=baselines.cuda(), batch_size=4)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu)
        model.cpu()
