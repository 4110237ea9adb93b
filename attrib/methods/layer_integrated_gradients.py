r"""Path methods at a layer: Layer Integrated Gradients and Layer Conductance."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.baselines import as_baselines
from ..core.batching import BatchSize, add_rows_per_example, check_batch_size, fold_blocks, sample_major_rows
from ..core.checks import positive_int
from ..core.forward import Model
from ..core.inputs import InputBatch, InputsLike, as_forward_args, as_input_batch
from ..core.quadrature import quadrature
from ..gradient_attribution import times_inputs
from ..layer_attribution import ExplicitLayerAttribution, bool_option
from ..targets import TargetLike
from .integrated_gradients import _column, _per_example_sum


class LayerIntegratedGradients(ExplicitLayerAttribution):
    r"""Integrated Gradients in a layer's space (Captum's ``LayerIntegratedGradients``).

    With :math:`a = f_\ell(x)` the layer's output at the inputs and
    :math:`a' = f_\ell(x')` at the baselines (both given in *input* space,
    e.g. token ids and pad-token ids), the model is run on :math:`x` with the
    layer's output replaced by points of the straight path from :math:`a'` to :math:`a`:

    .. math::
        M = (a - a') \odot \int_0^1 \frac{\partial S_t\big(x;\ f_\ell \leftarrow a' + \alpha (a - a')\big)}
        {\partial f_\ell}\, d\alpha
        \approx (a - a') \odot \sum_{s=1}^{n} w_s\, \frac{\partial S_t(\dots a' + \alpha_s (a - a'))}{\partial f_\ell}

    with the nodes and weights :math:`(\alpha_s, w_s)` of a quadrature rule
    (:mod:`attrib.core.quadrature`; Gauss-Legendre by default, as in Captum).
    Everything the model computes from :math:`x` other than through the layer
    keeps its value at :math:`x`. If the model's output depends on :math:`x`
    only through the layer, completeness holds:
    :math:`\sum M = S_t(x) - S_t(x')` up to the quadrature error, which
    ``return_convergence_delta=True`` reports per example.

    ``attribute_to_layer_input=True`` works at the layer's input (its one
    positional argument) instead. ``multiply_by_inputs=False`` gives the
    path-averaged gradient without the factor :math:`a - a'` (the delta is
    still that of the completed map). Inputs may be integer token ids: only
    the layer's values are differentiated.

    The ``n_steps x N`` rows are evaluated ``batch_size`` rows at a time
    (sample-major: all examples at step 1, then step 2, ...); peak memory is
    one block plus the ``(N, ...)`` layer values at inputs and baselines and
    the running sum. Shapes: the layer's ``(N, ...)``, or ``(N, K, ...)`` for
    an ``(N, K)`` target; the delta is ``(N,)`` or ``(N, K)``.

    Example:
        >>> lig = attrib.LayerIntegratedGradients(text_model, "embedding")
        >>> maps, delta = lig.attribute(token_ids, target=1, baselines=pad_id, n_steps=32,
        ...                             batch_size=256, return_convergence_delta=True)  # (N, T, D), (N,)
        >>> per_token = maps.sum(-1)                                                     # (N, T)
    """

    def __init__(
        self, model: Model, layer: str | nn.Module, *, multiply_by_inputs: bool = True, eval_mode: bool = True
    ) -> None:
        super().__init__(model, layer, eval_mode=eval_mode)
        self.multiply_by_inputs = bool_option(multiply_by_inputs, "multiply_by_inputs")

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
        attribute_to_layer_input: bool = False,
        return_convergence_delta: bool = False,
    ) -> Any:
        """Layer integrated gradients of ``target`` for ``inputs`` from ``baselines`` (zeros by default).

        ``baselines`` are in input space (for token ids: the reference ids).
        Returns the map ``(N, ...)`` / ``(N, K, ...)``, or ``(map, delta)``
        with ``delta = sum((a - a') * integral) - (S_t(x) - S_t(x'))``.
        """
        batch = as_input_batch(inputs, floating=False)
        args = as_forward_args(additional_forward_args, batch.n)
        starts = InputBatch(as_baselines(baselines, batch), batch.form)
        batch_size = check_batch_size(batch_size)
        at_input = bool_option(attribute_to_layer_input, "attribute_to_layer_input")
        n, device = batch.n, batch.device
        alphas, weights = quadrature(method, n_steps, device=device)
        sums: list[Tensor] = []

        with self._guard():
            end, resolved, end_scores = self._layer_activations(batch, args, batch_size, target, at_input=at_input)
            start, _, start_scores = self._layer_activations(starts, args, batch_size, resolved, at_input=at_input)
            self._check_differentiable(end, at_input)
            path = end - start

            def gradients(first: int, stop: int) -> Tensor:
                example, step = sample_major_rows(first, stop, n, device)
                values = start.index_select(0, example) + _column(alphas[step], path) * path.index_select(0, example)
                rows, rows_args = batch.rows(example), args.rows(example)
                return self._replaced_gradients(rows, rows_args, resolved, example, values, at_input=at_input)

            def accumulate(first: int, stop: int, grad: Tensor) -> None:
                if not sums:
                    sums.append(grad.new_zeros((n, *grad.shape[1:])))
                add_rows_per_example(sums[0], grad, first, weights)

            fold_blocks(n_steps * n, batch_size, gradients, accumulate)
        (completed,) = times_inputs((path,), (sums[0],))
        maps = completed if self.multiply_by_inputs else sums[0]
        if not return_convergence_delta:
            return maps
        gain = end_scores - start_scores
        return maps, _per_example_sum(completed, gain.dim()) - gain


class LayerConductance(ExplicitLayerAttribution):
    r"""Layer conductance (Dhamdhere et al., 2018; Captum's ``LayerConductance``).

    The inputs follow the straight path :math:`x(\alpha) = x' + \alpha (x - x')`
    and each unit :math:`j` of the layer's output :math:`a(\alpha) = f_\ell(x(\alpha))`
    is credited with the score's gradient times its own change along the path:

    .. math::
        M_j = \int_0^1 \frac{\partial S_t}{\partial a_j}\, \frac{d a_j}{d\alpha}\, d\alpha
        \approx \sum_{s=0}^{n-1} \frac{\partial S_t}{\partial a_j}\Big|_{\alpha_s}
        \big(a_j(\alpha_{s+1}) - a_j(\alpha_s)\big)

    at the ``n_steps + 1`` nodes :math:`\alpha_0 < \dots < \alpha_n` of the
    quadrature rule ``method`` (Captum's discretisation: only its nodes are
    used). ``riemann_trapezoid`` puts the end nodes at 0 and 1, so the
    activation changes add up to exactly :math:`a(1) - a(0)`; Gauss-Legendre
    (the default, as in Captum) leaves out :math:`O(1/n^2)` at each end. When
    the score depends on the inputs only through the layer,
    :math:`\sum_j M_j \to S_t(x) - S_t(x')`; ``return_convergence_delta=True``
    reports the gap per example. ``attribute_to_layer_input=True`` works at the
    layer's input instead.

    The ``(n_steps + 1) x N`` rows are evaluated ``batch_size`` rows at a
    time, sample-major; each example's last activation and gradient carry
    over from one block to the next, so peak memory is one block plus
    ``(N, ...)`` running values. Inputs must be floating point (they are
    interpolated). Shapes: the layer's ``(N, ...)``, or ``(N, K, ...)`` for
    an ``(N, K)`` target; the delta is ``(N,)`` or ``(N, K)``.

    Example:
        >>> cond = attrib.LayerConductance(model, "layer3")
        >>> maps, delta = cond.attribute(images, target=3, n_steps=32, batch_size=64,
        ...                              return_convergence_delta=True)
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
        attribute_to_layer_input: bool = False,
        return_convergence_delta: bool = False,
    ) -> Any:
        """Conductance of every unit of the layer for ``target``, from ``baselines`` (zeros by default) to ``inputs``.

        Returns the map ``(N, ...)`` / ``(N, K, ...)``, or ``(map, delta)``
        with ``delta = sum(map) - (S_t(x) - S_t(x'))``.
        """
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        starts = as_baselines(baselines, batch)
        batch_size = check_batch_size(batch_size)
        at_input = bool_option(attribute_to_layer_input, "attribute_to_layer_input")
        n, device = batch.n, batch.device
        n_steps = positive_int(n_steps, "n_steps", "the number of integration steps")
        alphas, _ = quadrature(method, n_steps + 1, device=device)
        paths = tuple(x - b for x, b in zip(batch.tensors, starts))
        # total, and each example's activation and gradient at its latest node so far
        state: list[Tensor] = []

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)

            def gradients(first: int, stop: int) -> tuple[Tensor, Tensor]:
                example, step = sample_major_rows(first, stop, n, device)
                rows = tuple(
                    b.index_select(0, example) + _column(alphas[step], p) * p.index_select(0, example)
                    for b, p in zip(starts, paths)
                )
                return self._layer_gradients(rows, args.rows(example), resolved, example, at_input=at_input)

            def accumulate(first: int, stop: int, block: tuple[Tensor, Tensor]) -> None:
                activation, grad = block
                if not state:  # the last gradient starts at zero: the first node adds nothing
                    per_example = (n, *grad.shape[1:])
                    state.extend((grad.new_zeros(per_example), activation.new_zeros((n, *activation.shape[1:]))))
                    state.append(grad.new_zeros(per_example))
                total, last_activation, last_grad = state
                rows = activation.shape[0]
                carried = min(n, rows)  # rows whose previous node lies in an earlier block
                head = torch.arange(first, first + carried, device=device) % n
                before = torch.cat((last_activation.index_select(0, head), activation[: rows - carried]))
                before_grad = torch.cat((last_grad.index_select(0, head), grad[: rows - carried]))
                (change,) = times_inputs((activation - before,), (before_grad,))
                add_rows_per_example(total, change, first)
                tail = torch.arange(stop - carried, stop, device=device) % n
                last_activation.index_copy_(0, tail, activation[rows - carried :])
                last_grad.index_copy_(0, tail, grad[rows - carried :])

            fold_blocks((n_steps + 1) * n, batch_size, gradients, accumulate)
            maps = state[0]
            if not return_convergence_delta:
                return maps
            gain = self._scores(batch.tensors, args, resolved, batch_size) - self._scores(
                starts, args, resolved, batch_size
            )
        return maps, _per_example_sum(maps, gain.dim()) - gain
