"""RISE and its masks: float64 references, TorchRay's rise on the same masks, properties, memory, state."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchray.attribution.rise import rise as torchray_rise

from attrib.methods.rise import RISE
from attrib.perturb.rise_masks import RiseMasks

from .models import ResidualBNNet, Spec, assert_batch_invariant, build, inputs_for, reinitialise, specs
from .reference import as_float64
from .test_differential import assert_close_rel
from .test_state import Tripwire, assert_same, snapshot, untidy

# --- masks -----------------------------------------------------------------------------


def reference_masks(masks: RiseMasks) -> torch.Tensor:
    """Each mask on its own, the textbook way, in float64: pad the grid by one replicated cell,
    upsample it with F.interpolate to whole cells, crop the image at the mask's shift."""
    (height, width), (ch, cw), cells = masks.size, masks.cell, masks.num_cells
    out = []
    for bits, (dy, dx) in zip(masks.bits, masks.shifts.tolist()):
        grid = F.pad(bits.double()[None, None], (1, 1, 1, 1), mode="replicate")
        up = F.interpolate(grid, size=((cells + 2) * ch, (cells + 2) * cw), mode="bilinear", align_corners=False)
        top, left = dy + ch // 2, dx + cw // 2
        out.append(up[0, :, top : top + height, left : left + width])
    return torch.stack(out)


@settings(max_examples=10)
@given(
    num_masks=st.integers(1, 40),
    height=st.integers(1, 19),
    width=st.integers(1, 19),
    num_cells=st.integers(1, 8),
    p=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_masks_match_the_textbook_construction_in_any_chunking(num_masks, height, width, num_cells, p, seed, data):
    masks = RiseMasks(num_masks, (height, width), num_cells=num_cells, p=p, seed=seed)
    whole = masks.chunk(0, num_masks, dtype=torch.float64)
    assert whole.shape == (num_masks, 1, height, width)
    torch.testing.assert_close(whole, reference_masks(masks), rtol=0, atol=1e-12)
    assert bool((whole >= 0).all()) and bool((whole <= 1).all())
    assert bool((masks.shifts >= 0).all()) and bool((masks.shifts < torch.tensor(masks.cell)).all())
    start = data.draw(st.integers(0, num_masks))
    stop = data.draw(st.integers(start, num_masks))
    assert torch.equal(masks.chunk(start, stop, dtype=torch.float64), whole[start:stop])
    index = torch.tensor(data.draw(st.lists(st.integers(0, num_masks - 1), max_size=10)), dtype=torch.long)
    assert torch.equal(masks.rows(index, dtype=torch.float64), whole[index])
    # The first m masks of a larger set are the masks of the smaller set.
    longer = RiseMasks(num_masks + 5, (height, width), num_cells=num_cells, p=p, seed=seed)
    assert torch.equal(longer.chunk(0, num_masks, dtype=torch.float64), whole)


def test_masks_keep_each_pixel_with_probability_p():
    masks = RiseMasks(4000, (21, 16), num_cells=5, p=0.3, seed=0)
    mean = masks.chunk(0, 4000).mean(0)
    bound = 5 * (0.3 * 0.7 / 4000) ** 0.5  # five standard deviations of a mean of [0, 1] values
    assert float((mean - 0.3).abs().max()) < bound
    assert 0.25 < float(masks.bits.float().mean()) < 0.35


def test_masks_are_a_module_with_their_randomness_in_buffers():
    masks = RiseMasks(10, 8, seed=0)
    assert dict(masks.named_buffers()).keys() == {"bits", "shifts"}
    assert len(masks) == 10 and masks.bits.shape == (10, 7, 7) and masks.shifts.shape == (10, 2)
    assert torch.equal(masks(torch.tensor([3, 1])), torch.cat([masks.chunk(3, 4), masks.chunk(1, 2)]))
    assert "num_masks=10" in repr(masks)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_masks": 0, "size": 8}, "num_masks"),
        ({"num_masks": 3, "size": (8,)}, "size"),
        ({"num_masks": 3, "size": 8, "num_cells": 0}, "num_cells"),
        ({"num_masks": 3, "size": 8, "p": 0.0}, "p"),
        ({"num_masks": 3, "size": 8, "p": 1.5}, "p"),
    ],
)
def test_mask_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RiseMasks(**kwargs)
    with pytest.raises(ValueError, match="chunk"):
        RiseMasks(3, 8, seed=0).chunk(2, 4)


# --- RISE against a float64 reference and TorchRay -------------------------------------

SCORE_FNS = {"softmax": lambda out: out.softmax(1), "sigmoid": torch.sigmoid, "logits": lambda out: out}


def reference(model, x, targets, score, rise_masks):
    """Mask by mask and image by image, in float64, from the formula E[S(x * M) M] / p."""
    m = as_float64(model)
    masks, num_masks, p = reference_masks(rise_masks), len(rise_masks), rise_masks.p
    out = torch.zeros(len(x), len(targets[0]), 1, *x.shape[2:], dtype=torch.float64)
    with torch.no_grad():
        for mask in masks:
            for i, xi in enumerate(x.double()):
                s = SCORE_FNS[score](m((xi * mask).unsqueeze(0)))[0]
                for k, t in enumerate(targets[i]):
                    out[i, k] += s[t] * mask
    return out / (num_masks * p)


class PooledConv(nn.Module):
    """A conv, a ReLU, adaptive pooling and a linear head: any (C, H, W) image, H != W included."""

    def __init__(self, channels: int, classes: int, seed: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(),
            nn.Linear(18, classes),
        )
        reinitialise(self, seed, scale=1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@settings(max_examples=8)
@given(
    height=st.integers(3, 9),
    width=st.integers(3, 9),
    n=st.integers(1, 3),
    k=st.integers(1, 2),
    score=st.sampled_from(sorted(SCORE_FNS)),
    num_cells=st.integers(1, 4),
    p=st.sampled_from([0.5, 0.2, 0.8]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_matches_a_float64_reference(height, width, n, k, score, num_cells, p, seed, data):
    model = PooledConv(2, 4, seed).double()
    x = inputs_for((2, height, width), n, seed, torch.float64)
    targets = [data.draw(st.lists(st.integers(0, 3), min_size=k, max_size=k)) for _ in range(n)]
    options = {"num_masks": 16, "num_cells": num_cells, "p": p, "score": score, "seed": seed}
    # 7 rows a block: blocks start and end part-way through a mask's N rows.
    ours = RISE(model).attribute(x, torch.tensor(targets), batch_size=7, **options)
    expected = reference(model, x, targets, score, RiseMasks(16, (height, width), num_cells=num_cells, p=p, seed=seed))
    assert ours.shape == (n, k, 1, height, width)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    single = RISE(model).attribute(x, [t[0] for t in targets], batch_size=5, **options)
    assert single.shape == (n, 1, height, width)
    torch.testing.assert_close(single, expected[:, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p, num_cells, size", [(0.5, 7, (14, 14)), (0.3, 3, (11, 16))])
def test_matches_torchray_rise_on_the_same_masks(p, num_cells, size):
    model = PooledConv(3, 6, 5)
    x = inputs_for((3, *size), 3, 0)
    ours = RISE(model).attribute(x, "all", num_masks=200, num_cells=num_cells, p=p, score="sigmoid", seed=3)
    masks = RiseMasks(200, size, num_cells=num_cells, p=p, seed=3).chunk(0, 200)
    theirs = torchray_rise(model, x, filter_masks=masks, num_masks=200, batch_size=32, p=p)
    assert ours.shape == (3, 6, 1, *size)
    assert_close_rel(ours[:, :, 0], theirs / p)  # TorchRay leaves out the 1/p


# --- properties ------------------------------------------------------------------------


class Constant(nn.Module):
    """The same logits whatever the input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


@settings(max_examples=8)
@given(
    logits=st.lists(st.floats(-3, 3), min_size=2, max_size=4),
    p=st.sampled_from([0.5, 0.3, 0.7]),
    num_cells=st.integers(2, 7),
    score=st.sampled_from(sorted(SCORE_FNS)),
)
def test_a_constant_model_gets_its_score_everywhere(logits, p, num_cells, score):
    model = Constant(logits)
    x = inputs_for((2, 16, 12), 2, 0)
    maps = RISE(model).attribute(x, "all", num_masks=1500, num_cells=num_cells, p=p, score=score, seed=1)
    value = SCORE_FNS[score](torch.tensor([logits]))[0].view(1, -1, 1, 1, 1)
    coverage = RiseMasks(1500, (16, 12), num_cells=num_cells, p=p, seed=1).chunk(0, 1500).mean(0) / p
    torch.testing.assert_close(maps, (value * coverage).expand(2, -1, -1, -1, -1), rtol=1e-5, atol=1e-6)
    noise = 5 * ((1 - p) / (p * 1500)) ** 0.5  # five standard deviations of coverage
    assert float(((maps - value) / value.abs().clamp_min(1e-6)).abs().max()) < noise


class Region(nn.Module):
    """Class 0 is the sum of the input over one box; class 1 is zero."""

    def __init__(self, top: int, left: int, size: int) -> None:
        super().__init__()
        self.box = (slice(top, top + size), slice(left, left + size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x[:, :, self.box[0], self.box[1]].flatten(1).sum(1)
        return torch.stack([inside, torch.zeros_like(inside)], 1)


@settings(max_examples=6)
@given(top=st.integers(0, 18), left=st.integers(0, 18), size=st.integers(4, 6))
def test_a_model_that_reads_one_region_peaks_in_it(top, left, size):
    maps = RISE(Region(top, left, size)).attribute(
        torch.ones(1, 1, 24, 24), 0, num_masks=800, num_cells=6, score="logits", seed=0, batch_size=256
    )[0, 0]
    inside = torch.zeros(24, 24, dtype=torch.bool)
    inside[top : top + size, left : left + size] = True
    peak = int(maps.argmax())
    assert bool(inside.flatten()[peak])
    assert float(maps[inside].mean()) > float(maps[~inside].mean())


def test_same_seed_same_maps_and_the_global_rng_is_untouched():
    model = build(Spec(3, 8, (4,), (True,), (), 5, ("module",), 0))
    x = inputs_for((3, 8, 8), 2, 0)
    rise = RISE(model)
    rng = torch.get_rng_state()
    first = rise.attribute(x, 1, num_masks=60, seed=4)
    assert torch.equal(rng, torch.get_rng_state())
    assert torch.equal(first, rise.attribute(x, 1, num_masks=60, seed=4))
    assert torch.equal(first, rise.attribute(x, 1, num_masks=60, generator=torch.Generator().manual_seed(4)))
    assert not torch.allclose(first, rise.attribute(x, 1, num_masks=60, seed=5))
    assert not torch.allclose(rise.attribute(x, 1, num_masks=60), rise.attribute(x, 1, num_masks=60))
    assert torch.equal(rng, torch.get_rng_state())


@settings(max_examples=6)
@given(spec=specs(), n=st.integers(2, 4), data=st.data())
def test_batch_equivariant_and_independent_of_batch_size(spec, n, data):
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed)
    target = torch.tensor(data.draw(st.lists(st.integers(0, spec.classes - 1), min_size=n, max_size=n)))
    options = {"num_masks": 30, "num_cells": data.draw(st.integers(1, 5)), "seed": spec.seed}
    rise = RISE(model)
    assert_batch_invariant(rise.attribute, x, target, (2, 13, "auto"), spec.seed, **options)


def test_every_target_comes_from_the_same_forward_passes():
    rows = []
    model = build(Spec(3, 8, (4,), (True,), (), 5, ("module",), 0))
    model.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    x = inputs_for((3, 8, 8), 2, 0)
    every = RISE(model).attribute(x, "all", num_masks=40, seed=0, batch_size=16)
    assert sum(rows) == 40 * 2 and max(rows) <= 16
    one = RISE(model).attribute(x, [3, 1], num_masks=40, seed=0, batch_size=16)
    top1 = RISE(model).attribute(x, num_masks=40, seed=0)
    assert every.shape == (2, 5, 1, 8, 8)
    torch.testing.assert_close(one, every[[0, 1], [3, 1]])
    torch.testing.assert_close(top1, every[torch.arange(2), model(x).argmax(1)])


@settings(max_examples=8)
@given(spec=specs(), fail_at=st.integers(0, 4), n=st.integers(1, 3))
def test_state_restored_after_success_and_injected_failure(spec, fail_at, n):
    inner = build(spec)
    model = nn.Sequential(inner[0], Tripwire(fail_at), *list(inner)[1:])
    untidy(model, spec.seed)
    x = inputs_for(spec.input_shape, n, spec.seed)
    before = snapshot(model, (x,))
    try:
        RISE(model).attribute(x, target=0, num_masks=10, seed=0, batch_size=4)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    else:
        assert fail_at == 0 or model[1].calls < fail_at
    assert_same(before, snapshot(model, (x,)))


def test_train_mode_batch_norm_model_is_restored():
    model = ResidualBNNet(seed=1).train()
    x = inputs_for((3, 6, 6), 2, 0)
    before = snapshot(model, (x,))
    maps = RISE(model).attribute(x, 2, num_masks=20, seed=0)
    assert maps.shape == (2, 1, 6, 6) and bool(torch.isfinite(maps).all())
    assert_same(before, snapshot(model, (x,)))


@pytest.mark.parametrize(
    "inputs, options, error, message",
    [
        (torch.zeros(2, 3, 8), {}, ValueError, r"\(N, C, H, W\)"),
        ((torch.zeros(2, 3, 8, 8),), {}, ValueError, r"\(N, C, H, W\)"),
        (torch.zeros(2, 3, 8, 8), {"score": "probability"}, ValueError, "score must be one of"),
        (torch.zeros(2, 3, 8, 8), {"target": "every"}, ValueError, "'all'"),
        (torch.zeros(2, 3, 8, 8), {"p": 0}, ValueError, "keep probability"),
        (torch.zeros(2, 3, 8, 8), {"num_masks": 0}, ValueError, "num_masks"),
        (torch.zeros(2, 3, 8, 8), {"seed": 1, "generator": torch.Generator()}, ValueError, "either seed or generator"),
    ],
)
def test_clear_errors(inputs, options, error, message):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    options = {"target": 0, **options}
    with pytest.raises(error, match=message):
        RISE(model).attribute(inputs, **options)


def test_softmax_needs_classes():
    with pytest.raises(ValueError, match="score='sigmoid'"):
        RISE(lambda x: x.sum((1, 2, 3))).attribute(torch.ones(1, 1, 4, 4), num_masks=4, seed=0, score="softmax")
    maps = RISE(lambda x: x.sum((1, 2, 3))).attribute(torch.ones(1, 1, 4, 4), num_masks=4, seed=0, score="logits")
    assert maps.shape == (1, 1, 4, 4)
    auto = RISE(lambda x: x.sum((1, 2, 3)))
    torch.testing.assert_close(auto.attribute(torch.ones(1, 1, 4, 4), num_masks=4, seed=0), maps)
    assert auto.chosen_score == "logits"


# --- the score: softmax for single-label, sigmoid for multi-label models, "auto" ----------------


class TwoObjects(nn.Module):
    """A multi-label model: class 0's logit reads the left half of the image, class 1's the right half."""

    def __init__(self, multilabel: bool = True) -> None:
        super().__init__()
        self.attrib_multilabel = multilabel
        self.bias = nn.Parameter(torch.tensor([-2.0, -2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        left, right = x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))
        return 8 * torch.stack([left, right], 1) + self.bias


def test_with_the_sigmoid_a_class_map_ignores_the_other_objects_evidence():
    """On a multi-label model, brightening the right object must not change class 0's map under the sigmoid;
    under the softmax it does (class 0's probability falls wherever the right object is kept)."""
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    brighter = x.clone()
    brighter[..., 4:] += 1.0
    options = {"num_masks": 300, "num_cells": 4, "seed": 0}
    model = TwoObjects()
    for score, same in (("sigmoid", True), ("auto", True), ("softmax", False)):
        a = RISE(model).attribute(x, 0, score=score, **options)
        b = RISE(model).attribute(brighter, 0, score=score, **options)
        assert torch.allclose(a, b) is same, score


@pytest.mark.parametrize(
    ("model", "chosen"),
    [
        (TwoObjects(multilabel=True), "sigmoid"),  # declared multi-label
        (TwoObjects(multilabel=False), "softmax"),  # raw logits, several classes
        (nn.Sequential(TwoObjects(multilabel=False), nn.Softmax(1)), "logits"),  # already probabilities
        (nn.Sequential(TwoObjects(multilabel=False), nn.Sigmoid()), "softmax"),  # undeclared: can't be told
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), "logits"),  # one class: no softmax across classes
    ],
)
def test_auto_score_picks_from_the_model_and_says_so(model, chosen):
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    method = RISE(model)
    assert "score" not in repr(method)
    maps = method.attribute(x, 0, num_masks=20, num_cells=4, seed=0)
    assert method.chosen_score == chosen and f"score={chosen!r}" in repr(method)
    torch.testing.assert_close(maps, RISE(model).attribute(x, 0, num_masks=20, num_cells=4, seed=0, score=chosen))


# --- memory ----------------------------------------------------------------------------

_PEAK = textwrap.dedent(
    """
    import resource, torch
    from torch import nn
    from attrib.methods.rise import RISE
    torch.set_num_threads(1)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 3))
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    RISE(model).attribute(x, 0, num_masks=500, seed=0, batch_size=64)  # warm up: every buffer at full size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    RISE(model).attribute(x, 0, num_masks=8000, seed=0, batch_size=64)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """
)


def test_memory_does_not_grow_with_the_number_of_masks():
    # All 8000 masks at 96 x 96 would take 295 MB (and their masked copies as much again; holding
    # them measures 360 MB here); a block of 64 rows takes 2.4 MB, the accumulation chunk 16 MB,
    # the per-mask random numbers 3 MB; the allocator adds tens of MB of noise (10-40 MB measured).
    done = subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True, timeout=300, check=True)
    growth_kib = int(done.stdout.strip().splitlines()[-1])
    assert growth_kib < 100 * 1024, growth_kib


class Gained(nn.Module):
    """A linear classifier whose logits are scaled by a per-example gain passed after the input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = build(Spec(2, 6, (), (), (), 3, ("module",), 0))

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * gain.view(-1, 1)


def test_additional_forward_args_follow_their_examples():
    x = inputs_for((2, 6, 6), 2, 0)
    options = {"num_masks": 40, "score": "logits", "seed": 0, "batch_size": 7}
    plain = RISE(Gained()).attribute(x, [0, 2], additional_forward_args=torch.ones(2), **options)
    gained = RISE(Gained()).attribute(x, [0, 2], additional_forward_args=torch.tensor([3.0, -2.0]), **options)
    torch.testing.assert_close(gained, plain * torch.tensor([3.0, -2.0]).view(2, 1, 1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is absent on this machine")
def test_cuda_masks_live_on_the_device_and_match_the_formula():
    model = ResidualBNNet(seed=1).double().cuda()
    x = inputs_for((3, 6, 6), 2, 1, torch.float64).cuda()
    masks = RiseMasks(25, (6, 6), num_cells=3, seed=0, device="cuda")
    assert masks.bits.device.type == "cuda"
    torch.testing.assert_close(masks.chunk(0, 25, dtype=torch.float64).cpu(), reference_masks(masks.cpu()))
    gpu = RISE(model).attribute(x, [1, 2], num_masks=25, num_cells=3, seed=0, batch_size=7)
    assert gpu.device.type == "cuda" and gpu.shape == (2, 1, 6, 6)
    expected = reference(model.cpu(), x.cpu(), [[1], [2]], "softmax", masks.cpu())
    torch.testing.assert_close(gpu.cpu(), expected[:, 0])
