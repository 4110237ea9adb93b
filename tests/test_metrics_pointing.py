"""PointingGame and pointing_game_accuracy: hand-computed cases, TorchRay's rule, ties, NaN, invariances."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchray.benchmark.pointing_game import PointingGame as TorchRayPointingGame

from attrib.metrics.pointing_game import PointingGame, pointing_game_accuracy


def one_pixel_mask(size: int, row: int, col: int) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, row, col] = True
    return mask


def peak_map(size: int, row: int, col: int) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[0, 0, row, col] = 1.0
    return m


def test_maximum_on_the_mask_is_a_hit_and_far_away_a_miss():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 10:14, 10:14] = True
    maps = torch.zeros(2, 1, 32, 32)
    maps[0, 0, 12, 12] = 5.0  # on the object
    maps[1, 0, 30, 30] = 5.0  # 16 rows and columns from the nearest mask pixel (13, 13): distance 22.6
    assert PointingGame(masks, tolerance=15)(maps).tolist() == [True, False]


@pytest.mark.parametrize(
    ("offset", "hit"),
    [
        ((0, 2), True),  # distance 2 < 3
        ((0, 3), False),  # exactly the tolerance: a miss (strictly less than, as TorchRay)
        ((2, 2), True),  # squared distance 8 < 9
        ((2, 3), False),  # squared distance 13
        ((3, 0), False),
        ((-3, 0), False),
        ((0, -2), True),
    ],
)
def test_tolerance_boundary_is_strict(offset, hit):
    mask = one_pixel_mask(21, 10, 10)
    row, col = 10 + offset[0], 10 + offset[1]
    assert PointingGame(mask, tolerance=3)(peak_map(21, row, col)).item() is hit


def test_one_pixel_outside_the_tolerance_is_a_miss():
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, 5:10, 5:10] = True
    game = PointingGame(mask, tolerance=15)
    assert game(peak_map(40, 9, 9 + 14)).item()  # 14 columns right of the mask's edge
    assert not game(peak_map(40, 9, 9 + 15)).item()  # 15: on the boundary, a miss
    assert not game(peak_map(40, 9, 9 + 16)).item()


def test_zero_tolerance_never_hits():
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    assert not PointingGame(mask, tolerance=0)(peak_map(8, 3, 3)).item()


@pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # inside TorchRay's evaluate
@settings(max_examples=15)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    tolerance=st.integers(0, 6),
    seed=st.integers(0, 2**16),
    density=st.floats(0.0, 0.3),
)
def test_acceptance_matches_torchray_at_every_point(height, width, tolerance, seed, density):
    # Non-square masks: a row/column swap anywhere (ours or in reading TorchRay's (u, v)) changes the answer.
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(height, width, generator=g) < density
    theirs = TorchRayPointingGame(num_classes=1, tolerance=tolerance)
    points = torch.cartesian_prod(torch.arange(height), torch.arange(width))  # every (row, column)
    game = PointingGame(mask.expand(points.shape[0], height, width), tolerance=tolerance)
    ours = game.hits_at(points)
    expected = [theirs.evaluate(mask, (int(c), int(r))) == 1 for r, c in points]  # TorchRay takes (u, v) = (col, row)
    assert ours.tolist() == expected
    # TorchRay's centre baseline: the fractional point (u, v) = (W / 2, H / 2).
    centre = torch.tensor([[height / 2, width / 2]])
    assert PointingGame(mask.unsqueeze(0), tolerance=tolerance).hits_at(centre).item() == (
        theirs.evaluate(mask, (width / 2, height / 2)) == 1
    )


def brute_force_hit(mask: torch.Tensor, row: float, col: float, tolerance: float) -> bool:
    return any((r - row) ** 2 + (c - col) ** 2 < tolerance**2 for r, c in mask.nonzero().tolist())


@settings(max_examples=15)
@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    tolerance=st.floats(0.0, 12.0),
    seed=st.integers(0, 2**16),
)
def test_fractional_tolerance_and_points_match_brute_force(height, width, tolerance, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(height, width, generator=g) < 0.15
    points = torch.cartesian_prod(torch.arange(height), torch.arange(width))
    game = PointingGame(mask.expand(points.shape[0], height, width), tolerance=tolerance)
    expected = [brute_force_hit(mask, r, c, tolerance) for r, c in points.tolist()]
    assert game.hits_at(points).tolist() == expected  # integer points: only the disc is read
    assert game.hits_at(points.double()).tolist() == expected  # fractional path: the whole mask
    # Fractional points (negative coordinates are the NaN-map sentinel, a miss by definition: keep them >= 0).
    shifted = (points.double() + torch.rand(points.shape, generator=g, dtype=torch.float64) - 0.5).clamp(min=0)
    assert game.hits_at(shifted).tolist() == [brute_force_hit(mask, r, c, tolerance) for r, c in shifted.tolist()]


@pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")
@settings(max_examples=10)
@given(
    shape=st.sampled_from([(3, 5), (5, 3), (4, 7), (7, 2)]),
    map_scale=st.sampled_from([1.0, 1.7]),
    seed=st.integers(0, 2**16),
)
def test_whole_game_matches_torchrays_benchmark_rule_on_non_square_maps(shape, map_scale, seed):
    # TorchRay's benchmark: resize the map to the image (bilinear), take the argmax as (u, v) = (x, y), evaluate.
    # Continuous random maps at the mask's size or larger have one maximum, so the tie rule does not enter
    # (up-sampling would: bilinear resizing replicates the border, making ties along it).
    g = torch.Generator().manual_seed(seed)
    n, (height, width) = 6, shape
    maps = torch.rand(n, 1, round(height * map_scale), round(width * map_scale), generator=g)
    masks = torch.rand(n, height, width, generator=g) < 0.2
    theirs = TorchRayPointingGame(num_classes=1, tolerance=2)
    resized = torch.nn.functional.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    flat = resized.flatten(1).argmax(1)
    expected = [theirs.evaluate(masks[i], (int(flat[i] % width), int(flat[i] // width))) == 1 for i in range(n)]
    game = PointingGame(masks, tolerance=2)
    assert game.points(maps).tolist() == [[int(f // width), int(f % width)] for f in flat]
    assert game(maps).tolist() == expected


def test_infinite_tolerance_hits_every_non_empty_mask():
    masks = torch.zeros(3, 5, 9, dtype=torch.bool)
    masks[0, 4, 8] = True
    masks[1, 0, 0] = True
    maps = torch.rand(3, 5, 9, generator=torch.Generator().manual_seed(0))
    maps[1, 2, 2] = float("nan")
    assert PointingGame(masks, tolerance=float("inf"))(maps).tolist() == [True, False, False]


def test_plateau_tie_goes_to_its_centre_not_its_corner():
    maps = torch.zeros(1, 1, 20, 20)
    maps[0, 0, 2:7, 3:10] = 0.7  # rows 2..6, columns 3..9: centre (4, 6)
    game = PointingGame(torch.zeros(1, 20, 20, dtype=torch.bool))
    assert game.points(maps).tolist() == [[4, 6]]
    # An even-sized plateau: the centroid (4.5, 5.5) is equidistant from four pixels; the first in raster order wins.
    maps = torch.zeros(1, 1, 20, 20)
    maps[0, 0, 3:7, 4:8] = 1.0
    assert game.points(maps).tolist() == [[4, 5]]


def test_plateau_centre_on_a_non_square_map():
    maps = torch.zeros(1, 1, 9, 20)
    maps[0, 0, 1:4, 10:19] = 2.0  # rows 1..3, columns 10..18: centre (2, 14)
    assert PointingGame(torch.zeros(1, 9, 20, dtype=torch.bool)).points(maps).tolist() == [[2, 14]]


def reference_point(maps: torch.Tensor, size: tuple[int, int]) -> list[int]:
    """The plateau-centre rule in plain Python on a float64 resizing, with a generous tie tolerance."""
    resized = torch.nn.functional.interpolate(maps.double(), size=size, mode="bilinear", align_corners=False)[0, 0]
    peak = float(resized.max())
    maxima = [(r, c) for r, c in (resized >= peak - 1e-9 * abs(peak)).nonzero().tolist()]
    cr = sum(r for r, _ in maxima) / len(maxima)
    cc = sum(c for _, c in maxima) / len(maxima)
    return list(min(maxima, key=lambda p: ((p[0] - cr) ** 2 + (p[1] - cc) ** 2, p[0] * size[1] + p[1])))


@pytest.mark.parametrize("value", [0.7, 0.1, 1 / 3, 2.2])
@pytest.mark.parametrize("shapes", [((10, 10), (23, 31)), ((7, 9), (29, 17)), ((12, 12), (50, 50))])
def test_resizing_rounding_does_not_split_a_plateau(value, shapes):
    # Bilinear resizing of a float32 plateau leaves values a few ulps apart; they must still tie.
    (h, w), size = shapes
    maps = torch.zeros(1, 1, h, w)
    maps[0, 0, 1 : h - 1, 2 : w - 1] = value
    game = PointingGame(torch.zeros(1, *size, dtype=torch.bool))
    assert game.points(maps).tolist() == [reference_point(maps, size)]


def test_plateau_centre_decides_the_hit():
    # An extremal-perturbation-like mask: a flat region whose corner is far from the object, whose centre is on it.
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 30:34, 30:34] = True
    maps = torch.zeros(1, 64, 64)
    maps[0, 12:52, 12:52] = 1.0
    assert PointingGame(masks, tolerance=5)(maps).item()
    assert maps.flatten().argmax().item() == 12 * 64 + 12  # the first index would point at the corner (a miss)


def test_maps_are_resized_bilinearly_to_the_mask():
    # A one-hot 4x4 map up-sampled 4x peaks on the 2x2 block around 4i + 1.5; the tie goes to its first pixel.
    game = PointingGame(torch.zeros(1, 16, 16, dtype=torch.bool))
    assert game.points(peak_map(4, 1, 2)).tolist() == [[5, 9]]
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 5, 9] = True
    assert PointingGame(mask, tolerance=1)(peak_map(4, 1, 2)).item()
    assert PointingGame(mask, tolerance=1)(peak_map(4, 1, 2)[:, 0]).item()  # (N, h, w) maps too


def test_nan_map_never_hits():
    masks = torch.ones(3, 8, 8, dtype=torch.bool)
    maps = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    maps[0, 0, 2, 2] = float("nan")
    maps[1] = float("nan")
    game = PointingGame(masks, tolerance=100)
    assert game(maps).tolist() == [False, False, True]
    assert game.points(maps)[:2].tolist() == [[-1, -1], [-1, -1]]


def test_infinite_maximum_is_a_point():
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 6, 1] = float("inf")
    assert PointingGame(torch.zeros(1, 8, 8, dtype=torch.bool)).points(maps).tolist() == [[6, 1]]


MONOTONE = {
    "affine": lambda m: 3.0 * m - 7.0,
    "exp": torch.exp,
    "cube": lambda m: m**3,
    "arctan": torch.atan,
}


@settings(max_examples=20)
@given(
    values=st.lists(st.integers(-5, 5), min_size=36, max_size=36),
    transform=st.sampled_from(sorted(MONOTONE)),
    seed=st.integers(0, 2**16),
)
def test_invariant_to_increasing_transforms_of_the_map(values, transform, seed):
    maps = torch.tensor(values, dtype=torch.float64).view(1, 1, 6, 6)
    masks = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(seed)) < 0.2
    game = PointingGame(masks, tolerance=2)
    assert torch.equal(game.points(maps), game.points(MONOTONE[transform](maps)))
    assert torch.equal(game(maps), game(MONOTONE[transform](maps)))


@settings(max_examples=10)
@given(n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_batch_equivariant(n, seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 12, 12, generator=g) < 0.1
    maps = torch.rand(n, 1, 6, 6, generator=g)
    hits = PointingGame(masks, tolerance=3)(maps)
    perm = torch.randperm(n, generator=g)
    assert torch.equal(PointingGame(masks[perm], tolerance=3)(maps[perm]), hits[perm])
    singles = [PointingGame(masks[i : i + 1], tolerance=3)(maps[i : i + 1]).item() for i in range(n)]
    assert hits.tolist() == singles


def test_bad_arguments():
    with pytest.raises(TypeError, match="boolean"):
        PointingGame(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="N, H, W"):
        PointingGame(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="tolerance"):
        PointingGame(torch.zeros(1, 4, 4, dtype=torch.bool), tolerance=-1)
    with pytest.raises(ValueError, match="tolerance"):
        PointingGame(torch.zeros(1, 4, 4, dtype=torch.bool), tolerance=float("nan"))
    with pytest.raises(TypeError, match="tolerance"):
        PointingGame(torch.zeros(1, 4, 4, dtype=torch.bool), tolerance="15")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="maps"):
        PointingGame(torch.zeros(1, 4, 4, dtype=torch.bool))([[0.0]])  # type: ignore[arg-type]
    game = PointingGame(torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one row per example"):
        game(torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match="ReduceChannels"):
        game(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="points"):
        game.hits_at(torch.zeros(2, 3, dtype=torch.long))


# --- accuracy -------------------------------------------------------------------------


def test_accuracy_is_the_mean_over_classes():
    hits = torch.tensor([True, False, True, True])
    classes = torch.tensor([0, 0, 1, 2])
    acc = pointing_game_accuracy(hits, classes)
    assert acc.per_class.tolist() == [0.5, 1.0, 1.0]
    assert math.isclose(float(acc.accuracy), 2.5 / 3)  # not the mean over pairs (0.75)


def test_difficult_subset_and_empty_classes():
    hits = torch.tensor([True, False, True, True])
    classes = torch.tensor([0, 0, 1, 2])
    difficult = torch.tensor([True, True, False, True])
    skip = pointing_game_accuracy(hits, classes, difficult)
    assert skip.total.tolist() == [2.0, 0.0, 1.0]
    assert math.isnan(float(skip.per_class[1]))
    assert math.isclose(float(skip.accuracy), 0.75)
    zero = pointing_game_accuracy(hits, classes, difficult, empty_classes="zero")
    assert math.isclose(float(zero.accuracy), 0.5)


@settings(max_examples=10)
@given(
    pairs=st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.booleans()), min_size=1, max_size=30),
)
def test_accuracy_matches_torchray_counts(pairs):
    hits = torch.tensor([p[0] for p in pairs])
    classes = torch.tensor([p[1] for p in pairs])
    difficult = torch.tensor([p[2] for p in pairs])
    for flags in (None, difficult):
        theirs = TorchRayPointingGame(num_classes=5)
        for hit, cls, hard in pairs:
            if flags is None or hard:
                theirs.aggregate(1 if hit else -1, cls)
        ours = pointing_game_accuracy(hits, classes, flags, num_classes=5, empty_classes="zero")
        assert torch.equal(ours.per_class, theirs.class_accuracies)
        assert torch.equal(ours.accuracy, theirs.accuracy)


def test_counts_of_shards_add_up():
    g = torch.Generator().manual_seed(0)
    hits = torch.rand(50, generator=g) < 0.6
    classes = torch.randint(0, 4, (50,), generator=g)
    whole = pointing_game_accuracy(hits, classes, num_classes=4)
    parts = pointing_game_accuracy(hits[:20], classes[:20], num_classes=4) + pointing_game_accuracy(
        hits[20:], classes[20:], num_classes=4
    )
    assert torch.equal(whole.hits, parts.hits) and torch.equal(whole.total, parts.total)
    assert torch.equal(whole.accuracy, parts.accuracy)


def test_accuracy_bad_arguments():
    with pytest.raises(TypeError, match="boolean"):
        pointing_game_accuracy(torch.tensor([1, 0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="classes"):
        pointing_game_accuracy(torch.tensor([True]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        pointing_game_accuracy(torch.tensor([True]), torch.tensor([3]), num_classes=2)
    with pytest.raises(ValueError, match="empty_classes"):
        pointing_game_accuracy(torch.tensor([True]), torch.tensor([0]), empty_classes="drop")
