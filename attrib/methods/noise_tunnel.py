"""NoiseTunnel: SmoothGrad, SmoothGrad-squared and VarGrad around any method."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from ..attribution import Attribution
from ..core.batching import BatchSize, add_rows_per_example, check_batch_size, fold_blocks, sample_major_rows
from ..core.checks import positive_int
from ..core.inputs import InputBatch, InputsLike, as_forward_args, as_input_batch, as_result_tuple
from ..core.randomness import NoiseStream, draw_dtype, make_generator
from ..core.signatures import accepts
from ..targets import TargetLike

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
STDEV_MODES = ("relative", "absolute")


class NoiseTunnel(Attribution):
    r"""Average a method's maps over noisy copies of the input.

    With :math:`A` the wrapped method, :math:`n` samples and
    :math:`\epsilon_s \sim \mathcal{N}(0, \sigma^2)`:

    * ``"smoothgrad"`` (Smilkov et al., 2017): :math:`\frac1n \sum_s A(x + \epsilon_s)`
    * ``"smoothgrad_sq"``: :math:`\frac1n \sum_s A(x + \epsilon_s)^2` (FastEstimator's magnitude)
    * ``"vargrad"`` (Adebayo et al., 2018):
      :math:`\frac1n \sum_s A(x + \epsilon_s)^2 - \big(\frac1n \sum_s A(x + \epsilon_s)\big)^2`

    By default :math:`\sigma` is ``stdev = 0.15`` times each example's range
    ``max(x) - min(x)`` (``stdev_mode="relative"``); ``stdev_mode="absolute"``
    takes ``stdev`` as is. ``stdev`` may be a tuple with one value per input.
    An example whose values are all equal (an all-zero image, a single
    feature) has no range to be relative to: it gets the absolute
    :math:`\sigma = \text{stdev}`, i.e. its range counts as 1, so it is never
    silently left without noise.
    The target is fixed on the clean input, so every noisy copy explains the
    same class. Noise comes from ``generator`` or a private generator seeded
    with ``seed`` (never torch's global RNG). The noise depends on the seed
    only, never on ``batch_size``: the same seed and ``batch_size`` give
    bit-identical maps, and another ``batch_size`` the same maps up to float
    rounding (the per-example sums are grouped differently).

    ``batch_size`` is the most noisy rows handed to the wrapped method at once
    (and is passed on to it): a positive int, ``"auto"`` (the largest block
    that fits in memory) or None (all ``n_samples x N`` rows at once). Peak
    memory is that of one block plus the ``(N, ...)`` running sums, whatever
    ``n_samples``. Other keyword options go to the wrapped method, e.g.
    ``n_steps`` for Integrated Gradients. Maps have the wrapped method's
    shapes. With ``return_convergence_delta=True`` (for a wrapped method that
    has a delta, such as Integrated Gradients) the result is ``(maps, delta)``
    where ``delta`` holds the wrapped method's delta on every noisy sample, as
    in Captum: ``(N * n_samples,)`` (or ``(N * n_samples, K)``), example-major,
    so ``delta.view(N, n_samples)[n, s]`` belongs to sample ``s`` of example ``n``.

    Example:
        >>> smooth = attrib.NoiseTunnel(attrib.Saliency(model))
        >>> maps = smooth.attribute(images, target=3, n_samples=50, seed=0)
        >>> sg_ig = attrib.NoiseTunnel(attrib.IntegratedGradients(model))
        >>> maps = sg_ig.attribute(images, kind="smoothgrad_sq", n_steps=16, batch_size=64, seed=0)
        >>> maps, delta = sg_ig.attribute(images, n_samples=8, seed=0, return_convergence_delta=True)
    """

    def __init__(self, method: Attribution) -> None:
        if not isinstance(method, Attribution):
            raise TypeError(f"method must be an attrib.Attribution, got {type(method).__name__}")
        super().__init__(method.model, eval_mode=method.eval_mode)
        self.method = method

    def __repr__(self) -> str:
        return f"NoiseTunnel({self.method!r})"

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        kind: str = "smoothgrad",
        n_samples: int = 25,
        stdev: float | tuple[float, ...] = 0.15,
        stdev_mode: str = "relative",
        batch_size: BatchSize = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        additional_forward_args: Any = None,
        **method_options: Any,
    ) -> Any:
        """Noise-averaged maps of the wrapped method (see the class docstring)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        n_samples = positive_int(n_samples, "n_samples", "the number of noisy copies per example")
        if stdev_mode not in STDEV_MODES:
            raise ValueError(f"stdev_mode must be 'relative' or 'absolute', got {stdev_mode!r}")
        with_delta = bool(method_options.pop("return_convergence_delta", False))
        inner = self.method.attribute
        if with_delta and not accepts(inner, "return_convergence_delta"):
            raise ValueError(
                "return_convergence_delta=True needs a wrapped method with a convergence delta; "
                f"{self.method!r} has none"
            )
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        batch_size = check_batch_size(batch_size)
        scales = _noise_scales(batch, stdev, relative=stdev_mode == "relative")
        rng = make_generator(seed, generator, batch.device)
        n, device = batch.n, batch.device
        if batch_size is not None and accepts(inner, "batch_size"):
            method_options["batch_size"] = batch_size
        if with_delta:
            method_options["return_convergence_delta"] = True

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            noise = NoiseStream(lambda: self.sample_noise(batch.tensors, scales, rng), n)
            sums: list[Tensor] = []
            squares: list[Tensor] = []
            deltas: list[Tensor] = []

            def noisy_maps(start: int, stop: int) -> tuple[tuple[Tensor, ...], Tensor | None]:
                example, _ = sample_major_rows(start, stop, n, device)
                noisy = tuple(x + eps for x, eps in zip(batch.rows(example), noise.rows(start, stop)))
                options = _rows_of_options(method_options, example, batch.tensors)
                if args.args:
                    options["additional_forward_args"] = args.rows(example)
                result = inner(batch.restore(noisy), resolved.select(example), **options)
                delta = None
                if with_delta:
                    result, delta = result
                return as_result_tuple(result, repr(self.method)), delta

            def accumulate(start: int, stop: int, result: tuple[tuple[Tensor, ...], Tensor | None]) -> None:
                maps, delta = result
                if not sums:
                    sums.extend(m.new_zeros((n, *m.shape[1:])) for m in maps)
                    if kind != "smoothgrad":
                        squares.extend(m.new_zeros((n, *m.shape[1:])) for m in maps)
                for acc, m in zip(sums, maps):
                    add_rows_per_example(acc, m, start)
                for acc, m in zip(squares, maps):
                    add_rows_per_example(acc, m * m, start)
                if delta is not None:
                    deltas.append(delta.detach())

            fold_blocks(n_samples * n, batch_size, noisy_maps, accumulate)
        means = [s / n_samples for s in sums]
        if kind == "smoothgrad":
            maps = batch.restore(means)
        else:
            mean_squares = [s / n_samples for s in squares]
            if kind == "smoothgrad_sq":
                maps = batch.restore(mean_squares)
            else:
                maps = batch.restore([(sq - m * m).clamp(min=0) for sq, m in zip(mean_squares, means)])
        if not with_delta:
            return maps
        # Rows were sample-major (s * N + n); Captum lays deltas out example-major (n * n_samples + s).
        delta = torch.cat(deltas)
        trailing = delta.shape[1:]
        return maps, delta.view(n_samples, n, *trailing).transpose(0, 1).reshape(n * n_samples, *trailing)

    def sample_noise(
        self, inputs: tuple[Tensor, ...], scales: tuple[Tensor, ...], generator: torch.Generator
    ) -> tuple[Tensor, ...]:
        """One noisy copy's noise for all ``N`` examples: ``scale * N(0, 1)`` per input.

        Called once per copy, in order; override to change the noise model.
        The standard normal draws are made in at least float32 and then cast,
        so a half-precision call sees the same noise as a float32 one.
        """
        return tuple(
            (torch.randn(x.shape, generator=generator, device=x.device, dtype=draw_dtype(x)) * scale).to(x.dtype)
            for x, scale in zip(inputs, scales)
        )


def _noise_scales(batch: InputBatch, stdev: Any, *, relative: bool) -> tuple[Tensor, ...]:
    """Per-input noise standard deviations, shaped ``(N, 1, ...)`` to broadcast."""
    k = len(batch.tensors)
    values = tuple(stdev) if isinstance(stdev, (tuple, list)) else (stdev,) * k
    if len(values) != k:
        raise ValueError(f"stdev must be a number or a tuple with one number per input ({k}), got {len(values)}")
    scales = []
    for value, x in zip(values, batch.tensors):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < math.inf:
            raise ValueError(f"stdev must be a non-negative finite number, got {value!r}")
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        if relative:
            flat = x.reshape(x.shape[0], -1)
            spread = flat.amax(1) - flat.amin(1)
            # A constant example has no range: its noise is absolute (range counted as 1).
            spread = torch.where(spread > 0, spread, torch.ones_like(spread))
            scales.append((float(value) * spread).view(shape))
        else:
            scales.append(torch.full(shape, float(value), dtype=x.dtype, device=x.device))
    return tuple(scales)


def _rows_of_options(options: dict[str, Any], example: Tensor, inputs: tuple[Tensor, ...]) -> dict[str, Any]:
    """Copy the wrapped method's options, selecting the rows of per-example ``(N, ...)`` baselines."""
    out = dict(options)
    baselines = options.get("baselines")
    if baselines is not None:
        entries = baselines if isinstance(baselines, tuple) else (baselines,)
        picked = tuple(
            b.index_select(0, example.to(b.device)) if _per_example(b, x) else b for b, x in zip(entries, inputs)
        )
        out["baselines"] = picked if isinstance(baselines, tuple) else picked[0]
    return out


def _per_example(baseline: Any, x: Tensor) -> bool:
    return isinstance(baseline, Tensor) and baseline.dim() == x.dim() and baseline.shape[0] == x.shape[0] > 1
