"""Occlusion: a float64 loop over windows, Captum's Occlusion, invariants, state and errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.methods.occlusion import Occlusion
from attrib.perturb.blur import gaussian_blur

from .models import ResidualBNNet, Spec, TwoInputNet, assert_batch_invariant, build, inputs_for, reinitialise, specs
from .reference import as_float64
from .test_differential import assert_close_rel
from .test_state import Tripwire, assert_same, snapshot, untidy


def reference(model: nn.Module, x: torch.Tensor, targets: list[list[int]], window, stride, baseline) -> torch.Tensor:
    """Every window position one at a time, in float64: mean score drop over the windows covering each element.

    ``targets[i]`` lists example ``i``'s classes; the result is ``(N, K, *shape)``.
    """
    m = as_float64(model)
    x = x.double()
    fill = torch.as_tensor(baseline, dtype=torch.float64).expand_as(x)
    rows, cols = torch.arange(len(x)).unsqueeze(1), torch.tensor(targets)
    total = torch.zeros(len(x), cols.shape[1], *x.shape[1:], dtype=torch.float64)
    count = torch.zeros_like(x[0])
    starts = [range(0, max(length - size, 0) + step, step) for length, size, step in zip(x.shape[1:], window, stride)]
    with torch.no_grad():
        clean = m(x)[rows, cols]
        for corner in itertools.product(*starts):
            box = tuple(slice(c, c + w) for c, w in zip(corner, window))
            occluded = x.clone()
            occluded[(slice(None), *box)] = fill[(slice(None), *box)]
            drop = clean - m(occluded)[rows, cols]
            total[(slice(None), slice(None), *box)] += drop.view(*drop.shape, *([1] * (x.dim() - 1)))
            count[box] += 1
    assert bool((count > 0).all())
    return total / count


class Tanh2(nn.Module):
    """Flatten, a tanh layer and a linear head: a nonlinear model of any input shape."""

    def __init__(self, shape: tuple[int, ...], classes: int, seed: int) -> None:
        super().__init__()
        features = math.prod(shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, 6), nn.Tanh(), nn.Linear(6, classes))
        reinitialise(self, seed, scale=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@st.composite
def occlusion_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))  # H != W, vectors, 3-D inputs
    window = tuple(draw(st.integers(1, s)) for s in shape)
    stride = tuple(draw(st.integers(1, w if w < s else s + 2)) for w, s in zip(window, shape))
    return shape, window, stride


@settings(max_examples=20)
@given(
    case=occlusion_cases(),
    n=st.integers(1, 3),
    k=st.integers(1, 2),
    baseline=st.sampled_from([0.0, -1.0, "per example"]),
    batch_size=st.sampled_from([1, 3, 5, None, "auto"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_matches_a_float64_loop_over_windows(case, n, k, baseline, batch_size, seed, data):
    shape, window, stride = case
    model = Tanh2(shape, 4, seed).double()
    x = inputs_for(shape, n, seed, torch.float64)
    if baseline == "per example":
        baseline = inputs_for(shape, n, seed + 1, torch.float64)
    targets = [data.draw(st.lists(st.integers(0, 3), min_size=k, max_size=k)) for _ in range(n)]
    target = torch.tensor(targets) if k > 1 else [t[0] for t in targets]
    ours = Occlusion(model).attribute(
        x, target=target, window=window, stride=stride, baselines=baseline, batch_size=batch_size
    )
    expected = reference(model, x, targets, window, stride, baseline)
    if len(shape) > 1 and window[0] == shape[0]:  # a window over every channel gives one value per position
        torch.testing.assert_close(expected, expected[:, :, :1].expand_as(expected), rtol=0, atol=0)
        expected = expected[:, :, :1]
    if k == 1:
        expected = expected[:, 0]
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


class PooledConv(nn.Module):
    """A conv, a ReLU, adaptive pooling and a linear head: any (C, H, W) image, H != W included."""

    def __init__(self, channels: int = 3, classes: int = 5, seed: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(),
            nn.Linear(24, classes),
        )
        reinitialise(self, seed, scale=1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


CAPTUM_CASES = [
    # (window as we write it, the same as Captum's sliding_window_shapes, stride, Captum's strides, baselines),
    # on 7 x 10 images (H != W).
    (3, (3, 3, 3), 1, 1, 0.0),
    ((3, 3), (3, 3, 3), 2, (1, 2, 2), 0.5),  # stride 2 over 10 px: the last window is cut off
    ((1, 4, 2), (1, 4, 2), (1, 2, 2), (1, 2, 2), 0.0),  # per channel: maps of the input's shape; H cut off
    ((2, 7, 10), (2, 7, 10), (1, 5, 5), (1, 5, 5), -1.0),  # one position along H and W, two along channels
    (5, (3, 5, 5), 4, (1, 4, 4), "tensor"),  # 2 x 3 windows, both last ones cut off
    ((4, 2), (3, 4, 2), (3, 1), (1, 3, 1), "blur"),
    ((2, 3), (3, 2, 3), (1, 2), (1, 1, 2), "per example"),  # a baseline image per example
    ((2, 3, 1), (2, 3, 1), (1, 2, 1), (1, 2, 1), "per example"),
]


@pytest.mark.parametrize("window, theirs_window, stride, theirs_stride, baseline", CAPTUM_CASES)
def test_matches_captum(window, theirs_window, stride, theirs_stride, baseline):
    model = PooledConv()
    x = inputs_for((3, 7, 10), 4, 1)
    target = torch.tensor([[1, 4], [0, 0], [3, 2], [4, 1]])  # different classes per example, two per example
    if baseline == "tensor":
        baseline = inputs_for((3, 7, 10), 1, 7)
    elif baseline == "per example":
        baseline = inputs_for((3, 7, 10), 4, 8)
    theirs_baseline = gaussian_blur(x, 2.5) if baseline == "blur" else baseline
    ours = Occlusion(model).attribute(
        x, target, window=window, stride=stride, baselines=baseline, blur_sigma=2.5, batch_size=17
    )
    reduced = theirs_window[0] == 3
    assert ours.shape == (4, 2, 1 if reduced else 3, 7, 10)
    for k in range(2):
        theirs = CaptumOcclusion(model).attribute(
            x,
            sliding_window_shapes=theirs_window,
            strides=theirs_stride,
            baselines=theirs_baseline,
            target=target[:, k].tolist(),
            perturbations_per_eval=7,
        )
        assert_close_rel(ours[:, k], theirs[:, :1] if reduced else theirs)
        if reduced:
            assert_close_rel(theirs, theirs[:, :1].expand_as(theirs))


def test_matches_captum_on_two_inputs_with_a_forward_argument():
    model = TwoInputNet(seed=2)
    image, vector = inputs_for((2, 4, 4), 3, 0), inputs_for((4,), 3, 1)
    gain = torch.tensor([1.0, -2.0, 0.5])
    ours = Occlusion(model).attribute(
        (image, vector), 1, window=((2, 2), (2,)), stride=(1, (1,)), baselines=(0.0, 0.3), additional_forward_args=gain
    )
    theirs = CaptumOcclusion(model).attribute(
        (image, vector),
        sliding_window_shapes=((2, 2, 2), (2,)),
        strides=((1, 1, 1), (1,)),
        baselines=(0.0, 0.3),
        target=1,
        additional_forward_args=(gain,),
    )
    assert isinstance(ours, tuple) and ours[0].shape == (3, 1, 4, 4) and ours[1].shape == (3, 4)
    assert_close_rel(ours[0], theirs[0][:, :1])
    assert_close_rel(ours[1], theirs[1])


def test_one_input_in_a_tuple_takes_captums_per_input_form():
    model = PooledConv()
    x = inputs_for((3, 7, 10), 2, 0)
    plain = Occlusion(model).attribute(x, 1, window=(3, 3), stride=2)
    nested = Occlusion(model).attribute((x,), 1, window=((3, 3, 3),), stride=((1, 2, 2),))
    assert isinstance(nested, tuple) and len(nested) == 1
    torch.testing.assert_close(nested[0], plain, rtol=0, atol=0)


def test_default_blur_sigma_is_half_the_window():
    model = build(Spec(2, 8, (3,), (False,), (), 4, ("module",), 0))
    x = inputs_for((2, 8, 8), 2, 0)
    ours = Occlusion(model).attribute(x, 2, window=(3, 5), stride=2, baselines="blur")
    explicit = Occlusion(model).attribute(x, 2, window=(3, 5), stride=2, baselines=gaussian_blur(x, 2.5))
    torch.testing.assert_close(ours, explicit, rtol=0, atol=0)


@settings(max_examples=10)
@given(spec=specs(), n=st.integers(2, 4), data=st.data())
def test_batch_equivariant_and_independent_of_batch_size(spec, n, data):
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed)
    target = torch.tensor(data.draw(st.lists(st.integers(0, spec.classes - 1), min_size=n, max_size=n)))
    window = data.draw(st.integers(1, spec.size))
    options = {"window": window, "stride": data.draw(st.integers(1, window))}
    occlusion = Occlusion(model)
    assert_batch_invariant(occlusion.attribute, x, target, (1, 7, "auto"), spec.seed, **options)


def test_top1_target_and_k_targets_come_from_the_same_passes():
    calls = []
    model = build(Spec(3, 6, (4,), (True,), (), 5, ("module",), 0))
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    x = inputs_for((3, 6, 6), 2, 0)
    predicted = model(x).argmax(1)
    calls.clear()
    occlusion = Occlusion(model)
    many = occlusion.attribute(x, torch.stack([predicted, (predicted + 1) % 5], 1), window=3, stride=3, batch_size=3)
    assert sum(calls) == (1 + 4) * 2 and max(calls) <= 3  # the clean rows, then 4 windows, for 2 examples
    top1 = occlusion.attribute(x, window=3, stride=3)
    torch.testing.assert_close(many[:, 0], top1)


@settings(max_examples=8)
@given(spec=specs(), fail_at=st.integers(0, 4), n=st.integers(1, 3))
def test_state_restored_after_success_and_injected_failure(spec, fail_at, n):
    inner = build(spec)
    model = nn.Sequential(inner[0], Tripwire(fail_at), *list(inner)[1:])
    untidy(model, spec.seed)
    x = inputs_for(spec.input_shape, n, spec.seed)
    before = snapshot(model, (x,))
    try:
        Occlusion(model).attribute(x, target=0, window=2, batch_size=2)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    else:
        assert fail_at == 0 or model[1].calls < fail_at
    assert_same(before, snapshot(model, (x,)))


def test_batch_norm_model_and_global_rng_untouched():
    model = ResidualBNNet(seed=1).train()
    x = inputs_for((3, 6, 6), 2, 0)
    before = snapshot(model, (x,))
    rng = torch.get_rng_state()
    maps = Occlusion(model).attribute(x, 1, window=(2, 3), stride=(1, 2), baselines=x.mean())
    assert maps.shape == (2, 1, 6, 6) and bool(torch.isfinite(maps).all())
    assert torch.equal(rng, torch.get_rng_state())
    assert_same(before, snapshot(model, (x,)))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"window": 7}, "does not fit"),
        ({"window": (4, 2, 2)}, "does not fit"),
        ({"window": 0}, "does not fit"),
        ({"window": 3, "stride": 0}, "stride must be positive"),
        ({"window": 2, "stride": 3}, "larger than window"),
        ({"window": (2, 2, 2, 2)}, "window must be an int or a tuple"),
        ({"window": 2.5}, "window must be an int or a tuple"),
        ({"window": 2, "stride": (1,)}, "stride must be an int or a tuple"),
        ({"window": 2, "baselines": "noise"}, "baselines must be a number, a tensor or 'blur'"),
        ({"window": 2, "batch_size": 0}, "batch_size"),
    ],
)
def test_clear_errors(options, message):
    model = build(Spec(3, 6, (), (), (), 4, ("module",), 0))
    with pytest.raises(ValueError, match=message):
        Occlusion(model).attribute(inputs_for((3, 6, 6), 2, 0), 0, **options)


def test_clear_errors_for_vectors_and_tuples():
    with pytest.raises(ValueError, match="needs images"):
        Occlusion(nn.Linear(6, 2)).attribute(inputs_for((6,), 2, 0), 0, window=2, baselines="blur")
    model = TwoInputNet()
    pair = (inputs_for((2, 4, 4), 2, 0), inputs_for((4,), 2, 1))
    with pytest.raises(ValueError, match="one entry per input"):
        Occlusion(model).attribute(pair, 0, window=(2, 2, 2))
    with pytest.raises(ValueError, match=r"window\[1\]"):
        Occlusion(model).attribute(pair, 0, window=(2, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is absent on this machine")
def test_cuda_matches_cpu():
    model = ResidualBNNet(seed=1).double()
    x = inputs_for((3, 6, 6), 3, 1, torch.float64)
    options = {"window": (2, 3), "stride": (1, 2), "baselines": "blur", "batch_size": 7}
    cpu = Occlusion(model).attribute(x, [0, 2, 4], **options)
    gpu = Occlusion(model.cuda()).attribute(x.cuda(), torch.tensor([0, 2, 4], device="cuda"), **options)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
