"""Infidelity (Yeh et al., 2019) as Captum defines it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.baselines import as_baselines
from ..core.batching import BatchSize
from ..core.forward import Model
from ..core.inputs import InputsLike, as_result_tuple
from ..targets import TargetLike
from .base import ModelMetric, example_major_rows, positive_int

PerturbFn = Callable[..., tuple[Any, Any]]
"""``(inputs[, baselines]) -> (perturbations, perturbed inputs)``, in the form of ``inputs`` (Captum's contract)."""


def _broadcasts(shape: torch.Size, to: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``to`` (same number of dimensions)."""
    return len(shape) == len(to) and all(a in (1, b) for a, b in zip(shape, to))


class Infidelity(ModelMetric):
    r"""Infidelity (Yeh et al., 2019), with the same numbers as Captum's ``infidelity``.

    For random perturbations :math:`I` of the input and the score
    :math:`f` of the target (the raw output, as Captum):

    .. math::
        \mathrm{INFD}(A, f, x) = \frac{1}{S}\sum_{s=1}^{S}
        \Big(\sum_i A_i I^{(s)}_i - \big(f(x) - f(x - I^{(s)})\big)\Big)^2

    With ``normalize=True`` the map is first rescaled by the least-squares
    factor :math:`\beta = \sum_s (A\cdot I^{(s)})\,\Delta f_s / \sum_s (A\cdot I^{(s)})^2`
    (:math:`\beta = 0` when the denominator is 0, as Captum's ``safe_div``):
    :math:`\frac1S\sum_s (\beta A\cdot I^{(s)} - \Delta f_s)^2`. Lower is better.

    ``perturb_fn`` follows Captum's contract: it receives rows of the inputs
    (each example repeated, example-major: row ``n * S + s`` is sample ``s``
    of example ``n``), plus the baselines' rows when ``baselines`` is given,
    and returns ``(perturbations I, perturbed inputs x - I)``. It is called
    once per block of at most ``batch_size`` rows; with ``batch_size=None``
    the call is the very one Captum makes with ``max_examples_per_batch=None``,
    so a perturb function drawing from a seeded generator gives Captum's
    numbers. A random ``perturb_fn`` should draw from its own
    ``torch.Generator``; results then depend on the block layout only
    through the order of its draws.

    Maps have the inputs' shapes (or broadcast to them, e.g. ``(N, 1, H, W)``
    for ``(N, C, H, W)`` inputs). A map with a NaN gives NaN. Per-sample terms
    are kept (one number per row) and summed at the end, so results do not
    depend on ``batch_size`` for a deterministic ``perturb_fn``.

    Raises:
        TypeError: ``perturb_fn`` not callable or not returning a pair.
        ValueError: ``n_perturb_samples < 1``; maps that are not one tensor
            per input, each ``(N, ...)`` broadcasting to its input; perturbations
            not of the rows' shape.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> def noise(x):
        ...     eps = 0.03 * torch.randn(x.shape, generator=g)
        ...     return eps, x - eps
        >>> infidelity = Infidelity(model, images, labels, perturb_fn=noise, n_perturb_samples=20)
        >>> scores = infidelity(maps)   # (N,)
    """

    higher_is_better = False

    def __init__(
        self,
        model: Model,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        perturb_fn: PerturbFn,
        n_perturb_samples: int = 10,
        normalize: bool = False,
        baselines: Any = None,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        eval_mode: bool = True,
    ) -> None:
        if not callable(perturb_fn):
            raise TypeError(f"perturb_fn must be a callable (inputs) -> (perturbations, perturbed inputs), got "
                            f"{type(perturb_fn).__name__}")
        self.n_perturb_samples: int = positive_int(n_perturb_samples, "n_perturb_samples")
        super().__init__(
            model,
            inputs,
            target,
            additional_forward_args=additional_forward_args,
            batch_size=batch_size,
            eval_mode=eval_mode,
        )
        self.perturb_fn: PerturbFn = perturb_fn
        self.normalize: bool = bool(normalize)
        self.baselines: tuple[Tensor, ...] | None = (
            None if baselines is None else as_baselines(baselines, self.bound.batch)
        )

    def __repr__(self) -> str:
        return f"Infidelity(n_perturb_samples={self.n_perturb_samples}, normalize={self.normalize})"

    def __call__(self, maps: Any) -> Tensor:
        """Infidelity ``(N,)`` of ``maps`` (in the form of the inputs)."""
        batch = self.bound.batch
        attributions = as_result_tuple(maps, "maps")
        if len(attributions) != len(batch.tensors):
            raise ValueError(f"maps must hold one tensor per input ({len(batch.tensors)}), got {len(attributions)}")
        for a, x in zip(attributions, batch.tensors):
            if a.shape[0] != x.shape[0] or not _broadcasts(a.shape, x.shape):
                raise ValueError(
                    f"maps of shape {tuple(a.shape)} do not match (or broadcast to) inputs of shape {tuple(x.shape)}"
                )
        n, samples, device = batch.n, self.n_perturb_samples, batch.device
        # Keyed by the block's first row: a block retried smaller after an out-of-memory error (batch_size="auto")
        # overwrites its own entry instead of adding a second one.
        projections: dict[int, Tensor] = {}

        def block(start: int, stop: int) -> tuple[tuple[Tensor, ...], Tensor]:
            example = example_major_rows(start, stop, samples, device)
            rows = batch.rows(example)
            if self.baselines is None:
                result = self.perturb_fn(batch.restore(rows))
            else:
                result = self.perturb_fn(batch.restore(rows), batch.restore(tuple(b[example] for b in self.baselines)))
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                raise TypeError("perturb_fn must return a pair (perturbations, perturbed inputs)")
            perturbations = as_result_tuple(result[0], "perturb_fn's perturbations")
            perturbed = as_result_tuple(result[1], "perturb_fn's perturbed inputs")
            for p, q, x in zip(perturbations, perturbed, rows):
                if p.shape != x.shape or q.shape != x.shape:
                    raise ValueError(
                        f"perturb_fn must return perturbations and perturbed inputs of the rows' shape "
                        f"{tuple(x.shape)}, got {tuple(p.shape)} and {tuple(q.shape)}"
                    )
            projections[start] = sum(
                (a.index_select(0, example.to(a.device)) * p.to(a.device)).flatten(1).sum(1)
                for a, p in zip(attributions, perturbations)
            )  # type: ignore[assignment]
            return perturbed, example

        perturbed_scores = self.bound.evaluate(n * samples, block)
        clean = self.bound.scores(batch.tensors)
        explained = torch.cat([projections[start] for start in sorted(projections)]).view(n, samples)
        gain = (clean.unsqueeze(1) - perturbed_scores.view(n, samples)).to(explained.device)
        if self.normalize:
            aa = explained.square().sum(1)
            af = (explained * gain).sum(1)
            ff = gain.square().sum(1)
            beta = torch.where(aa != 0, af / torch.where(aa != 0, aa, 1), 0)
            values = beta * beta * aa - 2 * beta * af + ff
        else:
            values = (explained - gain).square().sum(1)
        result: Tensor = values / samples
        return result
