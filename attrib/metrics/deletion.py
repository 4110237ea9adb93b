"""Deletion and insertion curves (Petsiuk et al., 2018): scores as pixels go in saliency order."""

from __future__ import annotations

import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.batching import BatchSize, sample_major_rows
from ..core.forward import Model
from ..perturb.blur import gaussian_blur
from ..targets import TargetLike
from .base import ModelMetric, map_images, positive_int

SCORES = ("softmax", "logit")


def _softmax(output: Tensor) -> Tensor:
    if output.dim() < 2:
        raise ValueError(
            f"score='softmax' needs an output with a class dimension (N, C, ...), got shape {tuple(output.shape)}; "
            "use score='logit'"
        )
    return output.softmax(1)


class _PixelCurve(ModelMetric):
    """Shared machinery of :class:`Deletion` and :class:`Insertion`."""

    #: True: pixels go from the baseline to the image (insertion); False: from the image to the baseline.
    _inserts: bool
    _default_baseline: str

    def __init__(
        self,
        model: Model,
        inputs: Tensor,
        target: TargetLike = None,
        *,
        baseline: str | float | Tensor | None = None,
        steps: int = 100,
        score: str = "softmax",
        blur_sigma: float | None = None,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
        eval_mode: bool = True,
    ) -> None:
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"inputs must be images (N, C, H, W), got {shape}")
        self.steps: int = positive_int(steps, "steps (the curve has steps + 1 points)")
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
        if blur_sigma is not None and (
            isinstance(blur_sigma, bool) or not isinstance(blur_sigma, numbers.Real) or not blur_sigma >= 0
        ):
            raise ValueError(f"blur_sigma must be a non-negative number of pixels or None, got {blur_sigma!r}")
        super().__init__(
            model,
            inputs,
            target,
            additional_forward_args=additional_forward_args,
            batch_size=batch_size,
            eval_mode=eval_mode,
        )
        self.score: str = score
        self.baseline: Tensor = self._baseline(self._default_baseline if baseline is None else baseline, blur_sigma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, score={self.score!r})"

    def _baseline(self, baseline: str | float | Tensor, blur_sigma: float | None) -> Tensor:
        (x,) = self.bound.batch.tensors
        if isinstance(baseline, str):
            if baseline == "zero":
                return torch.zeros_like(x)
            if baseline == "blur":
                sigma = 0.05 * max(x.shape[2:]) if blur_sigma is None else blur_sigma
                return gaussian_blur(x, sigma)
            raise ValueError(f"baseline must be 'zero', 'blur', a number or a tensor, got {baseline!r}")
        if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
            return torch.full_like(x, float(baseline))
        if isinstance(baseline, Tensor):
            try:
                return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x)
            except RuntimeError:
                raise ValueError(
                    f"baseline of shape {tuple(baseline.shape)} does not broadcast to the inputs {tuple(x.shape)}"
                ) from None
        raise TypeError(f"baseline must be 'zero', 'blur', a number or a tensor, got {type(baseline).__name__}")

    def _ranks(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """Each pixel's position ``(N, H * W)`` in decreasing saliency, and which maps hold a NaN ``(N,)``."""
        (x,) = self.bound.batch.tensors
        maps = map_images(maps, x.shape[0]).to(device=x.device, dtype=torch.float64)
        if maps.shape[2:] != x.shape[2:]:
            maps = F.interpolate(maps, size=x.shape[2:], mode="bilinear", align_corners=False)
        flat = maps.flatten(1)
        invalid = flat.isnan().any(1)
        # Stable sort: equal saliencies go in raster order.
        order = torch.where(flat.isnan(), float("-inf"), flat).sort(dim=1, descending=True, stable=True).indices
        positions = torch.arange(flat.shape[1], device=x.device).expand_as(order)
        ranks = torch.empty_like(order).scatter_(1, order, positions)
        return ranks, invalid

    def curve(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """The curve: fractions ``(steps + 1,)`` of pixels changed (float64) and scores ``(N, steps + 1)``.

        At point ``s`` the first ``floor(s * H * W / steps)`` pixels in the
        map's order are changed. Rows of NaN maps are NaN.
        """
        (x,) = self.bound.batch.tensors
        n, height, width = x.shape[0], x.shape[2], x.shape[3]
        pixels = height * width
        ranks, invalid = self._ranks(maps)
        counts = torch.div(torch.arange(self.steps + 1, device=x.device) * pixels, self.steps, rounding_mode="floor")
        source, destination = (self.baseline, x) if self._inserts else (x, self.baseline)

        def block(start: int, stop: int) -> tuple[tuple[Tensor, ...], Tensor]:
            example, step = sample_major_rows(start, stop, n, x.device)
            changed = (ranks.index_select(0, example) < counts[step].unsqueeze(1)).view(-1, 1, height, width)
            rows = torch.where(changed, destination.index_select(0, example), source.index_select(0, example))
            return (rows,), example

        transform = _softmax if self.score == "softmax" else None
        scores = self.bound.evaluate((self.steps + 1) * n, block, transform)
        curves = scores.view(self.steps + 1, n).transpose(0, 1)
        curves = torch.where(invalid.unsqueeze(1), float("nan"), curves)
        return counts.to(torch.float64) / pixels, curves

    def __call__(self, maps: Tensor) -> Tensor:
        """Area under the curve ``(N,)`` (trapezoid rule over the fraction of pixels in [0, 1])."""
        fractions, curves = self.curve(maps)
        auc = torch.trapezoid(curves.to(torch.float64), fractions, dim=1)
        return auc.to(curves.dtype)


class Deletion(_PixelCurve):
    r"""Deletion AUC (Petsiuk et al., 2018): how fast the score drops as the most salient pixels go.

    Pixels are ordered by decreasing saliency (the map ``(N, 1, h, w)`` or
    ``(N, h, w)`` is resized bilinearly to the input and broadcast over its
    channels; equal saliencies go in raster order). At point
    :math:`s = 0..S` of the curve the first :math:`k_s = \lfloor s HW / S \rfloor`
    pixels are replaced by the baseline :math:`b`, and

    .. math:: \mathrm{AUC} = \int_0^1 p_t\big(x^{(f)}\big)\, df
        \approx \sum_{s=1}^{S} \frac{f_s - f_{s-1}}{2}\,\big(p_t(x^{(s)}) + p_t(x^{(s-1)})\big),
        \qquad f_s = k_s / HW

    with :math:`p_t` the softmax probability of the target (``score="softmax"``,
    as the paper: the target, an index or a callable, reads the softmax over
    dimension 1 of the output) or its raw output (``score="logit"``). Lower is better
    (``higher_is_better = False``): a good map removes the evidence first.

    All ``(S + 1) N`` perturbed images are evaluated ``batch_size`` rows at a
    time (64 by default; each block is built on the fly from the images, the
    baselines and the saliency ranks, never all at once), under the state
    guard, without gradients. A map holding a NaN gets AUC NaN. The target
    is resolved once on the clean inputs (``None``: the top-1 class).

    Relation to the paper's reference code (RISE's ``CausalMetric``): it
    changes ``step`` pixels per forward pass, i.e. ``S = ceil(HW / step)``
    (224 px images, ``step=224*8``: ``S = 28``), and its AUC is the same
    trapezoid rule with equal spacing, which this one equals whenever ``S``
    divides ``HW`` (otherwise the true fractions :math:`f_s` are used). Its
    insertion substrate is a blur with an 11 x 11 kernel of
    :math:`\sigma = 5` px; ``baseline="blur"`` uses a full Gaussian of
    ``blur_sigma`` pixels (default 5% of the larger side, 11.2 px at 224),
    or pass the substrate as a tensor.

    Args:
        model: the classifier.
        inputs: images ``(N, C, H, W)``.
        target: what is scored (see :mod:`attrib.targets`; one score per example).
        baseline: what replaces removed pixels: ``"zero"`` (default, the paper's
            deletion), ``"blur"`` (a Gaussian blur of the image with
            ``blur_sigma`` pixels, default 5% of the larger side), a number, or
            a tensor broadcastable to the inputs.
        steps: :math:`S`, the curve has ``steps + 1`` points.
        score: ``"softmax"`` or ``"logit"``.
        batch_size: the most perturbed images in one forward pass (an int,
            ``"auto"`` or ``None`` for all ``(S + 1) N`` at once).

    Raises:
        ValueError: inputs not ``(N, C, H, W)``, ``steps < 1``, an unknown
            ``score`` or ``baseline`` name, a baseline tensor that does not
            broadcast, a negative ``blur_sigma``, an ``(N, K)`` target; maps not
            ``(N, [1,] h, w)`` with the inputs' ``N``.

    Example:
        >>> deletion = Deletion(model, images, target=labels, steps=50, batch_size=256)
        >>> auc = deletion(maps)                  # (N,), lower is better
        >>> fractions, curves = deletion.curve(maps)
    """

    higher_is_better = False
    _inserts = False
    _default_baseline = "zero"


class Insertion(_PixelCurve):
    r"""Insertion AUC (Petsiuk et al., 2018): how fast the score rises as the most salient pixels come in.

    The mirror of :class:`Deletion`: the curve starts from the baseline
    (``"blur"`` by default, as the paper) and at point :math:`s` the first
    :math:`k_s` pixels in saliency order are copied from the image; the AUC
    is the trapezoid rule over the fraction of pixels inserted. Higher is
    better (``higher_is_better = True``). Options, shapes and NaN handling as
    :class:`Deletion`.

    Example:
        >>> insertion = Insertion(model, images, target=labels, baseline="blur", steps=50)
        >>> auc = insertion(maps)                 # (N,), higher is better
    """

    higher_is_better = True
    _inserts = True
    _default_baseline = "blur"

