"""Feature groups (attrib.core.features) and the mask helpers grid_mask / superpixel_mask."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attrib.core.features import as_feature_groups
from attrib.core.inputs import as_input_batch
from attrib.methods.feature_ablation import FeatureAblation
from attrib.methods.occlusion import Occlusion
from attrib.perturb.feature_masks import grid_mask, superpixel_mask

from .models import build, inputs_for, specs

# FeatureGroups ---------------------------------------------------------------------------------------


def test_ids_are_renumbered_in_order_across_inputs_and_the_map_is_kept():
    batch = as_input_batch((torch.zeros(2, 3, 2, 2), torch.zeros(2, 3)))
    groups = as_feature_groups((torch.tensor([[40, 7], [7, 40]]), torch.tensor([7, 12, 12])), batch)
    assert groups.n_features == 3 and groups.ids.tolist() == [7, 12, 40] and not groups.per_example
    assert groups.masks[0].shape == (1, 1, 2, 2) and groups.masks[0].flatten().tolist() == [2, 0, 0, 2]
    assert groups.masks[1].tolist() == [[0, 1, 1]]
    assert groups.occurs.tolist() == [[True, True, True]]


def test_default_groups_number_every_element_consecutively_across_inputs():
    batch = as_input_batch((torch.zeros(2, 2, 3), torch.zeros(2, 4)))
    groups = as_feature_groups(None, batch)
    assert groups.n_features == 10
    assert groups.masks[0].flatten().tolist() == list(range(6)) and groups.masks[1].flatten().tolist() == [6, 7, 8, 9]


def test_per_example_masks_record_which_features_each_example_has():
    batch = as_input_batch(torch.zeros(3, 4))
    groups = as_feature_groups(torch.tensor([[0, 0, 1, 1], [5, 5, 5, 5], [1, 2, 3, 3]]), batch)
    assert groups.per_example and groups.n_features == 5 and groups.ids.tolist() == [0, 1, 2, 3, 5]
    assert groups.counts.tolist() == [2, 1, 3]
    values = torch.arange(1.0, 16.0).view(3, 5)
    last = groups.features_last(values.t())
    assert last.tolist() == [[1, 2, 0, 0, 0], [0, 0, 0, 0, 10], [0, 12, 13, 14, 0]]


@given(n=st.integers(1, 3), k=st.integers(1, 3), seed=st.integers(0, 100))
def test_compose_and_expand_agree_with_an_element_loop(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(n, 2, 3, 4, generator=g, dtype=torch.float64)
    mask = torch.randint(0, 4, (n, 1, 3, 4), generator=g) * 3  # per example, shared by channels, ids 0,3,6,9
    batch = as_input_batch(x)
    groups = as_feature_groups(mask, batch)
    rows = 5
    example = torch.randint(0, n, (rows,), generator=g)
    present = torch.rand(rows, groups.n_features, generator=g, dtype=torch.float64)
    hard = present > 0.5
    (mixed,) = groups.compose(present, example, (x,), (b,))
    (chosen,) = groups.compose(hard, example, (x,), (b,))
    values = torch.randn(n, k, groups.n_features, generator=g, dtype=torch.float64)
    (spread,) = groups.expand(values)
    (small,) = groups.expand(values, full=False)
    assert small.shape == (n, k, 1, 3, 4) and torch.equal(small.expand_as(spread), spread)
    assert spread.shape == (n, k, 2, 3, 4)
    ids = groups.ids.tolist()
    for r in range(rows):
        e = int(example[r])
        for c in range(2):
            for i in range(3):
                for j in range(4):
                    f = ids.index(int(mask[e, 0, i, j]))
                    p = float(present[r, f])
                    assert float(mixed[r, c, i, j]) == pytest.approx(
                        float(x[e, c, i, j]) * p + float(b[e, c, i, j]) * (1 - p)
                    )
                    assert float(chosen[r, c, i, j]) == float((x if p > 0.5 else b)[e, c, i, j])
                    assert spread[e, :, c, i, j].tolist() == values[e, :, f].tolist()


def test_float_presence_of_one_and_zero_gives_the_input_and_the_baseline_exactly():
    x, b = torch.randn(2, 5), torch.randn(2, 5)
    groups = as_feature_groups(None, as_input_batch(x))
    example = torch.tensor([0, 1])
    (ones,) = groups.compose(torch.ones(2, 5), example, (x,), (b,))
    (zeros,) = groups.compose(torch.zeros(2, 5), example, (x,), (b,))
    assert torch.equal(ones, x) and torch.equal(zeros, b)
    with pytest.raises(ValueError, match="present must have shape"):
        groups.compose(torch.ones(2, 4), example, (x,), (b,))


# grid_mask ---------------------------------------------------------------------------------------------


def test_grid_mask_tiles_row_major_and_cuts_cells_at_the_border():
    assert grid_mask((2, 3), 2).tolist() == [[[[0, 0, 1], [0, 0, 1]]]]
    mask = grid_mask((5, 7), (2, 3))
    assert mask.shape == (1, 1, 5, 7) and mask.dtype == torch.long
    for y in range(5):
        for x in range(7):
            assert int(mask[0, 0, y, x]) == (y // 2) * 3 + x // 3
    for bad in [((0, 4), 2), ((4,), 2), ((4, 4), 0), ((4, 4), (1, 2, 3)), ((4, 4), 1.5)]:
        with pytest.raises(ValueError, match="positive ints"):
            grid_mask(*bad)


@given(spec=specs(), n=st.integers(1, 3), seed=st.integers(0, 50), data=st.data())
def test_ablating_grid_cells_is_occlusion_with_non_overlapping_windows(spec, n, seed, data):
    cell = data.draw(st.sampled_from([c for c in (1, 2, 3) if spec.size % c == 0]))
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, seed, torch.float64)
    target = torch.arange(n) % spec.classes
    ours = FeatureAblation(model).attribute(
        x, target, feature_mask=grid_mask((spec.size, spec.size), cell), baselines=0.3
    )
    occluded = Occlusion(model).attribute(x, target, window=cell, stride=cell, baselines=0.3)
    torch.testing.assert_close(ours, occluded.expand_as(ours), rtol=1e-10, atol=1e-12)


# superpixel_mask ---------------------------------------------------------------------------------------


def two_region_images() -> torch.Tensor:
    images = torch.zeros(2, 3, 24, 30)
    images[0, :, :, 13:] = 1.0  # a vertical edge at column 13
    images[1, 1, 10:, :] = 0.8  # a horizontal edge at row 10
    return images


def test_torch_superpixels_follow_edges_and_give_about_n_segments_per_image():
    images = two_region_images()
    masks = superpixel_mask(images, 20, backend="torch")
    assert masks.shape == (2, 1, 24, 30) and masks.dtype == torch.long
    left, right = masks[0, 0, :, :13], masks[0, 0, :, 13:]
    assert not set(left.unique().tolist()) & set(right.unique().tolist())
    top, bottom = masks[1, 0, :10], masks[1, 0, 10:]
    assert not set(top.unique().tolist()) & set(bottom.unique().tolist())
    for m in masks:
        assert 10 <= m.unique().numel() <= 30
    assert torch.equal(masks, superpixel_mask(images, 20, backend="torch"))
    groups = as_feature_groups(masks, as_input_batch(images))
    assert groups.per_example and groups.masks[0].shape == (2, 1, 24, 30)


def test_torch_superpixels_of_a_flat_image_are_the_starting_grid():
    masks = superpixel_mask(torch.full((1, 1, 12, 12), 0.5), 9, backend="torch", n_iter=5)
    assert torch.equal(masks, grid_mask((12, 12), 4))


def test_skimage_backend_names_the_extra_when_scikit_image_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r"attrib\[vision\].*scikit-image"):
        superpixel_mask(two_region_images(), 10)


def test_skimage_backend_calls_slic_per_image_with_channels_last_and_stacks_the_labels(monkeypatch):
    calls = []

    def slic(image, **options):
        calls.append((image.shape, options))
        import numpy as np

        return np.arange(image.shape[0] * image.shape[1]).reshape(image.shape[:2]) % 4

    fake = types.ModuleType("skimage.segmentation")
    fake.slic = slic  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skimage", types.ModuleType("skimage"))
    monkeypatch.setitem(sys.modules, "skimage.segmentation", fake)
    masks = superpixel_mask(two_region_images(), 10, compactness=5.0, max_num_iter=3)
    assert masks.shape == (2, 1, 24, 30) and masks.dtype == torch.long
    assert masks[1, 0, 0, :5].tolist() == [0, 1, 2, 3, 0]
    assert calls[0] == (
        (24, 30, 3),
        {"n_segments": 10, "compactness": 5.0, "start_label": 0, "channel_axis": -1, "max_num_iter": 3},
    )
    superpixel_mask(two_region_images()[:, :1], 10)
    assert calls[-1][0] == (24, 30) and calls[-1][1]["channel_axis"] is None


def test_bad_superpixel_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="images must be a tensor"):
        superpixel_mask(torch.zeros(3, 8, 8), 4, backend="torch")
    with pytest.raises(ValueError, match="n_segments"):
        superpixel_mask(torch.zeros(1, 3, 8, 8), 0, backend="torch")
    with pytest.raises(ValueError, match="backend"):
        superpixel_mask(torch.zeros(1, 3, 8, 8), 4, backend="opencv")
    with pytest.raises(ValueError, match="no scikit-image options"):
        superpixel_mask(torch.zeros(1, 3, 8, 8), 4, backend="torch", sigma=1.0)


def test_skimage_backend_with_the_real_library_gives_per_image_segments():
    """scikit-image is in the vision and dev extras: the default backend runs for real."""
    images = torch.zeros(2, 3, 32, 32)
    images[0, 0, :16], images[0, 1, 16:, :16], images[0, 2, 16:, 16:] = 1.0, 1.0, 1.0  # three colour regions
    images[1, :, :, 16:] = 1.0  # black and white halves
    ids = superpixel_mask(images, n_segments=8)
    assert ids.shape == (2, 1, 32, 32) and ids.dtype == torch.long
    for image_ids in ids:
        assert 2 <= int(image_ids.unique().numel()) <= 32
    # Segments follow the edges: no segment straddles the halves of the second image.
    left, right = ids[1, 0, :, :16], ids[1, 0, :, 16:]
    assert not set(left.unique().tolist()) & set(right.unique().tolist())


def test_skimage_backend_warns_when_it_merges_noise_into_one_segment():
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="as few as 1"):
        superpixel_mask(noise, n_segments=12)
    torch_ids = superpixel_mask(noise, n_segments=12, backend="torch")
    assert all(int(image.unique().numel()) >= 4 for image in torch_ids)
