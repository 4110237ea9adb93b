"""NoiseTunnel: SmoothGrad, SmoothGrad-squared and VarGrad around any method."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..attribution import Attribution
from ..core.batching import BatchSize, add_rows_per_example, check_batch_size, row_blocks, sample_major_rows
from ..core.inputs import InputBatch, InputsLike, as_forward_args, as_input_batch, as_result_tuple
from ..core.randomness import make_generator
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
    The target is fixed on the clean input, so every noisy copy explains the
    same class. Noise comes from ``generator`` or a private generator seeded
    with ``seed``; the same seed gives the same maps, whatever ``batch_size``.

    ``batch_size`` is the most noisy rows handed to the wrapped method at once
    (and is passed on to it); other keyword options go to the wrapped method,
    e.g. ``n_steps`` for Integrated Gradients. Maps have the wrapped method's
    shapes.

    Example:
        >>> smooth = attrib.NoiseTunnel(attrib.Saliency(model))
        >>> maps = smooth.attribute(images, target=3, n_samples=50, seed=0)
        >>> sg_ig = attrib.NoiseTunnel(attrib.IntegratedGradients(model))
        >>> maps = sg_ig.attribute(images, kind="smoothgrad_sq", n_steps=16, batch_size=64, seed=0)
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
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        if stdev_mode not in STDEV_MODES:
            raise ValueError(f"stdev_mode must be 'relative' or 'absolute', got {stdev_mode!r}")
        if method_options.get("return_convergence_delta"):
            raise ValueError("NoiseTunnel does not return convergence deltas; call the wrapped method for them")
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        batch_size = check_batch_size(batch_size)
        scales = _noise_scales(batch, stdev, relative=stdev_mode == "relative")
        rng = make_generator(seed, generator, batch.device)
        n, device = batch.n, batch.device
        inner = self.method.attribute
        if batch_size is not None and accepts(inner, "batch_size"):
            method_options["batch_size"] = batch_size

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            noise = _NoiseStream(lambda: self.sample_noise(batch.tensors, scales, rng), n)
            sums: list[Tensor] = []
            squares: list[Tensor] = []
            for start, stop in row_blocks(n_samples * n, batch_size):
                example, _ = sample_major_rows(start, stop, n, device)
                noisy = tuple(x + eps for x, eps in zip(batch.rows(example), noise.rows(start, stop)))
                options = _rows_of_options(method_options, example, batch.tensors)
                if args.args:
                    options["additional_forward_args"] = args.rows(example)
                maps = as_result_tuple(
                    inner(batch.restore(noisy), resolved.select(example), **options), repr(self.method)
                )
                if not sums:
                    sums = [m.new_zeros((n, *m.shape[1:])) for m in maps]
                    squares = [m.new_zeros((n, *m.shape[1:])) for m in maps] if kind != "smoothgrad" else []
                for acc, m in zip(sums, maps):
                    add_rows_per_example(acc, m, start)
                for acc, m in zip(squares, maps):
                    add_rows_per_example(acc, m * m, start)
        means = [s / n_samples for s in sums]
        if kind == "smoothgrad":
            return batch.restore(means)
        mean_squares = [s / n_samples for s in squares]
        if kind == "smoothgrad_sq":
            return batch.restore(mean_squares)
        return batch.restore([(sq - m * m).clamp(min=0) for sq, m in zip(mean_squares, means)])

    def sample_noise(
        self, inputs: tuple[Tensor, ...], scales: tuple[Tensor, ...], generator: torch.Generator
    ) -> tuple[Tensor, ...]:
        """One noisy copy's noise for all ``N`` examples: ``scale * N(0, 1)`` per input.

        Called once per copy, in order; override to change the noise model.
        """
        return tuple(
            torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * scale
            for x, scale in zip(inputs, scales)
        )


class _NoiseStream:
    """Noise for sample-major rows, drawn one whole copy (all N examples) at a time.

    Drawing per copy, in order, makes the noise independent of how rows are
    split into blocks; only one copy is held beyond the current block.
    """

    def __init__(self, draw: Callable[[], tuple[Tensor, ...]], n: int) -> None:
        self._draw = draw
        self._n = n
        self._copy = -1
        self._current: tuple[Tensor, ...] = ()

    def rows(self, start: int, stop: int) -> tuple[Tensor, ...]:
        pieces = []
        row = start
        while row < stop:
            copy, example = divmod(row, self._n)
            while self._copy < copy:
                self._current = self._draw()
                self._copy += 1
            take = min(stop - row, self._n - example)
            pieces.append(tuple(c[example : example + take] for c in self._current))
            row += take
        return tuple(parts[0] if len(parts) == 1 else torch.cat(parts) for parts in zip(*pieces))


def _noise_scales(batch: InputBatch, stdev: Any, *, relative: bool) -> tuple[Tensor, ...]:
    """Per-input noise standard deviations, shaped ``(N, 1, ...)`` to broadcast."""
    k = len(batch.tensors)
    values = tuple(stdev) if isinstance(stdev, (tuple, list)) else (stdev,) * k
    if len(values) != k:
        raise ValueError(f"stdev must be a number or a tuple with one number per input ({k}), got {len(values)}")
    scales = []
    for value, x in zip(values, batch.tensors):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
            raise ValueError(f"stdev must be a non-negative number, got {value!r}")
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        if relative:
            flat = x.reshape(x.shape[0], -1)
            spread = flat.amax(1) - flat.amin(1)
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
