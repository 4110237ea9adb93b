"""What every metric is, and the bound model that metrics which query the model share.

A metric binds its data first (model, inputs, target, masks) and scores maps
second: ``Deletion(model, images, target)(maps)``. Scores are per example
(``(N,)``), so the scores of several shards of a data set concatenate, and
summary statistics (means, pointing-game counts) are sums that reduce across
processes.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..attribution import Attribution
from ..core.batching import BatchSize, check_batch_size, map_blocks
from ..core.forward import Model, run_model
from ..core.inputs import ForwardArgs, InputBatch, InputsLike, as_forward_args, as_input_batch
from ..core.randomness import make_generator
from ..core.state import guarded
from ..targets import Target, TargetLike, class_scores, resolve_target

RowBlock = Callable[[int, int], tuple[tuple[Tensor, ...], Tensor]]
"""``(start, stop) -> (rows, example)``: the model inputs of rows ``start..stop-1`` and their example numbers."""


class Metric(ABC):
    """A score of attribution maps, one number per example.

    Subclasses set :attr:`higher_is_better` and implement ``__call__(maps)``,
    which returns a tensor ``(N,)`` on the maps' device (a few metrics return
    a mapping of such tensors, as documented on them).
    """

    #: Whether a larger score means a better map.
    higher_is_better: bool

    @abstractmethod
    def __call__(self, maps: Any) -> Any:
        """Score ``maps`` (one per bound example)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(higher_is_better={self.higher_is_better})"


class BoundModel:
    """A model bound to inputs, extra forward arguments and a target, evaluated ``batch_size`` rows at a time.

    The model runs without gradients under the state guard
    (:func:`attrib.core.state.guarded`): eval mode by default, everything
    restored on return and on error. A ``None`` target becomes the top-1
    class of the clean inputs, computed once on first use.

    Args:
        model: an ``nn.Module`` or a callable returning ``(N, ...)``.
        inputs: a tensor ``(N, ...)`` or a tuple of them.
        target: see :mod:`attrib.targets`. With ``multi_target=False`` it must
            give one score per example (no ``(N, K)`` targets).
        floating: whether the inputs must be floating point (False admits token ids).
    """

    def __init__(
        self,
        model: Model,
        inputs: InputsLike,
        target: TargetLike,
        *,
        additional_forward_args: Any = None,
        batch_size: BatchSize = None,
        eval_mode: bool = True,
        multi_target: bool = False,
        floating: bool = True,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable returning a Tensor, got {type(model).__name__}")
        self.model = model
        self.batch: InputBatch = as_input_batch(inputs, floating=floating)
        self.args: ForwardArgs = as_forward_args(additional_forward_args, self.batch.n)
        self.batch_size = check_batch_size(batch_size)
        self.eval_mode = bool(eval_mode)
        self.multi_target = multi_target
        resolved = resolve_target(target, self.batch.n, self.batch.device)
        if not multi_target and resolved.indices is not None and resolved.indices.dim() == 2:
            raise ValueError(
                "this metric scores one target per example; got an (N, K) target. Repeat the inputs K times "
                "(torch.repeat_interleave) and pass the flattened target instead"
            )
        self._target = resolved

    @property
    def n(self) -> int:
        return self.batch.n

    @property
    def device(self) -> torch.device:
        return self.batch.device

    @property
    def target(self) -> Target:
        """The resolved target (a top-1 target is computed on the clean inputs once)."""
        self._target = self._target.with_prediction(self.clean_class_scores)
        return self._target

    def evaluate(
        self, n_rows: int, block: RowBlock, transform: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """Target scores ``(n_rows,)`` (or ``(n_rows, K)``) of the rows ``block`` describes.

        ``transform`` maps each output block before the target reads it (e.g. a softmax).
        """
        target = self.target

        def run(start: int, stop: int) -> Tensor:
            rows, example = block(start, stop)
            output = run_model(self.model, rows, self.args.rows(example))
            scores = target.scores(output if transform is None else transform(output), example)
            if scores.dim() != 1 and not self.multi_target:
                raise ValueError(
                    f"this metric needs one score per row; the target gave scores of shape {tuple(scores.shape)}"
                )
            return scores

        with guarded(self.model, eval_mode=self.eval_mode), torch.no_grad():
            parts = map_blocks(n_rows, self.batch_size, run)
        return torch.cat(parts)

    def scores(self, tensors: tuple[Tensor, ...], transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Target scores of ``N`` rows ``tensors`` (one row per bound example)."""
        device = tensors[0].device
        return self.evaluate(
            tensors[0].shape[0],
            lambda start, stop: (tuple(t[start:stop] for t in tensors), torch.arange(start, stop, device=device)),
            transform,
        )

    def clean_class_scores(self) -> Tensor:
        """Per-class scores ``(N, C)`` (or the ``(N,)`` output) of the clean inputs, without gradients."""

        def run(start: int, stop: int) -> Tensor:
            output = run_model(self.model, self.batch.block(start, stop), self.args.block(start, stop))
            return output if output.dim() == 1 else class_scores(output)

        with guarded(self.model, eval_mode=self.eval_mode), torch.no_grad():
            return torch.cat(map_blocks(self.n, self.batch_size, run))


class ModelMetric(Metric):
    """A metric that scores maps by querying a model bound to inputs and a target (:attr:`bound`).

    Subclasses call ``super().__init__(model, inputs, target, ...)`` with their
    own defaults and read the model through :attr:`bound`.
    """

    #: Whether ``(N, K)`` targets are accepted (results then have a K dimension after N).
    _multi_target: bool = False
    #: Whether the inputs must be floating point (False for token ids).
    _floating_inputs: bool = True

    def __init__(
        self,
        model: Model,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        eval_mode: bool = True,
    ) -> None:
        self.bound: BoundModel = BoundModel(
            model,
            inputs,
            target,
            additional_forward_args=additional_forward_args,
            batch_size=batch_size,
            eval_mode=eval_mode,
            multi_target=self._multi_target,
            floating=self._floating_inputs,
        )


class MethodMetric(Metric):
    """A metric that runs an attribution method again (on perturbed inputs, or on a randomised copy of its model).

    Binds the method, its inputs and target, the seed or generator of the
    metric's own draws (never the global RNG) and ``attribute_options``, the
    keyword options passed on to every ``method.attribute`` call.
    """

    def __init__(
        self,
        method: Attribution,
        inputs: InputsLike,
        target: TargetLike,
        *,
        seed: int | None,
        generator: torch.Generator | None,
        attribute_options: Mapping[str, Any] | None,
        device: torch.device | None = None,
        floating: bool = True,
    ) -> None:
        if not isinstance(method, Attribution):
            raise TypeError(f"method must be an attrib.Attribution, got {type(method).__name__}")
        if attribute_options is not None and not isinstance(attribute_options, Mapping):
            raise TypeError(f"attribute_options must be a dict of options, got {type(attribute_options).__name__}")
        self.method: Attribution = method
        self.batch: InputBatch = as_input_batch(inputs, floating=floating)
        self.target: Target = resolve_target(target, self.batch.n, self.batch.device)
        self._draw_device: torch.device = self.batch.device if device is None else device
        make_generator(seed, generator, self._draw_device)  # validate now
        self.seed: int | None = seed
        self.generator: torch.Generator | None = generator
        self.attribute_options: dict[str, Any] = dict(attribute_options or {})

    def _draws(self) -> torch.Generator:
        """The generator of one call: a seed gives the same draws on every call."""
        return make_generator(self.seed, self.generator, self._draw_device)

    def _clean_target(self) -> Target:
        """The bound target, a top-1 target resolved on the clean inputs (one forward pass, without gradients)."""
        bound = BoundModel(
            self.method.model,
            self.batch.tensors,
            None,
            additional_forward_args=self.attribute_options.get("additional_forward_args"),
            eval_mode=self.method.eval_mode,
        )
        return self.target.with_prediction(bound.clean_class_scores)

    def _maps(self, method: Attribution, inputs: tuple[Tensor, ...], target: Any, **options: Any) -> Tensor:
        """``method``'s maps of ``inputs`` as rows ``(R, M)`` (every input's entries side by side).

        ``options`` are added to (and override) :attr:`attribute_options`.
        """
        result = method.attribute(self.batch.restore(inputs), target, **{**self.attribute_options, **options})
        return flat_maps(result, repr(method), inputs[0].shape[0])


def per_example(values: Tensor, n: int, name: str = "maps") -> Tensor:
    """Check that ``values`` is a tensor with ``n`` rows."""
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a Tensor with one row per example, got {type(values).__name__}")
    if values.dim() == 0 or values.shape[0] != n:
        raise ValueError(f"{name} must have one row per example (N={n}), got shape {tuple(values.shape)}")
    return values


def positive_int(value: object, name: str) -> int:
    """``value`` as an int, checked to be a positive integer (``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def example_major_rows(start: int, stop: int, samples: int, device: torch.device) -> Tensor:
    """Example numbers of rows ``start..stop-1`` laid out example-major (row ``n * samples + s``), as Captum."""
    return torch.div(torch.arange(start, stop, device=device), samples, rounding_mode="floor")


def map_images(maps: object, n: int) -> Tensor:
    """Single-channel maps ``(N, h, w)`` or ``(N, 1, h, w)`` as a floating ``(N, 1, h, w)`` (float32 at least)."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a Tensor (N, h, w) or (N, 1, h, w), got {type(maps).__name__}")
    maps = per_example(maps, n)
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(
            f"maps must have shape (N, h, w) or (N, 1, h, w), got {tuple(maps.shape)}; "
            "reduce the channels first (e.g. attrib.ReduceChannels)"
        )
    if maps.shape[2] == 0 or maps.shape[3] == 0:
        raise ValueError(f"maps must have at least one pixel, got shape {tuple(maps.shape)}")
    return maps.to(torch.float64) if maps.dtype == torch.float64 else maps.float()


def flat_maps(maps: Any, name: str = "maps", n: int | None = None) -> Tensor:
    """Maps (a tensor ``(N, ...)`` or a tuple of them) as rows ``(N, M)``: every entry of an example side by side.

    Detached, in the maps' dtype (float64 when the parts differ or are not floating point).
    """
    if isinstance(maps, Tensor):
        parts: tuple[Tensor, ...] = (maps,)
    elif isinstance(maps, (tuple, list)) and maps and all(isinstance(m, Tensor) for m in maps):
        parts = tuple(maps)
    else:
        raise TypeError(f"{name} must be a Tensor (N, ...) or a tuple of them, got {type(maps).__name__}")
    if any(p.dim() == 0 for p in parts) or len({p.shape[0] for p in parts}) != 1:
        shapes = [tuple(p.shape) for p in parts]
        raise ValueError(f"{name} must be tensors (N, ...) sharing the batch size N, got shapes {shapes}")
    if n is not None and parts[0].shape[0] != n:
        raise ValueError(f"{name} must have one row per example (N={n}), got {parts[0].shape[0]}")
    dtypes = {p.dtype for p in parts}
    dtype = parts[0].dtype if len(dtypes) == 1 and parts[0].is_floating_point() else torch.float64
    return torch.cat([p.detach().flatten(1).to(dtype) for p in parts], dim=1)
