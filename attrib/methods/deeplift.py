r"""DeepLIFT with the rescale rule, and DeepLIFT-SHAP over a set of references."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.backprop import backprop
from ..core.baselines import as_baselines
from ..core.batching import BatchSize, add_rows_per_example, check_batch_size, fold_blocks, sample_major_rows
from ..core.deeplift_rules import PairedTrace, RescaleRule
from ..core.forward import Model, run_model, tensor_output
from ..core.inputs import ForwardArgs, InputBatch, InputsLike, as_forward_args, as_input_batch
from ..gradient_attribution import GradientAttribution, times_inputs
from ..targets import Target, TargetLike, resolve_target

PairRows = Callable[[int, int], tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]]
"""``(start, stop) -> (inputs, references, example)``: the rows of pairs ``start..stop-1``."""


def row_totals(maps: tuple[Tensor, ...], score_dims: int) -> Tensor:
    """The sum of every input's map over its features: ``(R,)``, or ``(R, K)`` for ``(R, K)`` scores."""
    totals = [m if m.dim() == score_dims else m.flatten(score_dims).sum(score_dims) for m in maps]
    return sum(totals[1:], totals[0])


def baseline_set(baselines: Any, batch: InputBatch) -> tuple[Tensor, ...]:
    """A set of ``B >= 1`` reference examples per input: each ``(B, *x.shape[1:])``, on the inputs' device and dtype.

    ``baselines`` is a Tensor for a single input, or a tuple with one Tensor
    per input (all with the same ``B``).

    Raises:
        TypeError: an entry is not a floating-point Tensor.
        ValueError: missing, empty, wrongly shaped or non-finite entries.
    """
    if baselines is None:
        raise ValueError("baselines is required: a Tensor (B, ...) of B >= 1 reference examples (a tuple per input)")
    inputs = batch.tensors
    entries = tuple(baselines) if isinstance(baselines, (tuple, list)) else (baselines,)
    if len(entries) != len(inputs):
        raise ValueError(f"baselines must have one Tensor per input ({len(inputs)}), got {len(entries)}")
    out = []
    for i, (b, x) in enumerate(zip(entries, inputs)):
        label = "baselines" if len(inputs) == 1 else f"baselines[{i}]"
        if not isinstance(b, Tensor) or not b.is_floating_point():
            got = f"dtype {b.dtype}" if isinstance(b, Tensor) else type(b).__name__
            raise TypeError(f"{label} must be a floating-point Tensor (B, ...) of reference examples, got {got}")
        if b.dim() != x.dim() or b.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{label} must have shape (B, {', '.join(map(str, x.shape[1:]))}) to match the input's "
                f"{tuple(x.shape)}, got {tuple(b.shape)}"
            )
        if b.shape[0] == 0:
            raise ValueError(f"{label} is an empty set: it must hold at least one reference example")
        if b.shape[0] != entries[0].shape[0]:
            raise ValueError(f"every baselines entry must hold the same number B of references, got {b.shape[0]}")
        out.append(_finite(b.detach().to(device=x.device, dtype=x.dtype), label))
    return tuple(out)


def _finite(t: Tensor, label: str) -> Tensor:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{label} must be finite, but holds NaN or infinite values")
    return t


def _pairs_per_block(batch_size: BatchSize) -> BatchSize:
    """``batch_size`` rows a forward pass, as pairs (an input row and its reference row)."""
    if isinstance(batch_size, int):
        if batch_size < 2:
            raise ValueError(
                f"batch_size must be at least 2 for DeepLift: each forward pass holds an input row and its "
                f"reference row; got {batch_size}"
            )
        return batch_size // 2
    return batch_size


class DeepLift(GradientAttribution):
    r"""DeepLIFT with the rescale rule (Shrikumar et al., 2017).

    The attribution of :math:`x_i` for the difference of the target score
    from the baseline :math:`x'` is

    .. math:: A_i = (x_i - x'_i)\, m_i, \qquad \sum_i A_i = S_t(x) - S_t(x')

    where the multipliers :math:`m` are carried back from the score like a
    gradient, except that each element-wise nonlinearity :math:`f` passes
    :math:`\frac{f(x) - f(x')}{x - x'}` (its plain gradient where
    :math:`|x - x'| <` ``eps``) and max pooling splits the change of its
    output between the input's and the reference's winners
    (:mod:`attrib.core.deeplift_rules`). Linear operations pass the plain
    gradient; operations the rule does not define (softmax, layer norm,
    attention, ...) raise :class:`attrib.UnsupportedModelError`.

    Inputs and baselines run through the model in one forward pass on the
    rows ``[inputs; baselines]``; the rule acts on the autograd graph of that
    pass, so functional ReLUs, a module used twice, nonlinearities created
    inside ``forward`` and in-place modules are all handled. Every
    nonlinearity must see batch-first tensors.

    ``multiply_by_inputs=False`` returns the multipliers :math:`m` (Captum's
    option). ``batch_size`` is the most rows in one forward pass (each block
    holds ``batch_size // 2`` pairs, so at least 2; ``"auto"`` or None as
    elsewhere); results do not depend on it. ``baselines`` as for
    :class:`attrib.IntegratedGradients` (zeros by default). Maps are
    ``(N, ...)`` per input or ``(N, K, ...)`` for an ``(N, K)`` target; with
    ``return_convergence_delta=True`` the result is ``(maps, delta)`` with
    ``delta = sum_i A_i - (S_t(x) - S_t(x'))`` per example, ``(N,)`` or
    ``(N, K)``, from the same forward pass (it is 0 up to rounding on ReLU
    and max-pool networks). A top-1 target (None) is read off the input rows
    of that pass.

    Example:
        >>> dl = DeepLift(model)
        >>> maps, delta = dl.attribute(images, target=3, baselines=0.0, return_convergence_delta=True)
        >>> multipliers = DeepLift(model, multiply_by_inputs=False).attribute(images, target=3)
    """

    def __init__(
        self, model: Model, *, multiply_by_inputs: bool = True, eps: float = 1e-10, eval_mode: bool = True
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
        self.multiply_by_inputs = multiply_by_inputs
        self.rule = RescaleRule(eps)

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = None,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Any:
        """DeepLift maps of ``target`` for ``inputs`` against ``baselines`` (see the class docstring)."""
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        refs = tuple(_finite(b, "baselines") for b in as_baselines(baselines, batch))
        resolved = resolve_target(target, batch.n, batch.device)
        pairs = _pairs_per_block(check_batch_size(batch_size))
        device = batch.device

        def rows(start: int, stop: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
            return (
                batch.block(start, stop),
                tuple(r[start:stop] for r in refs),
                torch.arange(start, stop, device=device),
            )

        maps: list[tuple[Tensor, ...]] = []
        deltas: list[Tensor] = []

        def fold(start: int, stop: int, result: tuple[tuple[Tensor, ...], Tensor]) -> None:
            maps.append(result[0])
            deltas.append(result[1])

        with self._guard():
            fold_blocks(batch.n, pairs, self._block(rows, args, resolved, return_convergence_delta), fold)
        out = batch.restore([parts[0] if len(parts) == 1 else torch.cat(parts) for parts in zip(*maps)])
        return (out, torch.cat(deltas)) if return_convergence_delta else out

    def _block(
        self, rows: PairRows, args: ForwardArgs, target: Target, with_delta: bool
    ) -> Callable[[int, int], tuple[tuple[Tensor, ...], Tensor]]:
        """The per-block computation: the maps of pairs ``start..stop-1`` and their deltas (empty if not asked)."""

        def compute(start: int, stop: int) -> tuple[tuple[Tensor, ...], Tensor]:
            xs, refs, example = rows(start, stop)
            multipliers, gain = self._multipliers(xs, refs, args, target, example)
            paths = tuple(x - r for x, r in zip(xs, refs))
            completed = times_inputs(paths, multipliers)
            maps = completed if self.multiply_by_inputs else multipliers
            delta = row_totals(completed, gain.dim()).to(gain) - gain if with_delta else gain[:0]
            return maps, delta

        return compute

    def _multipliers(
        self,
        xs: tuple[Tensor, ...],
        refs: tuple[Tensor, ...],
        args: ForwardArgs,
        target: Target,
        example: Tensor,
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """Multipliers of ``P`` pairs (``(P, ...)`` or ``(P, K, ...)`` per input) and ``S(x) - S(x')``.

        One forward pass on the ``2P`` rows ``[xs; refs]``; ``example`` is
        the example each pair belongs to (for the target and forward args).
        """
        p = example.shape[0]
        leaves = tuple(torch.cat([x, r]).detach().requires_grad_(True) for x, r in zip(xs, refs))
        both = torch.cat([example, example])
        with PairedTrace(2 * p) as trace:
            # The model sees copies of the leaves, so in-place ops on its inputs are legal.
            output = run_model(self.model, tuple(leaf.clone() for leaf in leaves), args.rows(both))
        pair_target, score_rows = _pair_target(target, output, example)
        scores = pair_target.scores(output, score_rows)
        top = scores[:p]
        grads = backprop(top, leaves, self.rule, output=output, trace=trace)
        return tuple(g[:p].detach() for g in grads), (top - scores[p:]).detach()


def _pair_target(target: Target, output: Tensor, example: Tensor) -> tuple[Target, Tensor]:
    """The target of a paired pass and the example number of each of its rows.

    A top-1 target is the class predicted for the input rows, applied to
    their reference rows too (each reference row must be scored with its
    input's class, not its own top-1).
    """
    p = example.shape[0]
    if target.kind != "predicted":
        return target, torch.cat([example, example])
    local = Target("predicted", p).with_prediction(lambda: tensor_output(output)[:p])
    rows = torch.arange(p, device=example.device)
    return local, torch.cat([rows, rows])


class DeepLiftShap(DeepLift):
    r"""DeepLIFT-SHAP: DeepLift averaged over a set of reference examples (Lundberg & Lee, 2017).

    .. math:: A_i(x) = \frac{1}{B} \sum_{j=1}^{B} (x_i - b^{(j)}_i)\, m_i(x, b^{(j)})

    with :math:`m(x, b)` the DeepLift multipliers of :class:`DeepLift`
    against reference :math:`b`. ``baselines`` is a Tensor ``(B, ...)`` of
    ``B >= 1`` reference examples (a tuple of such per input, same ``B``).
    The ``N x B`` pairs are laid out sample-major and evaluated
    ``batch_size // 2`` pairs per forward pass (each pair is two rows), folded
    into per-example sums as they go: memory follows ``batch_size``, not
    ``B``. With ``multiply_by_inputs=False`` the map is the mean multiplier.

    With ``return_convergence_delta=True`` the result is ``(maps, delta)``
    where ``delta`` holds, as in Captum, one value per (example, reference)
    pair, ``sum_i (x_i - b_i) m_i - (S_t(x) - S_t(b))``: ``(N * B,)`` (or
    ``(N * B, K)``), example-major, so ``delta.view(N, B)[n, j]`` belongs to
    example ``n`` and reference ``j``. Unlike Captum, ``B = 1`` is allowed
    (it is then DeepLift).

    Example:
        >>> shap = DeepLiftShap(model)
        >>> maps = shap.attribute(images, target=3, baselines=background, batch_size=128)  # background (B, C, H, W)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = None,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Any:
        """DeepLift-SHAP maps of ``target`` for ``inputs`` over the reference set ``baselines``."""
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        references = baseline_set(baselines, batch)
        resolved = resolve_target(target, batch.n, batch.device)
        pairs = _pairs_per_block(check_batch_size(batch_size))
        n, device, b = batch.n, batch.device, references[0].shape[0]

        def rows(start: int, stop: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
            example, reference = sample_major_rows(start, stop, n, device)
            return batch.rows(example), tuple(r.index_select(0, reference) for r in references), example

        sums: list[Tensor] = []
        deltas: list[Tensor] = []

        def fold(start: int, stop: int, result: tuple[tuple[Tensor, ...], Tensor]) -> None:
            maps, delta = result
            if not sums:
                sums.extend(m.new_zeros((n, *m.shape[1:])) for m in maps)
            for acc, m in zip(sums, maps):
                add_rows_per_example(acc, m, start)
            deltas.append(delta)

        with self._guard():
            fold_blocks(n * b, pairs, self._block(rows, args, resolved, return_convergence_delta), fold)
        out = batch.restore([s / b for s in sums])
        if not return_convergence_delta:
            return out
        # Pairs were sample-major (j * N + n); Captum lays deltas out example-major (n * B + j).
        delta = torch.cat(deltas)
        trailing = delta.shape[1:]
        return out, delta.view(b, n, *trailing).transpose(0, 1).reshape(n * b, *trailing)
