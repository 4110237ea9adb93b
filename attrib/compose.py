"""Compositions that are themselves Attributions: post-processing pipelines and products."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .attribution import Attribution
from .core.batching import check_batch_size
from .core.inputs import InputsLike, as_forward_args, as_input_batch, as_result_tuple
from .core.signatures import accepts, supported
from .postprocess import Step
from .targets import TargetLike


class Pipeline(Attribution):
    """A method followed by post-processing steps; build it with ``method.then(*steps)``.

    Each step receives one map per row ``(M, C, *spatial)`` and the input it
    explains; maps of an ``(N, K)`` target are processed as ``N * K`` rows and
    reshaped back to ``(N, K, ...)``. Options go to the wrapped method; with
    ``return_convergence_delta=True`` the delta is passed through untouched.

    Example:
        >>> heat = attrib.GuidedBackprop(model).then(attrib.ReduceChannels("abs_max"), attrib.Resize((64, 64)))
        >>> maps = heat.attribute(images, target=3)   # (N, 1, 64, 64)
    """

    def __init__(self, method: Attribution, *steps: Step) -> None:
        if not isinstance(method, Attribution):
            raise TypeError(f"method must be an attrib.Attribution, got {type(method).__name__}")
        for i, step in enumerate(steps):
            if not callable(step):
                raise TypeError(f"steps[{i}] must be a post-processing Step (callable), got {type(step).__name__}")
        super().__init__(method.model, eval_mode=method.eval_mode)
        self.method = method
        self.steps = tuple(steps)

    def __repr__(self) -> str:
        return f"{self.method!r}.then({', '.join(map(repr, self.steps))})"

    def attribute(self, inputs: InputsLike, target: TargetLike = None, **kwargs: Any) -> Any:
        """The wrapped method's maps after every step (see :class:`attrib.Attribution`)."""
        batch = as_input_batch(inputs, floating=False)
        result = self.method.attribute(inputs, target, **kwargs)
        delta = None
        if kwargs.get("return_convergence_delta"):
            result, delta = result
        maps = as_result_tuple(result, repr(self.method))
        processed = batch.restore([self._process(m, x) for m, x in zip(maps, batch.tensors)])
        return processed if delta is None else (processed, delta)

    def _process(self, maps: Tensor, reference: Tensor) -> Tensor:
        multi = maps.dim() == reference.dim() + 1
        rows = maps.flatten(0, 1) if multi else maps
        for step in self.steps:
            rows = step(rows, reference)
        return rows.reshape(*maps.shape[:2], *rows.shape[1:]) if multi else rows


class Product(Attribution):
    """The element-wise product of two methods' maps; build it with ``method_a * method_b``.

    Both methods explain the same target: a top-1 (``None``) target is
    resolved once on the clean inputs and handed to both. Maps broadcast, so
    an ``(N, C, H, W)`` map times an ``(N, 1, H, W)`` map works (Guided
    Grad-CAM). Each keyword option goes to the method(s) that accept it; one
    neither accepts raises ``TypeError``.

    Example:
        >>> both = attrib.GuidedBackprop(model) * attrib.Saliency(model)
        >>> maps = both.attribute(images, target=3)
    """

    def __init__(self, first: Attribution, second: Attribution) -> None:
        for name, m in (("first", first), ("second", second)):
            if not isinstance(m, Attribution):
                raise TypeError(f"{name} must be an attrib.Attribution, got {type(m).__name__}")
        if first.model is not second.model:
            raise ValueError("both methods of a Product must explain the same model object")
        super().__init__(first.model, eval_mode=first.eval_mode)
        self.first = first
        self.second = second

    def __repr__(self) -> str:
        return f"({self.first!r} * {self.second!r})"

    def attribute(self, inputs: InputsLike, target: TargetLike = None, **kwargs: Any) -> Any:
        """Product of the two methods' maps (see :class:`attrib.Attribution`)."""
        if kwargs.get("return_convergence_delta"):
            raise ValueError("a Product has no convergence delta; call the factor methods for theirs")
        for name in kwargs:
            if not (accepts(self.first.attribute, name) or accepts(self.second.attribute, name)):
                raise TypeError(f"neither {self.first!r} nor {self.second!r} takes the option {name!r}")
        batch = as_input_batch(inputs, floating=False)
        if target is None:
            args = as_forward_args(kwargs.get("additional_forward_args"), batch.n)
            target = self._resolved_target(None, batch, args, check_batch_size(kwargs.get("batch_size")))
        a = as_result_tuple(
            self.first.attribute(inputs, target, **supported(self.first.attribute, kwargs)), repr(self.first)
        )
        b = as_result_tuple(
            self.second.attribute(inputs, target, **supported(self.second.attribute, kwargs)), repr(self.second)
        )
        return batch.restore([x * y for x, y in zip(a, b)])
