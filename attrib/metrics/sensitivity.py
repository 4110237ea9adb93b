"""Max-sensitivity (Yeh et al., 2019) as Captum defines it, with seeded noise."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..attribution import Attribution
from ..core.batching import BatchSize, check_batch_size, map_blocks
from ..core.inputs import InputsLike, as_forward_args, as_result_tuple
from ..core.signatures import accepts
from ..targets import TargetLike
from .base import MethodMetric, example_major_rows, flat_maps, positive_int

PerturbInputs = Callable[[tuple[Tensor, ...], torch.Generator], tuple[Tensor, ...]]
"""``(rows, generator) -> perturbed rows``: a custom perturbation for :class:`SensitivityMax`."""


def _norm(rows: Tensor, norm_ord: str | float) -> Tensor:
    """Row norms of ``rows`` ``(R, M)``: ``"fro"`` is the Euclidean norm of the row, a number ``p`` its p-norm."""
    norms: Tensor = torch.linalg.vector_norm(rows, ord=2 if norm_ord == "fro" else norm_ord, dim=1)
    return norms


class SensitivityMax(MethodMetric):
    r"""Max-sensitivity (Yeh et al., 2019), with the same numbers as Captum's ``sensitivity_max``.

    .. math::
        \mathrm{SENS}_{\max}(A, x) = \max_{s = 1..S}
        \frac{\lVert A(x + \delta_s) - A(x) \rVert}{\lVert A(x) \rVert},
        \qquad \delta_s \sim U[-r, r]^d

    with the norm ``norm_ord`` taken over all entries of an example's maps
    (``"fro"``: Euclidean) and :math:`\lVert A(x)\rVert` replaced by 1 where
    it is 0 (as Captum). Lower is better.

    The noise is drawn from ``generator`` or a private generator seeded with
    ``seed`` (never the global RNG), one uniform draw per perturbed row in
    the inputs' dtype, rows example-major (row ``n * S + s`` is sample ``s``
    of example ``n``) as Captum expands them. For a single input tensor on
    the CPU a seeded generator draws the same stream whatever the block
    sizes, so the result does not depend on ``batch_size`` and equals
    Captum's ``sensitivity_max`` run with ``torch.manual_seed(seed)`` (float32
    inputs). With several inputs each block draws input after input, so only
    ``batch_size=None`` reproduces Captum's draws. ``perturb_fn`` replaces the
    uniform noise: ``(rows, generator) -> perturbed rows``.

    The method explains the perturbed rows for the target resolved on the
    clean inputs (``None``: the clean top-1 class, kept for every noisy copy;
    Captum would re-pick each copy's own top-1). ``batch_size`` bounds the
    rows handed to the method at once and is passed on to it when it accepts
    one. A NaN in a map gives NaN.

    Args:
        method: the :class:`attrib.Attribution` under test.
        inputs, target: what is explained.
        perturb_radius: :math:`r`.
        n_perturb_samples: :math:`S`.
        norm_ord: ``"fro"`` or a number ``p`` (``float("inf")`` included).
        attribute_options: a dict of options for ``method.attribute``.

    Calling it with the maps at the clean inputs (or ``None`` to compute them)
    returns ``(N,)``. As Captum, ``additional_forward_args`` and baselines of
    the inputs' shape in ``attribute_options`` are expanded to the noisy
    rows (each row gets its example's).

    Raises:
        TypeError: ``method`` not an :class:`attrib.Attribution`, a
            non-callable ``perturb_fn``, ``attribute_options`` not a dict.
        ValueError: a negative ``perturb_radius``, ``n_perturb_samples < 1``,
            an unknown ``norm_ord``, a bad ``batch_size``; maps with another ``N``.

    Example:
        >>> sens = SensitivityMax(attrib.Saliency(model), images, labels, n_perturb_samples=10, seed=0)
        >>> scores = sens()   # (N,)
    """

    higher_is_better = False

    def __init__(
        self,
        method: Attribution,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        perturb_radius: float = 0.02,
        n_perturb_samples: int = 10,
        norm_ord: str | float = "fro",
        perturb_fn: PerturbInputs | None = None,
        batch_size: BatchSize = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        attribute_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(method, inputs, target, seed=seed, generator=generator, attribute_options=attribute_options)
        if isinstance(perturb_radius, bool) or not isinstance(perturb_radius, numbers.Real) or not perturb_radius >= 0:
            raise ValueError(f"perturb_radius must be a non-negative number, got {perturb_radius!r}")
        if not (norm_ord == "fro" or (isinstance(norm_ord, numbers.Real) and not isinstance(norm_ord, bool)
                                      and (norm_ord > 0 or math.isinf(norm_ord)))):
            raise ValueError(f"norm_ord must be 'fro' or a positive number p, got {norm_ord!r}")
        if perturb_fn is not None and not callable(perturb_fn):
            raise TypeError(f"perturb_fn must be callable (rows, generator) -> rows, got {type(perturb_fn).__name__}")
        self.perturb_radius: float = float(perturb_radius)
        self.n_perturb_samples: int = positive_int(n_perturb_samples, "n_perturb_samples")
        self.norm_ord: str | float = norm_ord
        self.perturb_fn: PerturbInputs | None = perturb_fn
        self.batch_size: BatchSize = check_batch_size(batch_size)
        if self.batch_size is not None and accepts(method.attribute, "batch_size"):
            self.attribute_options.setdefault("batch_size", self.batch_size)

    def __repr__(self) -> str:
        return f"SensitivityMax({self.method!r}, n_perturb_samples={self.n_perturb_samples})"

    def _perturb(self, rows: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, ...]:
        if self.perturb_fn is not None:
            return as_result_tuple(self.perturb_fn(rows, generator), "perturb_fn")
        r = self.perturb_radius
        return tuple(x + torch.empty_like(x).uniform_(-r, r, generator=generator) for x in rows)

    def _per_row_options(self, example: Tensor) -> dict[str, Any]:
        """The per-example options (extra forward arguments, baselines of the inputs' shape) of rows ``example``."""
        options: dict[str, Any] = {}
        args = self.attribute_options.get("additional_forward_args")
        if args is not None:
            options["additional_forward_args"] = as_forward_args(args, self.batch.n).rows(example)
        baselines = self.attribute_options.get("baselines")
        if baselines is not None:
            inputs = self.batch.tensors
            entries = baselines if isinstance(baselines, (tuple, list)) else (baselines,)
            selected = [
                b.index_select(0, example.to(b.device)) if isinstance(b, Tensor) and b.shape == x.shape else b
                for b, x in zip(entries, inputs)
            ]
            options["baselines"] = type(baselines)(selected) if isinstance(baselines, (tuple, list)) else selected[0]
        return options

    def __call__(self, maps: Any = None) -> Tensor:
        """Max-sensitivity ``(N,)`` of the method around the bound inputs."""
        batch = self.batch
        target = self._clean_target()
        if maps is None:
            clean = self._maps(self.method, batch.tensors, target)
        else:
            clean = flat_maps(maps, "maps", batch.n)
        scale = _norm(clean, self.norm_ord)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        samples = self.n_perturb_samples
        generator = self._draws()

        def run(start: int, stop: int) -> Tensor:
            example = example_major_rows(start, stop, samples, batch.device)
            noisy = self._perturb(batch.rows(example), generator)
            index = example.to(clean.device)
            options = self._per_row_options(example)
            change = self._maps(self.method, noisy, target.select(example), **options) - clean.index_select(0, index)
            return _norm(change, self.norm_ord) / scale.index_select(0, index)

        ratios = torch.cat(map_blocks(batch.n * samples, self.batch_size, run))
        return ratios.view(batch.n, samples).amax(1)
