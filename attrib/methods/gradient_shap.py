r"""GradientSHAP: expected gradients between a noisy input and references drawn from a set."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from ..core.batching import BatchSize, add_rows_per_example, check_batch_size, fold_blocks, sample_major_rows
from ..core.checks import positive_int
from ..core.forward import Model, run_model
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..core.randomness import NoiseStream, draw_dtype, make_generator
from ..gradient_attribution import GradientAttribution, times_inputs
from ..targets import TargetLike
from .deeplift import baseline_set, row_totals


class GradientShap(GradientAttribution):
    r"""GradientSHAP (Lundberg & Lee, 2017), as in Captum.

    .. math::
        A_i(x) = \mathbb{E}_{b, \alpha, \epsilon}\Big[(\tilde x_i - b_i)\,
        \frac{\partial S_t\big(\alpha \tilde x + (1 - \alpha)\, b\big)}{\partial x_i}\Big],
        \qquad \tilde x = x + \epsilon

    with :math:`b` drawn uniformly from the reference set ``baselines``
    (``(B, ...)``, a tuple of such per input), :math:`\alpha \sim U[0, 1]`
    and :math:`\epsilon \sim \mathcal{N}(0, \text{stdev}^2)` added to the
    input, estimated with ``n_samples`` draws per example. As in Captum, the
    noise enters both the interpolation end point and the factor
    :math:`\tilde x - b`; with ``stdev=0`` (the default) it is
    :math:`\mathbb{E}[(x - b) \nabla S(b + \alpha (x - b))]`, an expected
    Integrated Gradients. With ``multiply_by_inputs=False`` the map is the
    expected gradient without the factor.

    Each copy ``s`` of the ``N`` examples draws, in this order, one reference
    index and one :math:`\alpha` per example, then the noise of every input
    (:meth:`sample_draws`), from ``generator`` or a private generator seeded
    with ``seed`` on the inputs' device (never torch's global RNG): the same
    seed gives the same draws whatever ``batch_size``. The ``n_samples x N``
    rows are evaluated ``batch_size`` rows per forward pass (Captum evaluates
    them all at once) and folded into per-example sums as they go.

    With ``return_convergence_delta=True`` the result is ``(maps, delta)``
    where, as in Captum, ``delta`` holds per drawn sample
    ``sum_i (x~_i - b_i) g_i - (S_t(x~) - S_t(b))``: ``(N * n_samples,)`` (or
    ``(N * n_samples, K)``), example-major, so ``delta.view(N, n_samples)[n, s]``
    belongs to sample ``s`` of example ``n`` (two more forward passes per block).
    Maps are ``(N, ...)`` per input, ``(N, K, ...)`` for an ``(N, K)`` target.

    Example:
        >>> gs = GradientShap(model)
        >>> maps = gs.attribute(images, target=3, baselines=background, n_samples=20, stdev=0.1, seed=0)
    """

    def __init__(self, model: Model, *, multiply_by_inputs: bool = True, eval_mode: bool = True) -> None:
        super().__init__(model, eval_mode=eval_mode)
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
        self.multiply_by_inputs = multiply_by_inputs

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = None,
        n_samples: int = 5,
        stdev: float | tuple[float, ...] = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Any:
        """GradientSHAP maps of ``target`` for ``inputs`` over the reference set ``baselines``."""
        n_samples = positive_int(n_samples, "n_samples", "the number of draws per example")
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        references = baseline_set(baselines, batch)
        stdevs = _stdevs(stdev, len(batch.tensors))
        batch_size = check_batch_size(batch_size)
        rng = make_generator(seed, generator, batch.device)
        n, device = batch.n, batch.device
        sums: list[Tensor] = []
        deltas: list[Tensor] = []

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            draws = NoiseStream(lambda: self.sample_draws(batch.tensors, references, stdevs, rng), n)

            def compute(start: int, stop: int) -> tuple[tuple[Tensor, ...], Tensor | None]:
                example, _ = sample_major_rows(start, stop, n, device)
                *noise, alpha, index = draws.rows(start, stop)
                noisy = tuple(x + eps for x, eps in zip(batch.rows(example), noise))
                starts = tuple(r.index_select(0, index) for r in references)
                points = tuple(_column(alpha, x) * x + (1.0 - _column(alpha, x)) * b for x, b in zip(noisy, starts))
                row_args = args.rows(example)
                grads = self._block_gradients(points, row_args, resolved, example)
                completed = times_inputs(tuple(x - b for x, b in zip(noisy, starts)), grads)
                maps = completed if self.multiply_by_inputs else grads
                if not return_convergence_delta:
                    return maps, None
                with torch.no_grad():
                    gain = resolved.scores(run_model(self.model, noisy, row_args), example) - resolved.scores(
                        run_model(self.model, starts, row_args), example
                    )
                return maps, row_totals(completed, gain.dim()).to(gain) - gain

            def fold(start: int, stop: int, result: tuple[tuple[Tensor, ...], Tensor | None]) -> None:
                maps, delta = result
                if not sums:
                    sums.extend(m.new_zeros((n, *m.shape[1:])) for m in maps)
                for acc, m in zip(sums, maps):
                    add_rows_per_example(acc, m, start)
                if delta is not None:
                    deltas.append(delta.detach())

            fold_blocks(n_samples * n, batch_size, compute, fold)
        maps = batch.restore([s / n_samples for s in sums])
        if not return_convergence_delta:
            return maps
        # Rows were sample-major (s * N + n); Captum lays deltas out example-major (n * n_samples + s).
        delta = torch.cat(deltas)
        trailing = delta.shape[1:]
        return maps, delta.view(n_samples, n, *trailing).transpose(0, 1).reshape(n * n_samples, *trailing)

    def sample_draws(
        self,
        inputs: tuple[Tensor, ...],
        baselines: tuple[Tensor, ...],
        stdevs: tuple[float, ...],
        generator: torch.Generator,
    ) -> tuple[Tensor, ...]:
        """One copy's draws for all ``N`` examples: ``(*noise, alpha, index)``.

        ``noise`` has one ``(N, ...)`` tensor per input
        (:math:`\\mathcal{N}(0, \\text{stdev}^2)`, zeros where ``stdev`` is 0),
        ``alpha`` is ``(N,)`` uniform on [0, 1) and ``index`` ``(N,)`` the
        reference each example is paired with, uniform over the ``B``
        references. Called once per copy, in order; override to change the
        sampling (e.g. to replay given draws).
        """
        n, device = inputs[0].shape[0], inputs[0].device
        index = torch.randint(baselines[0].shape[0], (n,), generator=generator, device=device)
        alpha = torch.rand(n, generator=generator, device=device, dtype=draw_dtype(inputs[0]))
        noise = tuple(
            (torch.randn(x.shape, generator=generator, device=device, dtype=draw_dtype(x)) * s).to(x.dtype)
            if s > 0
            else torch.zeros((), dtype=x.dtype, device=device).expand(x.shape)
            for x, s in zip(inputs, stdevs)
        )
        return (*noise, alpha, index)


def _column(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``(R,)`` shaped to broadcast against rows like ``like`` ``(R, ...)``, in its dtype."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _stdevs(stdev: Any, k: int) -> tuple[float, ...]:
    values = tuple(stdev) if isinstance(stdev, (tuple, list)) else (stdev,) * k
    if len(values) != k:
        raise ValueError(f"stdev must be a number or a tuple with one number per input ({k}), got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < math.inf:
            raise ValueError(f"stdev must be a non-negative finite number (or a tuple of them), got {value!r}")
    return tuple(float(v) for v in values)
