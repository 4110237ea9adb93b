"""Post-processing steps against their formulas (and TorchRay's smoothing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torchray.utils import imsmooth

import attrib


def maps_strategy(min_side: int = 2, max_side: int = 9):
    return st.builds(
        lambda m, c, h, w, seed: torch.randn(
            m, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        ),
        st.integers(1, 3),
        st.integers(1, 4),
        st.integers(min_side, max_side),
        st.integers(min_side, max_side),
        st.integers(0, 2**16),
    )


@given(maps=maps_strategy())
def test_channel_reductions_follow_their_formulas(maps):
    ref = maps
    formulas = {
        "abs_max": lambda a: a.abs().max(1, keepdim=True).values,
        "sum": lambda a: a.sum(1, keepdim=True),
        "abs_sum": lambda a: a.abs().sum(1, keepdim=True),
        "l2": lambda a: torch.linalg.vector_norm(a, dim=1, keepdim=True),
        "positive": lambda a: torch.relu(a.sum(1, keepdim=True)),
    }
    for kind, formula in formulas.items():
        out = attrib.ReduceChannels(kind)(maps, ref)
        assert out.shape == (maps.shape[0], 1, *maps.shape[2:])
        torch.testing.assert_close(out, formula(maps))


def _reference_smooth(maps: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """A full 2-D Gaussian (outer product of the 1-D taps) on a replicate-padded map."""
    radius = math.ceil(4 * sigma_px)
    taps = [math.exp(-(i * i) / (2 * sigma_px**2)) for i in range(-radius, radius + 1)]
    k1 = torch.tensor(taps, dtype=torch.float64)
    k2 = torch.outer(k1, k1)
    k2 = k2 / k2.sum()
    c = maps.shape[1]
    padded = F.pad(maps, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, k2.expand(c, 1, -1, -1), groups=c)


@given(maps=maps_strategy(), sigma=st.floats(0.01, 0.3))
def test_gaussian_smooth_matches_2d_reference_and_torchray(maps, sigma):
    out = attrib.GaussianSmooth(sigma)(maps, maps)
    sigma_px = sigma * max(maps.shape[2:])
    torch.testing.assert_close(out, _reference_smooth(maps, sigma_px))
    # TorchRay builds its filter in float32.
    torchray_out = imsmooth(maps.float(), sigma=sigma_px, padding_mode="replicate")
    torch.testing.assert_close(attrib.GaussianSmooth(sigma)(maps.float(), maps), torchray_out, rtol=1e-5, atol=1e-6)


def test_gaussian_smooth_identity_and_constants():
    maps = torch.randn(2, 1, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(attrib.GaussianSmooth(0)(maps, maps), maps)
    const = torch.full((1, 2, 6, 6), 3.0)
    torch.testing.assert_close(attrib.GaussianSmooth(0.2)(const, const), const)
    with pytest.raises(ValueError, match="sigma"):
        attrib.GaussianSmooth(-1)


@given(maps=maps_strategy())
def test_min_max_normalize(maps):
    out = attrib.MinMaxNormalize()(maps, maps)
    flat = out.flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(maps.shape[0], dtype=maps.dtype))
    torch.testing.assert_close(flat.max(1).values, torch.ones(maps.shape[0], dtype=maps.dtype))
    const = torch.ones(2, 1, 3, 3)
    assert torch.equal(attrib.MinMaxNormalize()(const, const), torch.zeros_like(const))


@given(maps=maps_strategy(), q=st.floats(50, 100))
def test_percentile_clip_matches_numpy(maps, q):
    out = attrib.PercentileClip(q)(maps, maps)
    for i, m in enumerate(maps.numpy()):
        low, high = m.min(), np.percentile(m, q)
        expected = np.clip((m - low) / (high - low), 0, 1)
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_fastestimator_visualisation_recipe():
    """FastEstimator's: abs-sum over channels, then min and 99th-percentile scaling, clipped."""
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(2, 3, 10, 10, generator=g, dtype=torch.float64)
    out = attrib.PercentileClip(99)(attrib.ReduceChannels("abs_sum")(maps, maps), maps)
    flat = maps.abs().sum(1, keepdim=True).numpy()
    for i in range(2):
        vmin, vmax = flat[i].min(), np.percentile(flat[i], 99)
        np.testing.assert_allclose(out[i].numpy(), np.clip((flat[i] - vmin) / (vmax - vmin), 0, 1))


def test_resize():
    maps = torch.arange(16.0).view(1, 1, 4, 4)
    reference = torch.zeros(1, 3, 8, 6)
    assert attrib.Resize()(maps, reference).shape == (1, 1, 8, 6)
    torch.testing.assert_close(
        attrib.Resize((2, 2), mode="bilinear")(maps, reference),
        F.interpolate(maps, size=(2, 2), mode="bilinear", align_corners=False),
    )
    assert torch.equal(attrib.Resize((8, 8), mode="nearest")(maps, reference)[0, 0, ::2, ::2], maps[0, 0])
    assert attrib.Resize()(maps, torch.zeros(1, 1, 4, 4)) is maps
    with pytest.raises(ValueError, match="mode must be one of"):
        attrib.Resize(mode="bilinaer")
    with pytest.raises(ValueError, match="height, width"):
        attrib.Resize((0, 3))
    with pytest.raises(ValueError, match="shape"):
        attrib.Resize()(torch.zeros(3, 4), reference)


def test_bad_reduction_name():
    with pytest.raises(ValueError, match="abs_max"):
        attrib.ReduceChannels("max")
    with pytest.raises(ValueError, match="percentile"):
        attrib.PercentileClip(101)
