"""Deletion and Insertion: hand-computed AUCs, a float64 reference, orderings, batching, NaN, state."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.metrics.deletion import Deletion, Insertion
from attrib.perturb.blur import gaussian_blur

from .models import ResidualBNNet, Spec, build, inputs_for, reinitialise


def weighted_sum(weights: list[float]) -> nn.Module:
    """``(N, 1, H, W) -> (N, 1)``: the weighted sum of the pixels."""
    linear = nn.Linear(len(weights), 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([weights]))
    return nn.Sequential(nn.Flatten(), linear).eval()


def test_auc_of_a_known_curve():
    # Four unit pixels weighted 4, 3, 2, 1 and the map equal to the weights: deleting one pixel per step
    # scores 10, 6, 3, 1, 0; inserting from zeros scores 0, 4, 7, 9, 10.
    model = weighted_sum([4.0, 3.0, 2.0, 1.0])
    x = torch.ones(1, 1, 2, 2)
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    deletion = Deletion(model, x, 0, steps=4, score="logit")
    fractions, curve = deletion.curve(maps)
    assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]
    assert deletion(maps).tolist() == [0.25 * (8 + 4.5 + 2 + 0.5)]  # 3.75
    insertion = Insertion(model, x, 0, steps=4, score="logit", baseline="zero")
    assert insertion.curve(maps)[1].tolist() == [[0.0, 4.0, 7.0, 9.0, 10.0]]
    assert insertion(maps).tolist() == [0.25 * (2 + 5.5 + 8 + 9.5)]  # 6.25
    assert not deletion.higher_is_better and insertion.higher_is_better


def test_uneven_steps_use_the_true_fractions():
    # 4 pixels, 3 steps: floor(s * 4 / 3) = 0, 1, 2, 4 pixels deleted.
    model = weighted_sum([4.0, 3.0, 2.0, 1.0])
    x = torch.ones(1, 1, 2, 2)
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    fractions, curve = Deletion(model, x, 0, steps=3, score="logit").curve(maps)
    assert fractions.tolist() == [0.0, 0.25, 0.5, 1.0]
    assert curve.tolist() == [[10.0, 6.0, 3.0, 0.0]]
    auc = Deletion(model, x, 0, steps=3, score="logit")(maps)
    assert math.isclose(float(auc), 0.25 * 8 + 0.25 * 4.5 + 0.5 * 1.5)


def test_non_square_images_are_read_in_raster_order():
    # A 2 x 3 image weighted 1..6 in raster order; the map ranks the pixels (row 1, col 2), (0, 0), (1, 0), ...
    # Reading the map transposed (or the pixels column-major) gives another curve.
    model = weighted_sum([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    x = torch.ones(1, 1, 2, 3)
    maps = torch.tensor([[[5.0, 1.0, 2.0], [4.0, 0.0, 6.0]]])  # order: 6 (w=6), 5 (w=1), 4 (w=4), 2 (w=3), 1, 0
    _, curve = Deletion(model, x, 0, steps=6, score="logit").curve(maps)
    assert curve.tolist() == [[21.0, 15.0, 14.0, 10.0, 7.0, 5.0, 0.0]]
    # A coarser non-square map (1 x 3 -> 2 x 3: each column's value on both rows), ties in raster order.
    coarse = torch.tensor([[[1.0, 3.0, 2.0]]])
    _, curve = Deletion(model, x, 0, steps=6, score="logit").curve(coarse)
    assert curve.tolist() == [[21.0, 19.0, 14.0, 11.0, 5.0, 4.0, 0.0]]


class RowCounter(nn.Module):
    """Records the most rows the wrapped model saw in one forward pass; optionally fails on big blocks."""

    def __init__(self, inner: nn.Module, oom_above: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.oom_above = oom_above
        self.most = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        self.most = max(self.most, x.shape[0])
        return self.inner(x)


@pytest.mark.parametrize("cls", [Deletion, Insertion])
def test_memory_bounded_by_batch_size_and_auto_recovers_from_out_of_memory(cls):
    model, x = conv_case()
    maps = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    reference = cls(model, x, 1, steps=40, batch_size=None)(maps)
    counter = RowCounter(model)
    default = cls(counter, x, 1, steps=40)(maps)  # 164 rows, at most 64 (the default) per forward pass
    assert counter.most == 64
    failing = RowCounter(model, oom_above=24)
    auto = cls(failing, x, 1, steps=40, batch_size="auto")(maps)
    assert failing.most <= 24
    torch.testing.assert_close(default, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(auto, reference, rtol=1e-6, atol=1e-7)


def reference_curve(model, x, baseline, maps, steps, insert, target, softmax):
    """Float64, one image at a time, pixel by pixel, from the definition."""
    n, _, height, width = x.shape
    pixels = height * width
    saliency = F.interpolate(maps.double(), size=(height, width), mode="bilinear", align_corners=False)
    curves = []
    for i in range(n):
        values = saliency[i, 0].flatten().tolist()
        order = sorted(range(pixels), key=lambda p: (-values[p], p))
        row = []
        for s in range(steps + 1):
            k = (s * pixels) // steps
            changed = torch.zeros(pixels, dtype=torch.bool)
            changed[order[:k]] = True
            start, finish = (baseline[i], x[i]) if insert else (x[i], baseline[i])
            image = torch.where(changed.view(height, width), finish, start)
            out = model(image.unsqueeze(0))[0]
            row.append(float((out.softmax(0) if softmax else out)[target[i]]))
        curves.append(row)
    return torch.tensor(curves, dtype=torch.float64)


@settings(max_examples=4)
@given(
    insert=st.booleans(),
    softmax=st.booleans(),
    steps=st.integers(1, 12),
    map_size=st.sampled_from([(3, 4), (5, 7), (7, 5)]),
    seed=st.integers(0, 2**16),
)
def test_curve_matches_the_float64_reference(insert, softmax, steps, map_size, seed):
    model = reinitialise(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(105, 3)), seed)
    model = model.double().eval()
    x = inputs_for((2, 5, 7), 3, seed, dtype=torch.float64)  # non-square: a row/column mix-up changes the curve
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(3, 1, *map_size, generator=g, dtype=torch.float64)
    maps[0, 0, :2, :2] = 0.5  # a tie
    target = torch.randint(0, 3, (3,), generator=g)
    cls = Insertion if insert else Deletion
    score = "softmax" if softmax else "logit"
    metric = cls(model, x, target, steps=steps, baseline="blur", blur_sigma=1.5, score=score)
    _, ours = metric.curve(maps)
    baseline = gaussian_blur(x, 1.5)
    with torch.no_grad():
        theirs = reference_curve(model, x, baseline, maps, steps, insert, target, softmax)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    auc = metric(maps)
    expected = [
        sum((b - a) * (u + v) / 2 for a, b, u, v in zip(fr[:-1], fr[1:], row[:-1], row[1:]))
        for fr, row in [(metric.curve(maps)[0].tolist(), r) for r in theirs.tolist()]
    ]
    torch.testing.assert_close(auc, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def linear_classifier(seed: int) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(2 * 8 * 8, 4)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g))
        linear.bias.copy_(torch.randn(4, generator=g))
    x = torch.randn(5, 2, 8, 8, generator=g)
    return nn.Sequential(nn.Flatten(), linear).eval(), x


@settings(max_examples=5)
@given(seed=st.integers(0, 2**16))
def test_perfect_ordering_beats_a_random_one_on_a_linear_model(seed):
    model, x = linear_classifier(seed)
    target = torch.arange(5) % 4
    weights = model[1].weight.detach()[target].view(5, 2, 8, 8)
    contribution = (weights * x).sum(1)  # each pixel's share of the target logit (zero baseline)
    random_maps = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    deletion = Deletion(model, x, target, steps=64, score="logit")
    insertion = Insertion(model, x, target, steps=64, score="logit", baseline="zero")
    assert bool((deletion(contribution) < deletion(random_maps)).all())
    assert bool((insertion(contribution) > insertion(random_maps)).all())
    # ... and the reversed ordering is the worst of the three.
    assert bool((deletion(-contribution) > deletion(random_maps)).all())


def conv_case(n: int = 4, seed: int = 0):
    spec = Spec(3, 8, (4,), (True,), (6,), 5, ("module_inplace",), seed)
    return build(spec), inputs_for(spec.input_shape, n, seed)


@pytest.mark.parametrize("cls", [Deletion, Insertion])
def test_independent_of_batch_size(cls):
    model, x = conv_case()
    maps = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    metric = {b: cls(model, x, None, steps=9, batch_size=b) for b in (None, 1, 7, "auto")}
    reference = metric[None](maps)
    for b in (1, 7, "auto"):
        torch.testing.assert_close(metric[b](maps), reference, rtol=1e-6, atol=1e-7)


def test_ties_go_in_raster_order():
    model, x = conv_case()
    constant = torch.ones(4, 8, 8)
    ramp = -torch.arange(64.0).view(1, 8, 8).expand(4, 8, 8)  # strictly decreasing in raster order
    for cls in (Deletion, Insertion):
        metric = cls(model, x, 1, steps=16)
        assert torch.equal(metric.curve(constant)[1], metric.curve(ramp)[1])


def test_nan_map_scores_nan_without_touching_the_others():
    model, x = conv_case()
    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(2))
    clean = Deletion(model, x, 2, steps=8)(maps)
    maps[1, 3, 3] = float("nan")
    scores = Deletion(model, x, 2, steps=8)(maps)
    assert math.isnan(float(scores[1]))
    torch.testing.assert_close(scores[[0, 2, 3]], clean[[0, 2, 3]])


def test_baselines_and_softmax_scores():
    model, x = conv_case()
    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probs = model(x).softmax(1)
        blurred = model(gaussian_blur(x, 0.05 * 8)).softmax(1)
    top = probs.argmax(1)
    _, curve = Deletion(model, x, steps=4).curve(maps)
    torch.testing.assert_close(curve[:, 0], probs[torch.arange(4), top])  # the clean image, the top-1 class
    torch.testing.assert_close(curve[:, -1], model(torch.zeros_like(x)).softmax(1)[torch.arange(4), top].detach())
    _, curve = Insertion(model, x, steps=4).curve(maps)  # default: from the blurred image
    torch.testing.assert_close(curve[:, 0], blurred[torch.arange(4), top])
    _, curve = Deletion(model, x, steps=4, baseline=0.5).curve(maps)
    torch.testing.assert_close(curve[:, -1], model(torch.full_like(x, 0.5)).softmax(1)[torch.arange(4), top].detach())
    per_pixel = torch.linspace(-1, 1, 8).view(1, 1, 1, 8)
    _, curve = Deletion(model, x, steps=4, baseline=per_pixel).curve(maps)
    torch.testing.assert_close(curve[:, -1], model(per_pixel.expand_as(x)).softmax(1)[torch.arange(4), top].detach())


def test_model_state_and_global_rng_are_untouched():
    model = ResidualBNNet(channels=3).train()
    model.stem[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    x = inputs_for((3, 8, 8), 3, 0)
    rng = torch.get_rng_state()
    scores = Insertion(model, x, 1, steps=5, batch_size=4)(torch.rand(3, 8, 8, generator=torch.Generator()))
    assert scores.shape == (3,)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class FailOnCall(nn.Module):
    def __init__(self, inner: nn.Module, fail_at: int) -> None:
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        return self.inner(x)


def test_state_restored_on_error():
    model = FailOnCall(ResidualBNNet(channels=3), fail_at=3).train()
    flags = [p.requires_grad for p in model.parameters()]
    x = inputs_for((3, 8, 8), 3, 0)
    with pytest.raises(RuntimeError, match="injected"):
        Deletion(model, x, 0, steps=8, batch_size=4)(torch.rand(3, 8, 8, generator=torch.Generator()))
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags


def test_bad_arguments():
    model, x = conv_case()
    with pytest.raises(ValueError, match="N, C, H, W"):
        Deletion(model, x.flatten(1), 0)
    with pytest.raises(ValueError, match="steps"):
        Deletion(model, x, 0, steps=0)
    with pytest.raises(ValueError, match="steps"):
        Deletion(model, x, 0, steps=True)
    with pytest.raises(ValueError, match="blur_sigma"):
        Insertion(model, x, 0, blur_sigma=-1.0)
    with pytest.raises(TypeError, match="baseline"):
        Deletion(model, x, 0, baseline=[0.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="maps"):
        Deletion(model, x, 0)([[0.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score"):
        Deletion(model, x, 0, score="probability")
    with pytest.raises(ValueError, match="baseline"):
        Deletion(model, x, 0, baseline="noise")
    with pytest.raises(ValueError, match="broadcast"):
        Deletion(model, x, 0, baseline=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        Deletion(model, x, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        Deletion(model, x, 0, batch_size=0)
    with pytest.raises(ValueError, match="ReduceChannels"):
        Deletion(model, x, 0)(torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match="one row per example"):
        Deletion(model, x, 0)(torch.rand(2, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    from attrib.metrics.pointing_game import PointingGame

    model, x = conv_case()
    maps = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    masks = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(2)) < 0.2
    for cls in (Deletion, Insertion):
        cpu = cls(model, x, 1, steps=9)(maps)
        gpu = cls(copy.deepcopy(model).cuda(), x.cuda(), 1, steps=9, batch_size=7)(maps.cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    hits = PointingGame(masks, tolerance=2)(maps)
    assert torch.equal(PointingGame(masks.cuda(), tolerance=2)(maps.cuda()).cpu(), hits)
    on_maps_device = PointingGame(masks, tolerance=2)(maps.cuda())  # CPU masks: scored on the maps' device
    assert on_maps_device.device.type == "cuda" and torch.equal(on_maps_device.cpu(), hits)
