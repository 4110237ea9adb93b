"""The standalone perturbation modules: blur, pyramid, mask generator, rewards (formulas, properties, TorchRay)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchray.attribution.extremal_perturbation import MaskGenerator as TorchRayMaskGenerator
from torchray.attribution.extremal_perturbation import Perturbation as TorchRayPerturbation
from torchray.attribution.extremal_perturbation import contrastive_reward as torchray_contrastive
from torchray.attribution.extremal_perturbation import simple_reward as torchray_simple
from torchray.utils import imsmooth

from attrib.perturb.blur import gaussian_blur
from attrib.perturb.mask_generator import MaskGenerator
from attrib.perturb.pyramid import Perturbation
from attrib.perturb.rewards import area_penalty, area_thresholds, contrastive_reward, simple_reward

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")  # inside TorchRay's MaskGenerator


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """``max |a - e| <= rtol * max |e|`` (relative to the tensor's scale, as the peers' comparisons)."""
    scale = float(expected.abs().max()) or 1.0
    error = float((actual.double() - expected.double()).abs().max())
    assert error <= rtol * scale, f"max error {error:.3g} > {rtol:g} x scale {scale:.3g}"


images = st.builds(
    lambda n, c, h, w, seed: rand(n, c, h, w, seed=seed, dtype=torch.float64),
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(3, 14),
    st.integers(3, 14),
    st.integers(0, 2**16),
)


# gaussian_blur -------------------------------------------------------------------------------


def reference_blur(x: torch.Tensor, sigma: float, padding: str) -> torch.Tensor:
    """The full 2-D kernel (outer product of the normalised 1-D taps), pixel by pixel, in float64."""
    if sigma == 0:
        return x.clone()
    r = math.ceil(4 * sigma)
    taps = torch.tensor([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-r, r + 1)], dtype=torch.float64)
    taps = taps / taps.sum()
    mode = "constant" if padding == "zeros" else padding
    padded = F.pad(x.double(), (r, r, r, r), mode=mode)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            out += taps[i] * taps[j] * padded[..., i : i + x.shape[-2], j : j + x.shape[-1]]
    return out


@given(x=images, sigma=st.floats(0.0, 3.0), padding=st.sampled_from(["zeros", "replicate"]))
def test_blur_matches_its_formula_and_torchray(x, sigma, padding):
    out = gaussian_blur(x, sigma, padding=padding)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, reference_blur(x, sigma, padding))
    theirs = imsmooth(x.float(), sigma, padding_mode="constant" if padding == "zeros" else padding)
    assert_relative(gaussian_blur(x.float(), sigma, padding=padding), theirs)


@given(x=images, sigma=st.floats(0.1, 3.0))
def test_blur_keeps_constants_sums_and_accepts_unbatched_images(x, sigma):
    constant = torch.full_like(x, 0.7)
    torch.testing.assert_close(gaussian_blur(constant, sigma), constant)
    torch.testing.assert_close(gaussian_blur(x, 0.0), x)
    torch.testing.assert_close(gaussian_blur(x[0], sigma), gaussian_blur(x, sigma)[0])
    # With zero padding mass only leaks out at the borders: inside a zero frame it is conserved.
    r = math.ceil(4 * sigma)
    framed = F.pad(x, (r, r, r, r))
    torch.testing.assert_close(gaussian_blur(framed, sigma, padding="zeros").sum((-1, -2)), framed.sum((-1, -2)))


def test_blur_per_image_sigma_equals_separate_calls_and_is_differentiable():
    x = rand(3, 2, 7, 6, dtype=torch.float64).requires_grad_(True)
    sigmas = torch.tensor([0.0, 1.5, 4.0])
    out = gaussian_blur(x, sigmas, padding="zeros")
    for i, s in enumerate(sigmas.tolist()):
        torch.testing.assert_close(out[i], gaussian_blur(x[i : i + 1], s, padding="zeros")[0])
    small = x[:2, :1, :5, :4]
    assert torch.autograd.gradcheck(lambda t: gaussian_blur(t, 0.8, padding="replicate"), (small,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_blur(t, torch.tensor([0.3, 0.6])), (small,), fast_mode=True)


def test_blur_rejects_bad_arguments():
    x = rand(1, 1, 5, 5)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="sigma"):
        gaussian_blur(x, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="padding"):
        gaussian_blur(x, 1.0, padding="circular")
    with pytest.raises(ValueError, match="images"):
        gaussian_blur(torch.ones(5, dtype=torch.long), 1.0)


# Perturbation ---------------------------------------------------------------------------------


def reference_levels(x: torch.Tensor, num_levels: int, max_blur: float, kind: str) -> torch.Tensor:
    """``(N, L, C, H, W)`` levels from the formulas, in float64."""
    levels = []
    for level in range(num_levels):
        t = level / (num_levels - 1)
        levels.append(reference_blur(x, max_blur * (1 - t), "zeros") if kind == "blur" else x.double() * t)
    return torch.stack(levels, 1)


def reference_apply(levels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_l max(0, 1 - |m (L-1) - l|) y_l``: the piecewise-linear interpolation through the levels."""
    num_levels = levels.shape[1]
    w = mask.double() * (num_levels - 1)  # (N, K, 1, H, W)
    grid = torch.arange(num_levels, dtype=torch.float64).view(1, 1, -1, 1, 1, 1)
    hat = (1 - (w.unsqueeze(2) - grid).abs()).clamp(min=0)  # (N, K, L, 1, H, W)
    return (hat * levels.unsqueeze(1)).sum(2)


@settings(max_examples=15)
@given(
    x=images,
    k=st.integers(1, 3),
    num_levels=st.integers(2, 6),
    max_blur=st.floats(0.5, 4.0),
    kind=st.sampled_from(["blur", "fade"]),
    seed=st.integers(0, 2**16),
)
def test_pyramid_and_blend_match_their_formulas(x, k, num_levels, max_blur, kind, seed):
    perturbation = Perturbation(x, num_levels=num_levels, max_blur=max_blur, kind=kind)
    levels = reference_levels(x, num_levels, max_blur, kind)
    torch.testing.assert_close(perturbation.pyramid, levels)
    mask = rand(x.shape[0], k, 1, *x.shape[2:], seed=seed, dtype=torch.float64)
    mask[:, 0] = 1.0
    out = perturbation.apply(mask)
    assert out.shape == (x.shape[0], k, *x.shape[1:])
    torch.testing.assert_close(out, reference_apply(levels, mask))
    # apply(ones) is the input, apply(zeros) the most perturbed level.
    torch.testing.assert_close(out[:, 0], x)
    torch.testing.assert_close(perturbation.apply(torch.zeros_like(mask))[:, 0], levels[:, 0])
    # One image at a time with (K, 1, H, W) masks gives the same rows.
    single = Perturbation(x[:1], num_levels=num_levels, max_blur=max_blur, kind=kind)
    torch.testing.assert_close(single.apply(mask[0]), out[0])


@given(x=images, seed=st.integers(0, 2**16))
def test_fade_is_monotone_in_the_mask_and_linear(x, seed):
    perturbation = Perturbation(x, kind="fade", num_levels=5)
    low = rand(x.shape[0], 2, 1, *x.shape[2:], seed=seed, dtype=torch.float64)
    high = (low + rand(*low.shape, seed=seed + 1, dtype=torch.float64)).clamp(max=1)
    out_low, out_high = perturbation.apply(low), perturbation.apply(high)
    assert bool((out_high >= out_low - 1e-12).all())  # x >= 0: more mask keeps more of it
    torch.testing.assert_close(out_low, x.unsqueeze(1) * low)


def test_gradients_reach_the_mask():
    x = rand(2, 3, 9, 8, dtype=torch.float64)
    perturbation = Perturbation(x, num_levels=4, max_blur=2.0)
    mask = (0.05 + 0.9 * rand(2, 2, 1, 9, 8, seed=3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(perturbation.apply, (mask,))
    (grad,) = torch.autograd.grad(perturbation.apply(mask).square().sum(), mask)
    assert bool((grad != 0).any())
    # At a fully kept pixel the gradient is the slope of the top segment, not 0.
    top = torch.ones(1, 1, 1, 9, 8, dtype=torch.float64, requires_grad=True)
    one = Perturbation(x[:1], num_levels=4, max_blur=2.0)
    (grad,) = torch.autograd.grad(one.apply(top).sum(), top)
    expected = ((one.pyramid[:, -1] - one.pyramid[:, -2]) * 3).sum(1)
    torch.testing.assert_close(grad[0, 0, 0], expected[0])


def test_custom_perturbations_plug_in():
    x = rand(2, 3, 7, 6, dtype=torch.float64)
    mask = rand(2, 3, 1, 7, 6, seed=1, dtype=torch.float64)
    mean = x.mean((2, 3), keepdim=True)
    by_mean = Perturbation(x, kind=mean, num_levels=3).apply(mask)
    torch.testing.assert_close(by_mean, mean.unsqueeze(1) + mask * (x - mean).unsqueeze(1))
    by_zeros = Perturbation(x, kind=torch.zeros(()), num_levels=6).apply(mask)
    torch.testing.assert_close(by_zeros, Perturbation(x, kind="fade", num_levels=6).apply(mask))
    as_callable = Perturbation(x, kind=lambda image, s: gaussian_blur(image, 3 * s, padding="zeros"), max_blur=3)
    torch.testing.assert_close(as_callable.pyramid, Perturbation(x, max_blur=3).pyramid)
    with pytest.raises(ValueError, match="shape"):
        Perturbation(x, kind=lambda image, s: image[:, :1])
    with pytest.raises(ValueError, match="broadcast"):
        Perturbation(x, kind=torch.zeros(5))
    with pytest.raises(ValueError, match="kind"):
        Perturbation(x, kind="noise")
    with pytest.raises(ValueError, match="num_levels"):
        Perturbation(x, num_levels=1)
    with pytest.raises(ValueError, match="mask"):
        Perturbation(x).apply(mask[0])


def test_perturbation_moves_with_to():
    perturbation = Perturbation(rand(1, 3, 5, 5), num_levels=3)
    assert perturbation.to(torch.float64) is perturbation
    assert perturbation.pyramid.dtype == torch.float64
    if torch.cuda.is_available():
        assert perturbation.to("cuda").pyramid.is_cuda
        assert perturbation.apply(torch.ones(2, 1, 5, 5, device="cuda")).is_cuda


@pytest.mark.parametrize("kind", ["blur", "fade"])
def test_perturbation_matches_torchray(kind):
    x = rand(1, 3, 30, 23, seed=5)
    theirs = TorchRayPerturbation(x, num_levels=8, max_blur=20, type=kind)
    ours = Perturbation(x, num_levels=8, max_blur=20, kind=kind)
    assert_relative(ours.pyramid[0], theirs.pyramid)
    masks = rand(6, 1, 30, 23, seed=6)
    masks[0], masks[1] = 1.0, 0.0
    masks[2] = (masks[2] * 7).round() / 7  # exactly on the levels
    assert_relative(ours.apply(masks), theirs.apply(masks))


# MaskGenerator ----------------------------------------------------------------------------------


def reference_mask(params: torch.Tensor, gen: MaskGenerator) -> torch.Tensor:
    """The full masks ``(K, 1, *shape_out)`` from the formula, cell by cell, in float64."""
    k, size = params.shape[0], 2 * gen.radius + 1
    grid = F.pad(params.double(), (gen.padding,) * 4)  # cell j lives at grid index j + padding
    out = torch.zeros(k, 1, *gen.shape_out, dtype=torch.float64)
    for v in range(gen.shape_out[0]):
        for u in range(gen.shape_out[1]):
            terms = []
            for ky in range(size):
                for kx in range(size):
                    jy, jx = v // gen.step + ky - gen.padding, u // gen.step + kx - gen.padding
                    dist = math.hypot(v - gen.margin - gen.step * jy, u - gen.margin - gen.step * jx)
                    bump = math.exp(-2 * max(dist / gen.sigma - 0.5, 0.0) ** 2)
                    terms.append(bump * grid[:, 0, jy + gen.padding, jx + gen.padding])
            a = torch.stack(terms, 1)
            if gen.pooling == "softmax":
                value = (a * torch.softmax(20 * a, 1)).sum(1)
            elif gen.pooling == "sum":
                value = a.sum(1)
            else:
                value = torch.sigmoid(20 * a.sum(1) - 3)
            out[:, 0, v, u] = value.clamp(0, 1) if gen.clamp else value
    return out


@pytest.mark.parametrize(
    ("shape", "step", "sigma", "pooling", "clamp"),
    [((7, 5), 3, 3.0, "softmax", True), ((6, 8), 2, 2.5, "sum", False), ((5, 5), 3, 2.0, "sigmoid", True)],
)
def test_mask_generator_matches_its_formula(shape, step, sigma, pooling, clamp):
    gen = MaskGenerator(shape, step, sigma, pooling=pooling, clamp=clamp)
    params = 1.4 * rand(2, 1, *gen.shape_in, seed=2, dtype=torch.float64) - 0.2
    mask, full = gen.generate(params)
    expected = reference_mask(params, gen)
    torch.testing.assert_close(full.double(), expected, atol=1e-6, rtol=1e-5)
    m = round(gen.margin)
    torch.testing.assert_close(mask, full[:, :, m : m + shape[0], m : m + shape[1]])
    torch.testing.assert_close(gen.generate_mask(params), mask)


@settings(max_examples=15)
@given(
    shape=st.tuples(st.integers(4, 30), st.integers(4, 30)),
    step=st.integers(2, 7),
    sigma=st.floats(1.0, 10.0),
    pooling=st.sampled_from(["softmax", "sum", "sigmoid"]),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_mask_generator_shapes_range_and_translation_equivariance(shape, step, sigma, pooling, k, seed):
    gen = MaskGenerator(shape, step, sigma, pooling=pooling)
    assert gen.shape_in == tuple(math.ceil(s / step) for s in shape)
    params = rand(k, 1, *gen.shape_in, seed=seed, dtype=torch.float64)
    mask, full = gen.generate(params)
    assert mask.shape == (k, 1, *shape) and full.shape == (k, 1, *gen.shape_out)
    torch.testing.assert_close(gen.generate_mask(params), mask)
    assert bool(((full >= 0) & (full <= 1)).all())
    # Moving the parameters one cell down/right moves the full mask by `step` pixels.
    params[:, :, -1] = 0
    params[:, :, :, -1] = 0
    moved = F.pad(params, (1, 0, 1, 0))[:, :, : gen.shape_in[0], : gen.shape_in[1]]
    _, moved_full = gen.generate(moved)
    _, full = gen.generate(params)
    torch.testing.assert_close(moved_full[:, :, step:, step:], full[:, :, :-step, :-step])


@pytest.mark.parametrize(("shape", "step", "sigma"), [((30, 25), 7, 21.0), ((17, 40), 3, 4.0)])
def test_mask_generator_matches_torchray(shape, step, sigma):
    theirs = TorchRayMaskGenerator(shape, step, sigma)
    for pooling in ("softmax", "sum", "sigmoid"):
        theirs.pooling_method = pooling
        ours = MaskGenerator(shape, step, sigma, pooling=pooling)
        assert tuple(theirs.shape_in) == ours.shape_in and tuple(theirs.shape_out) == ours.shape_out
        assert_relative(ours.weight, theirs.weight)
        params = rand(3, 1, *ours.shape_in, seed=4)
        for a, b in zip(ours.generate(params), theirs.generate(params)):
            assert_relative(a, b)


def test_mask_generator_softmax_blocks_change_nothing(monkeypatch):
    """The soft maximum walks the cells in blocks of POOL_BLOCK elements: any block size gives the same masks and
    gradients (the formula's, in float64, beyond [0, 1] too)."""
    import attrib.perturb.mask_generator as module

    gen = MaskGenerator((7, 9), 2, 3.0, clamp=False).to(torch.float64)
    params = (3 * rand(2, 1, *gen.shape_in, seed=5, dtype=torch.float64) - 1).requires_grad_(True)
    weights = rand(2, 1, *gen.shape_out, seed=6, dtype=torch.float64)
    full = gen.generate(params)[1]
    (grad,) = torch.autograd.grad((full * weights).sum(), params)
    torch.testing.assert_close(full, reference_mask(params.detach(), gen), atol=1e-6, rtol=1e-5)  # float32 weights
    size = (2 * gen.radius + 1) ** 2 * gen.step**2
    for budget in (1, 7 * size + 3):  # one cell a block, then 7 (the last block shorter)
        monkeypatch.setitem(module.POOL_BLOCK, "cpu", budget)
        other = gen.generate(params)[1]
        (other_grad,) = torch.autograd.grad((other * weights).sum(), params)
        torch.testing.assert_close(other, full, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(other_grad, grad, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda p: gen.generate(p)[1], (params[:1].detach().requires_grad_(True),))


def test_mask_generator_gradients_devices_and_errors():
    gen = MaskGenerator((6, 5), 2, 2.0, pooling="sum", clamp=False).to(torch.float64)
    assert gen.weight.dtype == torch.float64
    params = rand(2, 1, *gen.shape_in, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: gen.generate(p)[0], (params,))
    soft = MaskGenerator((6, 5), 2, 2.0, pooling="softmax", clamp=False).to(torch.float64)
    spread = (4 * params - 1.5).detach().requires_grad_(True)  # beyond [0, 1]: the soft maximum stays stable
    assert torch.autograd.gradcheck(lambda p: soft.generate(p)[1], (spread,))
    if torch.cuda.is_available():
        on_gpu = MaskGenerator((6, 5), 2, 2.0, device="cuda")
        assert on_gpu.weight.is_cuda and on_gpu.generate(params.detach().float().cuda())[0].is_cuda
    with pytest.raises(ValueError, match="params"):
        gen.generate(torch.ones(2, 1, 2, 2))
    with pytest.raises(ValueError, match="step"):
        MaskGenerator((6, 5), 0, 2.0)
    with pytest.raises(ValueError, match="pooling"):
        MaskGenerator((6, 5), 2, 2.0, pooling="max")
    with pytest.raises(ValueError, match="shape"):
        MaskGenerator((6,), 2, 2.0)  # type: ignore[arg-type]


# Rewards and the area term ----------------------------------------------------------------------


def test_rewards_match_torchray_and_their_formulas():
    output = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    for c in range(6):
        classes = torch.full((4,), c)
        torch.testing.assert_close(simple_reward(output, classes), torchray_simple(output, c, "preserve"))
        # TorchRay's margin broadcasts (R,) against (R, 1) into (R, R); its diagonal is the intended per-row margin.
        theirs = torchray_contrastive(output, c, "preserve")
        torch.testing.assert_close(contrastive_reward(output, classes), theirs.diagonal())
        torch.testing.assert_close(contrastive_reward(output[:1], classes[:1]), theirs[:1, 0])
        torch.testing.assert_close(-simple_reward(output, classes), torchray_simple(output, c, "delete"))
    classes = torch.tensor([0, 5, 2, 2])
    others = output.clone()
    others[torch.arange(4), classes] = -math.inf
    torch.testing.assert_close(contrastive_reward(output, classes), output[torch.arange(4), classes] - others.amax(1))
    # Very negative scores: the best other class is found even below TorchRay's -100 sentinel.
    low = torch.tensor([[-500.0, -300.0, -400.0]])
    torch.testing.assert_close(contrastive_reward(low, torch.tensor([0])), torch.tensor([-200.0]))


@given(
    values=st.lists(st.floats(0, 1), min_size=1, max_size=30),
    area=st.floats(0.01, 0.99),
)
def test_area_penalty_follows_its_formula(values, area):
    m = torch.tensor([values], dtype=torch.float64)
    (zeros,) = area_thresholds([area], len(values))
    expected = sum((v - (1.0 if i >= zeros else 0.0)) ** 2 for i, v in enumerate(sorted(values))) / len(values)
    torch.testing.assert_close(area_penalty(m, torch.tensor([zeros])), torch.tensor([expected], dtype=torch.float64))
    # A binary mask of exactly the asked area has no penalty.
    binary = (torch.arange(len(values)) >= zeros).to(torch.float64).flip(0).unsqueeze(0)
    assert float(area_penalty(binary, torch.tensor([zeros]))) == 0.0
