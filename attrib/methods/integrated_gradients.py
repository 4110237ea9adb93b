"""Integrated Gradients."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..core.baselines import as_baselines
from ..core.batching import BatchSize, add_rows_per_example, check_batch_size, row_blocks, sample_major_rows
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..core.quadrature import quadrature
from ..gradient_attribution import GradientAttribution, times_inputs
from ..targets import TargetLike


class IntegratedGradients(GradientAttribution):
    r"""Integrated Gradients (Sundararajan et al., 2017).

    .. math::
        A_i(x) = (x_i - x'_i) \int_0^1
        \frac{\partial S_t\big(x' + \alpha (x - x')\big)}{\partial x_i}\, d\alpha
        \approx (x_i - x'_i) \sum_{s=1}^{n} w_s
        \frac{\partial S_t\big(x' + \alpha_s (x - x')\big)}{\partial x_i}

    with baseline :math:`x'` and the nodes/weights :math:`(\alpha_s, w_s)` of
    a quadrature rule (:mod:`attrib.quadrature`). Completeness:
    :math:`\sum_i A_i(x) = S_t(x) - S_t(x')` up to the quadrature error, which
    ``return_convergence_delta=True`` reports per example.

    The ``n_steps x N`` interpolated rows are evaluated ``batch_size`` rows at
    a time (any positive value; results do not depend on it beyond rounding).
    Shapes as :class:`attrib.Saliency`; the delta is ``(N,)`` or ``(N, K)``.

    Example:
        >>> ig = attrib.IntegratedGradients(model)
        >>> maps, delta = ig.attribute(images, target=3, n_steps=64, batch_size=128,
        ...                            return_convergence_delta=True)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Any:
        """Integrated gradients of ``target`` for ``inputs`` from ``baselines`` (zeros by default).

        Returns the maps in the form of ``inputs``, or ``(maps, delta)`` with
        ``delta = sum(maps) - (S_t(x) - S_t(x'))`` when
        ``return_convergence_delta`` is True.
        """
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        starts = as_baselines(baselines, batch)
        batch_size = check_batch_size(batch_size)
        n, device = batch.n, batch.device
        alphas, weights = quadrature(method, n_steps, device=device)
        paths = tuple(x - b for x, b in zip(batch.tensors, starts))
        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            sums: list[Tensor] = []
            for start, stop in row_blocks(n_steps * n, batch_size):
                example, step = sample_major_rows(start, stop, n, device)
                rows = tuple(
                    b.index_select(0, example) + _column(alphas[step], p) * p.index_select(0, example)
                    for b, p in zip(starts, paths)
                )
                grads = self._block_gradients(rows, args.rows(example), resolved, example)
                if not sums:
                    sums = [g.new_zeros((n, *g.shape[1:])) for g in grads]
                for acc, g in zip(sums, grads):
                    add_rows_per_example(acc, g, start, weights)
            maps = times_inputs(paths, tuple(sums))
            if not return_convergence_delta:
                return batch.restore(maps)
            gain = self._scores(batch.tensors, args, resolved, batch_size) - self._scores(
                starts, args, resolved, batch_size
            )
        total = sum(_per_example_sum(m, gain.dim()) for m in maps)
        return batch.restore(maps), total - gain


def _column(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``(R,)`` shaped to broadcast against rows like ``like`` ``(R, ...)``, in its dtype."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _per_example_sum(m: Tensor, score_dims: int) -> Tensor:
    """Sum a map over everything but ``N`` (and ``K`` when scores are ``(N, K)``)."""
    return m.flatten(score_dims).sum(score_dims)
