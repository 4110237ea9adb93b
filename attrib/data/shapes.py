"""Synthetic images with known object masks: the data of the shipped localisation benchmark.

Each image shows one to three objects of distinct classes (a circle, a square,
a triangle, a cross, a ring), in random colours, sizes and places, on a
smooth coloured background with pixel noise, plus distractors that belong to
no class (thin lines and small dots, as salient as the objects). Since
several classes share an image, a map that explains class ``c`` must point at
the object of class ``c``, not at whatever is most salient.

Everything is drawn from a private ``torch.Generator`` seeded with ``seed``:
the same arguments give bit-identical batches on every run, and torch's
global RNG is never touched. Shapes are anti-aliased (coverage from a signed
distance), and an object's mask is where it is visible: pixels it covers by
more than half and that no later object hides.

A pair ``(image, class)`` is *difficult* as in Zhang et al. (2016)'s pointing
game: the class covers less than a quarter of the image and another class is
present.

Example:
    >>> batch = make_shapes(8, seed=0)
    >>> batch.images.shape, batch.masks.shape, batch.labels.shape
    (torch.Size([8, 3, 64, 64]), torch.Size([8, 5, 64, 64]), torch.Size([8, 5]))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
"""The object classes, in label order."""

IMAGE_SIZE = 64


@dataclass(frozen=True)
class ShapesBatch:
    """A generated batch.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in ``[0, 1]``.
        masks: ``(N, C, H, W)`` bool: where each class is visible (all False for an absent class).
        labels: ``(N, C)`` bool: which classes are in each image.
        difficult: ``(N, C)`` bool: present classes covering less than a quarter of the image
            in an image that also holds another class.
    """

    images: Tensor
    masks: Tensor
    labels: Tensor
    difficult: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pairs(self) -> tuple[Tensor, Tensor]:
        """The ``(image, class)`` index pairs of every present class, as two ``(P,)`` tensors."""
        image, cls = self.labels.nonzero(as_tuple=True)
        return image, cls


def _uniform(g: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=g)


def _sdf(kind: str, x: Tensor, y: Tensor, r: float) -> Tensor:
    """Signed distance (pixels, negative inside) of a shape of radius ``r`` centred at the origin."""
    if kind == "circle":
        return torch.sqrt(x * x + y * y) - r
    if kind == "square":
        h = 0.8 * r
        dx, dy = x.abs() - h, y.abs() - h
        outside = torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2)
        return outside + torch.maximum(dx, dy).clamp(max=0)
    if kind == "triangle":
        # equilateral, circumradius r, pointing up: the largest distance to its three edge lines
        apothem = 0.5 * r
        d = None
        for angle in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            edge = -(x * math.cos(angle) + y * math.sin(angle)) - apothem
            d = edge if d is None else torch.maximum(d, edge)
        assert d is not None
        return d
    if kind == "cross":
        arm, half = r, 0.3 * r

        def box(bx: float, by: float) -> Tensor:
            dx, dy = x.abs() - bx, y.abs() - by
            return torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2) + torch.maximum(dx, dy).clamp(max=0)

        return torch.minimum(box(arm, half), box(half, arm))
    if kind == "ring":
        return (torch.sqrt(x * x + y * y) - 0.75 * r).abs() - 0.25 * r
    raise ValueError(f"unknown shape {kind!r}")


def _colour(g: torch.Generator, background: Tensor) -> Tensor:
    """A saturated colour that stands out from the local background colour ``(3,)``."""
    for _ in range(16):
        colour = torch.rand(3, generator=g)
        colour = (colour - colour.min()) / (colour.max() - colour.min() + 1e-6)
        colour = 0.15 + 0.8 * colour
        if (colour - background).abs().max() > 0.35:
            return colour
    return 1.0 - background


def _check_count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def make_shapes(
    n: int,
    *,
    seed: int = 0,
    size: int = IMAGE_SIZE,
    max_objects: int = 3,
    distractors: int = 2,
    noise: float = 0.04,
) -> ShapesBatch:
    """Generate ``n`` images with their class masks, labels and difficult flags.

    Args:
        n: number of images.
        seed: seed of the private generator; the batch is a function of all arguments.
        size: image side in pixels (objects scale with it).
        max_objects: each image holds between 1 and ``max_objects`` objects of distinct classes
            (at most ``len(CLASSES)``).
        distractors: the most distractors (lines, dots) per image; each image has 0 to this many.
        noise: standard deviation of the pixel noise.

    Returns:
        a :class:`ShapesBatch`.
    """
    n = _check_count("n", n, 1)
    size = _check_count("size", size, 16)
    max_objects = _check_count("max_objects", max_objects, 1)
    if max_objects > len(CLASSES):
        raise ValueError(f"max_objects must be at most {len(CLASSES)}, got {max_objects}")
    distractors = _check_count("distractors", distractors, 0)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    g = torch.Generator().manual_seed(int(seed))
    n_classes = len(CLASSES)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(n, 3, size, size)
    masks = torch.zeros(n, n_classes, size, size, dtype=torch.bool)
    labels = torch.zeros(n, n_classes, dtype=torch.bool)
    scale = size / 64.0
    for i in range(n):  # data generation, once per image: not a hot path
        # background: a smooth colour gradient between two dull colours
        a, b = 0.2 + 0.5 * torch.rand(3, generator=g), 0.2 + 0.5 * torch.rand(3, generator=g)
        angle = float(_uniform(g, 0, 2 * math.pi, 1))
        ramp = ((xs * math.cos(angle) + ys * math.sin(angle)) / size).remainder(1.0)
        image = a.view(3, 1, 1) + (b - a).view(3, 1, 1) * ramp
        owner = torch.full((size, size), -1, dtype=torch.long)
        count = 1 + int(torch.randint(max_objects, (1,), generator=g))
        classes = torch.randperm(n_classes, generator=g)[:count]
        n_distract = int(torch.randint(distractors + 1, (1,), generator=g))
        # distractors go first for half of them, so that objects may cover them, and last for the rest
        layers: list[tuple[str, int]] = [("distractor", k) for k in range(n_distract // 2)]
        layers += [("object", int(c)) for c in classes]
        layers += [("distractor", k) for k in range(n_distract // 2, n_distract)]
        centres: list[tuple[float, float, float]] = []
        for kind, index in layers:
            if kind == "object":
                r = float(_uniform(g, 6.0, 12.0, 1)) * scale
                for _ in range(20):  # keep objects mostly apart
                    cx, cy = (float(v) for v in _uniform(g, r + 1, size - r - 1, 2))
                    if all(math.hypot(cx - px, cy - py) > 0.8 * (r + pr) for px, py, pr in centres):
                        break
                centres.append((cx, cy, r))
                rot = float(_uniform(g, -0.3, 0.3, 1))
                if CLASSES[index] == "triangle":
                    rot = float(_uniform(g, -math.pi, math.pi, 1))
                c, s = math.cos(rot), math.sin(rot)
                dx, dy = xs - cx, ys - cy
                sdf = _sdf(CLASSES[index], c * dx + s * dy, -s * dx + c * dy, r)
                cover = (0.5 - sdf).clamp(0, 1)
                local = image[:, int(cy), int(cx)]
                image = image + (_colour(g, local).view(3, 1, 1) - image) * cover
                owner = torch.where(cover > 0.5, torch.tensor(index), owner)
            else:
                style = int(torch.randint(2, (1,), generator=g))
                colour = torch.rand(3, generator=g)
                if style == 0:  # a thin line across part of the image
                    x0, y0, x1, y1 = (float(v) for v in _uniform(g, 0, size, 4))
                    length = math.hypot(x1 - x0, y1 - y0) + 1e-6
                    t = (((xs - x0) * (x1 - x0) + (ys - y0) * (y1 - y0)) / length**2).clamp(0, 1)
                    dist = torch.hypot(xs - (x0 + t * (x1 - x0)), ys - (y0 + t * (y1 - y0)))
                    cover = (1.0 * scale - dist).clamp(0, 1)
                else:  # a cluster of small dots
                    cover = torch.zeros(size, size)
                    for cx, cy in _uniform(g, 2, size - 2, 3, 2).tolist():
                        cover = torch.maximum(cover, (2.0 * scale - torch.hypot(xs - cx, ys - cy)).clamp(0, 1))
                image = image + (colour.view(3, 1, 1) - image) * cover
                owner = torch.where(cover > 0.5, torch.tensor(-1), owner)
        image = image + noise * torch.randn(3, size, size, generator=g)
        images[i] = image.clamp(0, 1)
        for c in classes.tolist():
            masks[i, c] = owner == c
            labels[i, c] = bool(masks[i, c].any())
    area = masks.flatten(2).float().mean(-1)
    others = labels.sum(1, keepdim=True) > 1
    difficult = labels & (area < 0.25) & others
    return ShapesBatch(images=images, masks=masks, labels=labels, difficult=difficult)
