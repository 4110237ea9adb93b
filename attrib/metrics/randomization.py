"""The model-parameter randomisation test (Adebayo et al., 2018), on a deep copy of the model."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..attribution import Attribution
from ..core.inputs import InputsLike
from ..targets import TargetLike
from .base import MethodMetric, flat_maps
from .similarity import SIMILARITIES

Similarity = Callable[[Tensor, Tensor], Tensor]
MODES = ("cascading", "independent")


def layers_with_parameters(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in registration order (roughly input to output)."""
    return [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    r"""Re-draw ``module``'s own parameters in place from ``generator``.

    Each parameter is drawn from :math:`U(-1/\sqrt{f}, 1/\sqrt{f})`, PyTorch's
    default initialisation scale for linear and convolution layers, where
    :math:`f` is the fan-in of the module's weight (the parameter's own for a
    tensor of two or more dimensions, else that of the module's ``weight`` if it
    has one, else 1: normalisation scales and shifts get :math:`U(-1, 1)`).
    """
    weight = getattr(module, "weight", None)
    module_fan_in = weight[0].numel() if isinstance(weight, Tensor) and weight.dim() >= 2 else 1
    with torch.no_grad():
        for param in module.parameters(recurse=False):
            fan_in = param[0].numel() if param.dim() >= 2 else module_fan_in
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            draw = torch.empty(param.shape, dtype=param.dtype, device=generator.device)
            param.copy_(draw.uniform_(-bound, bound, generator=generator))


class ParameterRandomization(MethodMetric):
    r"""Model-parameter randomisation test (Adebayo et al., 2018): do the maps depend on the weights?

    For each layer :math:`\ell` that owns parameters, taken top-down (output
    to input, the reverse of ``model.named_modules()`` order) unless
    ``layers`` says otherwise, the parameters are re-drawn (:func:`randomize_`)
    on a **deep copy** of the model and the method, rebuilt on that copy,
    explains the same inputs and target again. The score per layer and
    example is the similarity of the original and the randomised maps:

    .. math:: \rho_\ell(x) = \mathrm{Spearman}\big(|A(x)|,\ |A_{\theta_\ell \leftarrow \mathrm{rand}}(x)|\big)

    (absolute values with ``abs=True``, the default; all map entries of an
    example, over every input, form one ranking). ``mode="cascading"``
    randomises the layers cumulatively, ``"independent"`` one layer at a time
    (the others keep their trained values). A method that passes the sanity
    check gives low correlations: ``higher_is_better = False``.

    The user's model and method are never modified: the method is copied with
    ``copy.deepcopy(method, memo)`` where ``memo`` already maps the model (and
    every sub-module) to its copy, so attributes such as a layer method's
    ``layer`` point into the copy. Draws come from ``generator`` or a private
    generator seeded with ``seed`` (the global RNG is untouched); the
    method's own randomness is set through its options (e.g. ``seed=0``).

    Calling it with the original maps (or ``None`` to compute them) returns an
    ordered dict layer name ``->`` ``(N,)`` float64 correlations. A map that is
    constant or holds a NaN gives NaN.

    Args:
        method: an :class:`attrib.Attribution` whose ``model`` is an ``nn.Module``.
        inputs, target: what is explained; ``None`` becomes the top-1 class
            of the original model, kept fixed for every randomised copy.
        mode: ``"cascading"`` or ``"independent"``.
        similarity: ``"spearman"``, ``"pearson"`` or a callable
            ``(a (N, M), b (N, M)) -> (N,)``.
        layers: names of the layers to randomise (default: every layer with
            parameters, top-down), in the order given.
        attribute_options: a dict of options for ``method.attribute`` (``batch_size``,
            ``n_steps``, ``seed``...).

    Raises:
        TypeError: ``method`` not an :class:`attrib.Attribution` over an
            ``nn.Module``, ``layers`` a string, ``similarity`` not a name or callable.
        ValueError: a model without parameters, an unknown ``mode`` or
            ``similarity`` name, ``layers`` empty or naming a layer without
            parameters; maps with another ``N``.

    Example:
        >>> test = ParameterRandomization(attrib.Saliency(model), images, target=labels, seed=0)
        >>> for layer, rho in test().items():
        ...     print(layer, float(rho.mean()))
    """

    higher_is_better = False

    def __init__(
        self,
        method: Attribution,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        mode: str = "cascading",
        similarity: str | Similarity = "spearman",
        abs: bool = True,
        layers: Sequence[str] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        attribute_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(method, Attribution):
            raise TypeError(f"method must be an attrib.Attribution, got {type(method).__name__}")
        if not isinstance(method.model, nn.Module):
            raise TypeError(f"the method's model must be an nn.Module to randomise, got {type(method.model).__name__}")
        available = layers_with_parameters(method.model)
        if not available:
            raise ValueError("the method's model has no parameters to randomise")
        device = next(method.model.parameters()).device
        super().__init__(
            method,
            inputs,
            target,
            seed=seed,
            generator=generator,
            attribute_options=attribute_options,
            device=device,
            floating=False,
        )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if isinstance(similarity, str):
            if similarity not in SIMILARITIES:
                names = ", ".join(SIMILARITIES)
                raise ValueError(f"similarity must be one of {names} or a callable; got {similarity!r}")
            similarity = SIMILARITIES[similarity]
        elif not callable(similarity):
            raise TypeError(f"similarity must be a name or a callable, got {type(similarity).__name__}")
        if layers is None:
            layers = available[::-1]
        else:
            if isinstance(layers, str):
                raise TypeError(f"layers must be a sequence of layer names, got the string {layers!r}")
            layers = list(layers)
            unknown = [name for name in layers if name not in available]
            if unknown or not layers:
                raise ValueError(
                    f"layers must name layers with parameters; unknown: {unknown or 'none given'}; "
                    f"layers with parameters: {available}"
                )
        self.model: nn.Module = method.model
        self.mode: str = mode
        self.similarity: Similarity = similarity
        self.abs: bool = bool(abs)
        self.layers: list[str] = list(layers)

    def __repr__(self) -> str:
        return f"ParameterRandomization({self.method!r}, mode={self.mode!r}, layers={len(self.layers)})"

    def __call__(self, maps: Any = None) -> OrderedDict[str, Tensor]:
        """Correlation per layer ``(N,)`` of ``maps`` (the method's, computed if None) and the randomised maps."""
        target = self._clean_target()
        inputs = self.batch.tensors
        original = self._maps(self.method, inputs, target) if maps is None else flat_maps(maps, "maps", self.batch.n)
        memo: dict[int, Any] = {}
        model_copy = copy.deepcopy(self.model, memo)
        method_copy = copy.deepcopy(self.method, memo)
        modules = dict(model_copy.named_modules())
        generator = self._draws()
        results: OrderedDict[str, Tensor] = OrderedDict()
        for name in self.layers:
            module = modules[name]
            independent = self.mode == "independent"
            saved = [p.detach().clone() for p in module.parameters(recurse=False)] if independent else []
            randomize_(module, generator)
            randomized = self._maps(method_copy, inputs, target)
            results[name] = self._similarity(original, randomized)
            if independent:
                with torch.no_grad():
                    for param, value in zip(module.parameters(recurse=False), saved):
                        param.copy_(value)
        return results

    def _similarity(self, original: Tensor, randomized: Tensor) -> Tensor:
        original, randomized = original.to(torch.float64), randomized.to(device=original.device, dtype=torch.float64)
        if self.abs:
            original, randomized = original.abs(), randomized.abs()
        return self.similarity(original, randomized)
