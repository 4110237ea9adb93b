"""The perturbation pyramid: increasingly perturbed copies of an input, blended pixel-wise by a mask."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .blur import PADDINGS, gaussian_blur

KINDS = ("blur", "fade")

PerturbFn = Callable[[Tensor, float], Tensor]
"""``(input (N, C, H, W), strength in [0, 1]) -> perturbed input``; strength 1 is the most perturbed."""

PerturbationLike = str | PerturbFn | Tensor
"""``"blur"``, ``"fade"``, a callable :data:`PerturbFn`, or a baseline tensor to fade to."""


class Perturbation(nn.Module):
    r"""A pyramid of ``num_levels`` increasingly perturbed copies of the input, and masks to blend them.

    Level :math:`l = 0, \dots, L-1` of input :math:`x` is :math:`y_l = P(x, s_l)`
    with strength :math:`s_l = 1 - l/(L-1)`: level :math:`L-1` is the input
    itself and level 0 the most perturbed copy. ``kind`` picks :math:`P`:

    * ``"blur"``: :math:`P(x, s) = g_{s\,\sigma_{max}} \ast x`, a Gaussian blur
      of standard deviation :math:`\sigma_l = \sigma_{max}(1 - l/(L-1))`
      pixels (``max_blur``) with zero padding, as TorchRay's
      (:func:`attrib.perturb.blur.gaussian_blur`; ``padding`` changes it).
    * ``"fade"``: :math:`P(x, s) = (1 - s)\,x`, a fade to black.
    * a tensor :math:`b` broadcastable to the input (zeros, the mean image,
      noise): :math:`P(x, s) = b + (1 - s)(x - b)`, a fade to that baseline.
    * a callable ``fn(input, strength) -> Tensor`` (``input`` is ``(N, C, H, W)``,
      ``strength`` a float in ``(0, 1]``): any perturbation of graded strength.

    :meth:`apply` turns a mask :math:`m \in [0, 1]` (1 keeps the input, 0
    perturbs it most) into :math:`z_{cvu} = (1 - f)\,y_{k,cvu} + f\,y_{k+1,cvu}`
    with :math:`w = m_{vu}(L-1)`, :math:`k = \min(\lfloor w \rfloor, L-2)`,
    :math:`f = w - k`: linear interpolation between the two nearest levels,
    differentiable in the mask. For the linear kinds (fade, baselines) this is
    exactly :math:`P(x, 1 - m)`.

    The pyramid is a buffer of shape ``(N, L, C, H, W)``, so ``.to(device)``
    moves it (and returns the module).

    Args:
        input: ``(N, C, H, W)`` images (or one ``(C, H, W)`` image).
        num_levels: :math:`L \ge 2`.
        max_blur: :math:`\sigma_{max}` in pixels, for ``kind="blur"``.
        kind: ``"blur"``, ``"fade"``, a baseline tensor or a callable (above).
        padding: border handling of the blur (``"zeros"``, ``"replicate"`` or ``"reflect"``).

    Example:
        >>> perturbation = Perturbation(image, num_levels=8, max_blur=20)    # image (1, 3, H, W)
        >>> blended = perturbation.apply(masks)                              # (K, 1, H, W) -> (K, 3, H, W)
        >>> per_image = Perturbation(images).apply(masks)                    # (N, K, 1, H, W) -> (N, K, 3, H, W)
    """

    pyramid: Tensor
    num_levels: int
    max_blur: float
    padding: str
    kind: str

    def __init__(
        self,
        input: Tensor,
        *,
        num_levels: int = 8,
        max_blur: float = 20.0,
        kind: PerturbationLike = "blur",
        padding: str = "zeros",
    ) -> None:
        super().__init__()
        if not isinstance(input, Tensor) or input.dim() not in (3, 4) or not input.is_floating_point():
            got = f"shape {tuple(input.shape)}, {input.dtype}" if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"input must be a floating-point tensor of shape (N, C, H, W) or (C, H, W), got {got}")
        if isinstance(num_levels, bool) or not isinstance(num_levels, numbers.Integral) or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
        if isinstance(max_blur, bool) or not isinstance(max_blur, numbers.Real) or not max_blur > 0:
            raise ValueError(f"max_blur must be a positive number of pixels, got {max_blur!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
        x = input.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        self.num_levels = int(num_levels)
        self.max_blur = float(max_blur)
        self.padding = padding
        self.kind = kind if isinstance(kind, str) else ("baseline" if isinstance(kind, Tensor) else "custom")
        strength_of = _strengths(self.num_levels)
        with torch.no_grad():
            perturb = _perturb_fn(kind, x, self.max_blur, padding)
            levels = [perturb(x, s) if s > 0 else x for s in strength_of]
            for level in levels:
                if not isinstance(level, Tensor) or level.shape != x.shape:
                    got = tuple(level.shape) if isinstance(level, Tensor) else type(level).__name__
                    raise ValueError(f"the perturbation must return a tensor of the input's shape {tuple(x.shape)}, "
                                     f"got {got}")
            self.register_buffer("pyramid", torch.stack(levels, 1).to(x.dtype))

    @property
    def input(self) -> Tensor:
        """The unperturbed input ``(N, C, H, W)`` (the top level)."""
        return self.pyramid[:, -1]

    def apply(self, mask: Tensor) -> Tensor:  # type: ignore[override]
        """Blend the levels by ``mask`` (1 keeps the input, 0 perturbs most).

        (This replaces ``nn.Module.apply(fn)``, which a pyramid has no use for.)

        Shapes: a ``(1, C, H, W)`` input with masks ``(K, 1, H, W)`` gives
        ``(K, C, H, W)``; ``N`` inputs with masks ``(N, K, 1, H, W)`` give
        ``(N, K, C, H, W)``.
        """
        n, _, channels, height, width = self.pyramid.shape
        if mask.dim() == 4 and n == 1:
            rows = mask.shape[0]
            return self.apply_rows(mask, torch.zeros(rows, dtype=torch.long, device=mask.device))
        if mask.dim() == 5 and mask.shape[0] == n:
            k = mask.shape[1]
            image = torch.arange(n, device=mask.device).repeat_interleave(k)
            out = self.apply_rows(mask.reshape(n * k, *mask.shape[2:]), image)
            return out.view(n, k, channels, height, width)
        raise ValueError(
            f"mask must be (K, 1, H, W) for one input or (N, K, 1, H, W) for N={n} inputs, with (H, W) = "
            f"{(height, width)}; got shape {tuple(mask.shape)}"
        )

    def apply_rows(self, mask: Tensor, image: Tensor) -> Tensor:
        """Blend row by row: mask ``r`` ``(R, 1, H, W)`` applied to input ``image[r]`` -> ``(R, C, H, W)``.

        The form methods use to perturb any mix of images in one batch.
        """
        n, levels, channels, height, width = self.pyramid.shape
        if mask.dim() != 4 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (height, width):
            raise ValueError(f"mask must have shape (R, 1, {height}, {width}), got {tuple(mask.shape)}")
        if image.shape != (mask.shape[0],):
            raise ValueError(f"image must hold one input number per mask, shape ({mask.shape[0]},), "
                             f"got {tuple(image.shape)}")
        mask = mask.to(self.pyramid.dtype)
        scaled = mask * (levels - 1)
        lower = scaled.detach().floor().clamp(0, levels - 2)
        frac = scaled - lower
        flat = self.pyramid.view(n * levels, channels, height, width)
        index = (image.to(flat.device).view(-1, 1, 1, 1) * levels + lower.long()).expand(-1, channels, -1, -1)
        below = flat.gather(0, index)
        above = flat.gather(0, index + 1)
        return below + frac * (above - below)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_levels={self.num_levels}, max_blur={self.max_blur}, " \
               f"pyramid={tuple(self.pyramid.shape)}"


def _strengths(num_levels: int) -> list[float]:
    """Strength ``1 - l/(L-1)`` of each level ``l``, computed in float32 like TorchRay's ``linspace``."""
    return (1 - torch.linspace(0, 1, num_levels, dtype=torch.float32)).tolist()


def _perturb_fn(kind: PerturbationLike, x: Tensor, max_blur: float, padding: str) -> PerturbFn:
    """The perturbation ``P(x, strength)`` a ``kind`` stands for."""
    if isinstance(kind, Tensor):
        try:
            baseline = kind.detach().to(device=x.device, dtype=x.dtype).expand_as(x)
        except RuntimeError:
            raise ValueError(
                f"a baseline perturbation of shape {tuple(kind.shape)} does not broadcast to the input {tuple(x.shape)}"
            ) from None
        return lambda image, s: baseline + (1 - s) * (image - baseline)
    if isinstance(kind, str):
        if kind == "blur":
            return lambda image, s: gaussian_blur(image, s * max_blur, padding=padding)
        if kind == "fade":
            return lambda image, s: image * (1 - s)
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, a baseline tensor or a callable; got {kind!r}")
    if callable(kind):
        return kind
    raise TypeError(f"kind must be 'blur', 'fade', a baseline tensor or a callable, got {type(kind).__name__}")
