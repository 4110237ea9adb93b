"""The abstract :class:`Attribution`: what every method and every composition is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .core.batching import BatchSize, map_blocks, sample_major_rows
from .core.forward import Model, run_model, tensor_output
from .core.inputs import ForwardArgs, InputBatch, InputsLike
from .core.state import guarded
from .targets import Target, TargetLike, class_scores, resolve_target

PerturbRows = Callable[[Tensor, Tensor], tuple[Tensor, ...]]
"""``(example, copy) -> rows``: the perturbed inputs of the given (example, copy) pairs."""

if TYPE_CHECKING:
    from .compose import Pipeline, Product
    from .postprocess import Step


def _clean_scores(output: Tensor) -> Tensor:
    """The ``(N,)`` output itself or its ``(N, C)`` per-class scores, to find the top-1 class."""
    output = tensor_output(output)
    return output if output.dim() == 1 else class_scores(output)


class Attribution(ABC):
    """Explains a model's score for given inputs by a map over those inputs.

    Subclasses implement :meth:`attribute`. Options are keyword-only and named
    alike across methods: ``target`` (see :mod:`attrib.targets`),
    ``baselines``, ``batch_size`` (the most rows in one forward pass: a
    positive int, ``"auto"`` to start large and halve on out-of-memory, or
    None for everything at once; peak memory follows it, not the number of
    steps, samples or masks), ``seed``/``generator`` (never torch's global
    RNG), ``additional_forward_args``.

    Every call either returns the maps or raises a clear ``ValueError`` /
    ``TypeError`` (NaN or infinite inputs, inputs on another device than the
    model's parameters, a dtype the model cannot take, a non-Tensor model
    output without a callable ``target``, ...); either way the model's
    state (modes, ``requires_grad``, ``.grad``, buffers, hooks) is as before.

    Args:
        model: an ``nn.Module`` (or a callable returning a tensor) mapping
            ``inputs`` (and ``additional_forward_args``) to an output ``(N, ...)``.
        eval_mode: run the model in eval mode during the call (default);
            pass False to keep its current mode (its buffers are restored).

    Attributions compose: ``method.then(step, ...)`` post-processes the map and
    ``method_a * method_b`` multiplies two maps; both are again Attributions.
    """

    def __init__(self, model: Model, *, eval_mode: bool = True) -> None:
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable returning a Tensor, got {type(model).__name__}")
        self.model = model
        self.eval_mode = bool(eval_mode)

    @abstractmethod
    def attribute(self, inputs: InputsLike, target: TargetLike = None, *args: Any, **kwargs: Any) -> Any:
        """Attribution of ``target``'s score for each example in ``inputs``.

        Returns a map per input, in the form of ``inputs`` (a tensor for a
        tensor, a tuple for a tuple); each map is ``(N, ...)``, or
        ``(N, K, ...)`` for an ``(N, K)`` target. Options are keyword-only in
        every method; ``*args`` is here only so that type checkers accept
        each method's own keyword list as an override.
        """

    def then(self, *steps: Step) -> Pipeline:
        """This method followed by post-processing ``steps`` (an :class:`Attribution`)."""
        from .compose import Pipeline

        return Pipeline(self, *steps)

    def __mul__(self, other: Attribution) -> Product:
        """The element-wise product of two methods' maps (an :class:`Attribution`)."""
        from .compose import Product

        if not isinstance(other, Attribution):
            return NotImplemented
        return Product(self, other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"

    # Helpers shared by subclasses -------------------------------------------------

    def _guard(self) -> AbstractContextManager[None]:
        """The model-state guard for one call."""
        return guarded(self.model, eval_mode=self.eval_mode)

    def _resolved_target(
        self, target: TargetLike, batch: InputBatch, args: ForwardArgs, batch_size: BatchSize
    ) -> Target:
        """Resolve ``target``, running the clean inputs through the model if it is None."""
        resolved = resolve_target(target, batch.n, batch.device)
        return resolved.with_prediction(lambda: self._clean_class_scores(batch, args, batch_size))

    def _evaluate(
        self,
        n_rows: int,
        block: Callable[[int, int], tuple[tuple[Tensor, ...], tuple[Any, ...], Tensor]],
        reduce: Callable[[Tensor, Tensor], Tensor],
        batch_size: BatchSize,
    ) -> Tensor:
        """Run the model without gradients over ``n_rows`` rows, ``batch_size`` at a time.

        ``block(start, stop)`` gives the inputs, forward args and example
        numbers of rows ``start..stop-1``; ``reduce(output, example)`` shrinks
        each output block (to scores) before the blocks are concatenated.
        """

        def run(start: int, stop: int) -> Tensor:
            rows, args, example = block(start, stop)
            return reduce(run_model(self.model, rows, args), example)

        with self._guard(), torch.no_grad():
            parts = map_blocks(n_rows, batch_size, run)
        return torch.cat(parts)

    def _clean_class_scores(self, batch: InputBatch, args: ForwardArgs, batch_size: BatchSize) -> Tensor:
        """Per-class scores ``(N, C)`` (or the ``(N,)`` output) of the clean inputs, without gradients."""
        return self._evaluate(
            batch.n,
            lambda start, stop: (
                batch.block(start, stop),
                args.block(start, stop),
                torch.arange(start, stop, device=batch.device),
            ),
            lambda output, _: _clean_scores(output),
            batch_size,
        )

    def _scores(self, tensors: tuple[Tensor, ...], args: ForwardArgs, target: Target, batch_size: BatchSize) -> Tensor:
        """Target scores ``(N,)`` or ``(N, K)`` of ``N`` example rows, without gradients."""
        device = tensors[0].device
        return self._evaluate(
            tensors[0].shape[0],
            lambda start, stop: (
                tuple(t[start:stop] for t in tensors),
                args.block(start, stop),
                torch.arange(start, stop, device=device),
            ),
            target.scores,
            batch_size,
        )

    def _perturbed_scores(
        self,
        n: int,
        n_copies: int,
        perturb: PerturbRows,
        args: ForwardArgs,
        target: Target,
        batch_size: BatchSize,
        device: torch.device,
    ) -> Tensor:
        """Scores ``(n_copies, n)`` (or ``(n_copies, n, K)``) of every copy of every example, without gradients.

        Copies are laid out sample-major (row ``s * n + e`` is copy ``s`` of
        example ``e``); ``perturb(example, copy)`` builds the inputs of a
        block of rows, so only ``batch_size`` copies exist at a time. Shared
        by the perturbation methods and the per-channel CAMs.
        """

        def block(start: int, stop: int) -> tuple[tuple[Tensor, ...], tuple[Any, ...], Tensor]:
            example, copy = sample_major_rows(start, stop, n, device)
            return perturb(example, copy), args.rows(example), example

        scores = self._evaluate(n_copies * n, block, target.scores, batch_size)
        return scores.view(n_copies, n, *scores.shape[1:])
