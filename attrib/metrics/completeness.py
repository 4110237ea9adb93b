"""Completeness gap of path methods: how far a map's sum is from the score difference it should explain."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..core.baselines import as_baselines
from ..core.batching import BatchSize
from ..core.forward import Model
from ..core.inputs import InputsLike, as_result_tuple
from ..targets import TargetLike
from .base import ModelMetric


class CompletenessGap(ModelMetric):
    r"""Completeness gap of a path-method map (Integrated Gradients and kin).

    .. math:: \mathrm{gap}(A, x) = \Big|\sum_i A_i - \big(S_t(x) - S_t(x')\big)\Big|

    with :math:`S_t` the target's raw score and :math:`x'` the baselines the
    map was computed from. Completeness (Sundararajan et al., 2017) makes it 0
    up to the quadrature error; lower is better. The model, inputs, target
    and baselines are bound first and the two score evaluations are done once
    (lazily, ``batch_size`` rows at a time, under the state guard). An
    ``(N, K)`` target gives ``(N, K)`` gaps for maps ``(N, K, ...)``. A map with
    a NaN gives NaN.

    Example:
        >>> gap = CompletenessGap(model, images, labels, baselines=0.0)
        >>> gap(attrib.IntegratedGradients(model).attribute(images, labels, baselines=0.0))   # (N,)
    """

    higher_is_better = False
    _multi_target = True

    def __init__(
        self,
        model: Model,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = None,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(
            model,
            inputs,
            target,
            additional_forward_args=additional_forward_args,
            batch_size=batch_size,
            eval_mode=eval_mode,
        )
        self.baselines: tuple[Tensor, ...] = as_baselines(baselines, self.bound.batch)
        self._gain: Tensor | None = None

    def __repr__(self) -> str:
        return "CompletenessGap()"

    def gain(self) -> Tensor:
        """``S_t(x) - S_t(x')``: ``(N,)`` or ``(N, K)``."""
        if self._gain is None:
            self._gain = self.bound.scores(self.bound.batch.tensors) - self.bound.scores(self.baselines)
        return self._gain

    def __call__(self, maps: Any) -> Tensor:
        """Gaps ``(N,)`` (or ``(N, K)``) of ``maps`` in the form of the inputs."""
        parts = as_result_tuple(maps, "maps")
        if len(parts) != len(self.bound.batch.tensors):
            raise ValueError(f"maps must hold one tensor per input ({len(self.bound.batch.tensors)}), got {len(parts)}")
        gain = self.gain()
        dims = gain.dim()
        for p in parts:
            if p.dim() < dims or tuple(p.shape[:dims]) != tuple(gain.shape):
                raise ValueError(
                    f"maps of shape {tuple(p.shape)} do not start with the scores' shape {tuple(gain.shape)}"
                )
        total = sum(p.detach().flatten(dims).sum(dims) for p in parts)
        gap: Tensor = (total - gain.to(parts[0].device)).abs()
        return gap
