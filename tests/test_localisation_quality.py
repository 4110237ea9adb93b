"""Extremal perturbation finds what a model reads: squares anywhere in the image, and the shipped benchmark vs TorchRay.

The square models score ``4 x`` the mean of the image over a box (the issue's
set-up: 48 x 48 images ``2 * U(0, 1)``, the fade, TorchRay's schedule squeezed
to 300 steps, step and sigma scaled to the image). Before the margin term and
the tie-averaged pull of the area regulariser, the masks drifted into the
image's corners (mean 0.03 inside the centred square, 0.08 outside, reward
0.13 of about 4).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_extremal_perturbation

from attrib.cli.benchmark import Pairs
from attrib.data import load_model
from attrib.methods.extremal import ExtremalPerturbation
from attrib.metrics import PointingGame
from attrib.perturb.blur import gaussian_blur

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")  # inside TorchRay's MaskGenerator

SIZE = 48
OPTIONS = {"perturbation": "fade", "max_iter": 300, "step": 3, "sigma": 6}


class Box(nn.Module):
    """Class 0 is ``4 x`` the mean of the input over the box ``(top, left, height, width)``; class 1 is 0."""

    def __init__(self, top: int, left: int, height: int, width: int) -> None:
        super().__init__()
        self.top, self.left, self.height, self.width = top, left, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 4 * x[:, :, self.top : self.top + self.height, self.left : self.left + self.width].mean((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


def square_case(box: tuple[int, int, int, int], seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """The model, the image ``(1, 3, 48, 48)``, the box's pixels ``(48, 48)`` bool and its area."""
    top, left, height, width = box
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[top : top + height, left : left + width] = True
    return Box(*box), x, inside, height * width / SIZE**2


def assert_finds(mask: torch.Tensor, inside: torch.Tensor, reward: float, best: float) -> None:
    """Mostly 1 on the box, about 0 elsewhere, and most of the reward kept."""
    assert float(mask[inside].mean()) > 0.6, float(mask[inside].mean())
    assert float(mask[~inside].mean()) < 0.06, float(mask[~inside].mean())
    assert reward > 0.6 * best, (reward, best)


@pytest.mark.parametrize("jitter", [True, False])
def test_the_issue_square_is_found_as_torchray_finds_it(jitter):
    model, x, inside, area = square_case((12, 18, 12, 12))  # columns 18..29: symmetric under the jitter's flips
    best = float(model(x)[0, 0])
    masks, history = ExtremalPerturbation(model).attribute(
        x, 0, areas=[area], jitter=jitter, seed=0, return_history=True, **OPTIONS
    )
    assert_finds(masks[0, 0], inside, float(history[0, 0, 0, -1]), best)
    assert abs(float(masks.mean()) - area) < 0.03  # the area asked for (TorchRay's comes out at 0.11 for 0.0625)
    if not jitter:  # the same problem, solved by TorchRay too (its jitter flips this symmetric box onto itself)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, _ = torchray_extremal_perturbation(model, x, 0, areas=[area], jitter=False, **OPTIONS)
        assert float(theirs[0, 0][inside].mean()) > 0.6


@pytest.mark.parametrize(
    ("box", "jitter"),
    [
        ((30, 12, 10, 24), True),  # a wide rectangle low in the image (symmetric under the flips)
        ((20, 20, 8, 8), True),  # a small square at the centre
        ((10, 6, 20, 20), False),  # a large square (TorchRay's mask misses this one: 0.02 inside)
        ((36, 36, 12, 12), False),  # the bottom-right corner
        ((0, 0, 12, 12), False),  # the top-left corner
        ((18, 36, 12, 12), False),  # the right edge
        ((4, 10, 8, 16), False),  # a rectangle near the top
    ],
)
def test_squares_and_rectangles_anywhere_are_found(box, jitter):
    model, x, inside, area = square_case(box, seed=1)
    masks, history = ExtremalPerturbation(model).attribute(
        x, 0, areas=[area], jitter=jitter, seed=0, return_history=True, **OPTIONS
    )
    assert_finds(masks[0, 0], inside, float(history[0, 0, 0, -1]), float(model(x)[0, 0]))


@pytest.mark.slow
def test_a_batch_of_squares_each_finds_its_own():
    """Several images, each with its own box read by its own class, in one call."""

    class Boxes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.boxes = [Box(12, 18, 12, 12), Box(30, 12, 10, 24)]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([box(x)[:, 0] for box in self.boxes], 1)

    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 2
    masks = ExtremalPerturbation(Boxes()).attribute(x, [0, 1], areas=[144 / SIZE**2, 240 / SIZE**2], seed=0, **OPTIONS)
    for i, (_, _, inside, _) in enumerate([square_case((12, 18, 12, 12)), square_case((30, 12, 10, 24))]):
        mask = masks[i, i]
        assert float(mask[inside].mean()) > 0.6 and float(mask[~inside].mean()) < 0.06


# The shipped benchmark: TorchRay's pointing-game settings (three areas summed, then smoothed), both libraries alike
# (benchmarks/bench_ep_pointing.py runs the same comparison on more images, seeds and both models).

AREAS = [0.025, 0.05, 0.1]


def pointing_hits(
    model_name: str, images: int, max_iter: int, seed: int = 2026, pairs_used: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hits ``(P,)`` of attrib's and TorchRay's EP over the (image, class) pairs of ``make_shapes(images)``.

    Both at TorchRay's settings scaled to 64 px (step 2, sigma 6; its blur of 20 px and area-weight growth
    1.0035, which its function fixes), jitter on; ``pairs_used`` picks some of the pairs.
    """
    pairs = Pairs.generate(images, seed)
    index = torch.tensor(pairs_used) if pairs_used is not None else torch.arange(len(pairs.classes))
    x, classes, masks = pairs.images[index], pairs.classes[index], pairs.masks[index]
    model = load_model(model_name)
    size = x.shape[-1]
    settings = {"areas": AREAS, "max_iter": max_iter, "step": round(7 * size / 224), "sigma": 21 * size / 224}

    def summed(m: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(m.sum(1, keepdim=True), 0.09 * size)  # TorchRay's smooth=0.09

    ours = ExtremalPerturbation(model).attribute(x, classes, seed=0, max_blur=20, regul_growth=1.0035, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.stack([
            torchray_extremal_perturbation(model, x[i : i + 1], int(c), **settings)[0][:, 0]
            for i, c in enumerate(classes.tolist())
        ])
    for p in model.parameters():  # TorchRay leaves them frozen
        p.requires_grad_(True)
    game = PointingGame(masks, tolerance=4)
    return game(summed(ours)), game(summed(theirs))


def test_points_at_least_as_well_as_torchray_on_a_few_shipped_images():
    # A circle, a ring and a cross from the benchmark's images, 30 steps.
    ours, theirs = pointing_hits("shapes-cnn", images=12, max_iter=30, pairs_used=[0, 1, 6])
    assert int(ours.sum()) >= int(theirs.sum()) and bool(ours.all()), (ours, theirs)


@pytest.mark.slow  # ~2-4 min on two CPU cores: both libraries optimise 3 areas for each of 23 pairs
@pytest.mark.parametrize("model_name", ["shapes-cnn", "shapes-resnet"])
def test_points_at_least_as_well_as_torchray_on_the_shipped_benchmark(model_name):
    # Measured (100 steps, 23 pairs): shapes-cnn 23 hits for both, shapes-resnet 21 for both (the same two missed).
    ours, theirs = pointing_hits(model_name, images=12, max_iter=100)
    assert int(ours.sum()) >= int(theirs.sum()) and int(ours.sum()) >= 0.9 * len(ours), (ours, theirs)
