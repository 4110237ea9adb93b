"""Running registry methods on the shapes benchmark data and scoring their maps (shared by demo and benchmark)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .common import run_method

TOLERANCE = 4
"""Pointing-game tolerance in pixels of the 64-pixel images: TorchRay's 15 pixels at 224 pixels, scaled."""

CURVE_STEPS = 16
"""Points (minus one) on the deletion and insertion curves."""


BATCHED = ("integratedgradients", "smoothgrad", "scorecam", "ablationcam", "occlusion", "rise", "extremal")
"""Methods that evaluate many rows per map and take ``batch_size``."""


INSERTION_BLUR = 8.0
"""Blur (pixels) of the insertion baseline: the shapes survive the default (5% of the side, 3 px), so the
probability would start high and every insertion curve would look alike."""


def probability_model(model: nn.Module) -> nn.Module:
    """``sigmoid(model(x))``: the per-class probability of the multi-label shipped models, for deletion/insertion."""
    return nn.Sequential(model, nn.Sigmoid()).eval()


def options_for(name: str, model: nn.Module) -> dict[str, Any]:
    """Options a method needs for this kind of model beyond the registry's defaults.

    The shipped models' 64-pixel images make blocks of 256 rows cheap, and
    extremal perturbation's mask smoothness and blur (TorchRay's, for 224
    pixels) are scaled to the model's ``input_size``. (RISE needs nothing
    here: its ``score="auto"`` scores the multi-label shipped models, which
    declare ``attrib_multilabel``, with the sigmoid, as ``attrib explain`` and
    ``attrib run`` do.)
    """
    options: dict[str, Any] = {}
    if getattr(model, "attrib_multilabel", False):
        if name in BATCHED:
            options["batch_size"] = 256  # tiny 64-pixel images: big blocks are cheap
    size = getattr(model, "input_size", None)
    if name == "extremal" and isinstance(size, int):
        # TorchRay's mask smoothness and blur are set for 224-pixel images: scale them to the model's size
        scale = size / 224
        options.update(step=max(1, round(7 * scale)), sigma=21 * scale, max_blur=20 * scale)
    return options


@dataclass
class MethodResult:
    """A method's maps over a set of (image, class) pairs and their scores.

    ``maps`` is None when the method failed (``error`` says why).
    """

    name: str
    seconds: float = 0.0
    maps: Tensor | None = None
    hits: Tensor | None = None
    deletion: Tensor | None = None
    insertion: Tensor | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def per_map_ms(self, count: int) -> float:
        return 1000.0 * self.seconds / max(count, 1)


def explain_pairs(
    name: str, model: nn.Module, images: Tensor, classes: Tensor, *, chunk: int = 32,
    options: dict[str, Any] | None = None,
) -> tuple[Tensor, float]:
    """Maps ``(P, 1, H, W)`` of method ``name`` for each (image, class) pair, ``chunk`` pairs per call, and the time."""
    parts: list[Tensor] = []
    seconds = 0.0
    merged = options_for(name, model)
    merged.update(options or {})
    for start in range(0, images.shape[0], chunk):
        maps, took = run_method(
            name, model, images[start : start + chunk], classes[start : start + chunk], options=merged
        )
        parts.append(maps)
        seconds += took
    return torch.cat(parts), seconds


def score_maps(
    result: MethodResult, model: nn.Module, images: Tensor, classes: Tensor, masks: Tensor, *, curves: bool = True
) -> None:
    """Fill in ``result``'s pointing-game hits and, if ``curves``, its deletion and insertion AUCs."""
    from ..metrics import Deletion, Insertion, PointingGame

    assert result.maps is not None
    result.hits = PointingGame(masks, tolerance=TOLERANCE)(result.maps)
    if curves:
        scorer = probability_model(model)
        target = classes
        result.deletion = Deletion(scorer, images, target, steps=CURVE_STEPS, score="logit", batch_size=256)(
            result.maps
        )
        result.insertion = Insertion(
            scorer, images, target, steps=CURVE_STEPS, score="logit", blur_sigma=INSERTION_BLUR, batch_size=256
        )(result.maps)


def baseline_maps(kind: str, n: int, size: int, *, seed: int = 0) -> Tensor:
    """The benchmark's baselines ``(n, 1, size, size)``: ``"center"`` (a peak at the image centre) or ``"random"``."""
    if kind == "center":
        coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        bump = -(coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2)
        return bump.expand(n, 1, size, size).clone()
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 1, size, size, generator=g)
    raise ValueError(f"unknown baseline {kind!r}")
