"""Integrated Gradients."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..core.baselines import as_baselines
from ..core.batching import BatchSize, add_rows_per_example, check_batch_size, fold_blocks, sample_major_rows
from ..core.forward import Model
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

    With ``multiply_by_inputs=False`` (Captum's option of that name) the map is
    the path-averaged gradient :math:`\sum_s w_s \partial S_t / \partial x_i`
    without the factor :math:`(x_i - x'_i)`; the delta is still that of the
    completed map, so it means the same thing either way.

    The ``n_steps x N`` interpolated rows are evaluated ``batch_size`` rows at
    a time (a positive int, ``"auto"`` to find the largest block that fits in
    memory, or None for all at once); results do not depend on it beyond
    float rounding (sums grouped differently), and are bit-identical across
    calls with the same ``batch_size``. Peak memory is that of one block of ``batch_size`` rows plus the
    ``(N, ...)`` running sums, whatever ``n_steps``. Shapes as
    :class:`attrib.Saliency`; the delta is ``(N,)`` or ``(N, K)``.

    Example:
        >>> ig = attrib.IntegratedGradients(model)
        >>> maps, delta = ig.attribute(images, target=3, n_steps=64, batch_size=128,
        ...                            return_convergence_delta=True)
        >>> grads = attrib.IntegratedGradients(model, multiply_by_inputs=False).attribute(images, target=3)
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
        n_steps: int = 50,
        method: str = "gausslegendre",
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Any:
        """Integrated gradients of ``target`` for ``inputs`` from ``baselines`` (zeros by default).

        Returns the maps in the form of ``inputs``, or ``(maps, delta)`` with
        ``delta = sum((x - x') * integral) - (S_t(x) - S_t(x'))`` when
        ``return_convergence_delta`` is True (``(N,)``, or ``(N, K)`` for an
        ``(N, K)`` target; also for inputs without feature dimensions).
        """
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        starts = as_baselines(baselines, batch)
        batch_size = check_batch_size(batch_size)
        n, device = batch.n, batch.device
        alphas, weights = quadrature(method, n_steps, device=device)
        paths = tuple(x - b for x, b in zip(batch.tensors, starts))
        sums: list[Tensor] = []

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)

            def gradients(start: int, stop: int) -> tuple[Tensor, ...]:
                example, step = sample_major_rows(start, stop, n, device)
                rows = tuple(
                    b.index_select(0, example) + _column(alphas[step], p) * p.index_select(0, example)
                    for b, p in zip(starts, paths)
                )
                return self._block_gradients(rows, args.rows(example), resolved, example)

            def accumulate(start: int, stop: int, grads: tuple[Tensor, ...]) -> None:
                if not sums:
                    sums.extend(g.new_zeros((n, *g.shape[1:])) for g in grads)
                for acc, g in zip(sums, grads):
                    add_rows_per_example(acc, g, start, weights)

            fold_blocks(n_steps * n, batch_size, gradients, accumulate)
            maps = times_inputs(paths, tuple(sums)) if self.multiply_by_inputs else tuple(sums)
            if not return_convergence_delta:
                return batch.restore(maps)
            gain = self._scores(batch.tensors, args, resolved, batch_size) - self._scores(
                starts, args, resolved, batch_size
            )
        completed = maps if self.multiply_by_inputs else times_inputs(paths, tuple(sums))
        total = sum(_per_example_sum(m, gain.dim()) for m in completed)
        return batch.restore(maps), total - gain


def _column(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``(R,)`` shaped to broadcast against rows like ``like`` ``(R, ...)``, in its dtype."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _per_example_sum(m: Tensor, score_dims: int) -> Tensor:
    """Sum a map over everything but ``N`` (and ``K`` when scores are ``(N, K)``).

    A map of inputs without feature dimensions (``(N,)``, or ``(N, K)`` for an
    ``(N, K)`` target) is already one number per score.
    """
    if m.dim() == score_dims:
        return m
    return m.flatten(score_dims).sum(score_dims)
