"""Which attrib method explains tokens, and how its map becomes one score per token.

Two kinds, shared by :class:`~attrib.text.ClassifierExplainer` and
:class:`~attrib.text.GenerationExplainer`:

* *embedding* methods run at the output of the token-embedding layer
  (``(R, L, D)``) and reduce over ``D``: integrated gradients
  (:class:`attrib.LayerIntegratedGradients` from the baseline ids) and
  gradient x input sum it, saliency takes the gradient's L2 norm;
* *perturbation* methods switch tokens (or words, or template fields) to the
  baseline id, over the feature groups of :func:`~attrib.text.token_feature_mask`:
  feature ablation, Shapley value sampling, KernelSHAP, LIME.

``linear`` says whether a method's attribution is linear in the explained
score, so that the attribution of a sum of scores is the sum of their
attributions (LIME's lasso fit and saliency's norm are not).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attribution import Attribution
from ..core.state import guarded
from ..layer_attribution import LayerAttribution
from ..methods.feature_ablation import FeatureAblation
from ..methods.kernel_shap import KernelShap
from ..methods.layer_activation import LayerGradientXActivation
from ..methods.layer_integrated_gradients import LayerIntegratedGradients
from ..methods.lime import Lime
from ..methods.shapley import ShapleyValueSampling
from ..perturbation_attribution import PerturbationAttribution

#: Options the explainers set themselves.
_RESERVED = ("baselines", "feature_mask", "additional_forward_args", "return_convergence_delta", "inputs")


@dataclass(frozen=True)
class TokenMethod:
    """A method over tokens: how to build it and how to reduce its map.

    Attributes:
        name: the method's name (as given, or the class name).
        kind: ``"embedding"`` or ``"perturbation"``.
        build: ``(model, embeddings) -> Attribution``.
        reduce: ``"sum"`` or ``"norm"`` over the embedding dimension (embedding methods).
        linear: whether the attribution is linear in the score.
    """

    name: str
    kind: str
    build: Callable[[nn.Module, nn.Module], Attribution]
    reduce: str = "sum"
    linear: bool = True


_BUILTIN: dict[str, TokenMethod] = {
    "integrated_gradients": TokenMethod(
        "integrated_gradients", "embedding", lambda m, e: LayerIntegratedGradients(m, e)
    ),
    "input_x_gradient": TokenMethod("input_x_gradient", "embedding", lambda m, e: LayerGradientXActivation(m, e)),
    "saliency": TokenMethod(
        "saliency", "embedding", lambda m, e: LayerGradientXActivation(m, e, multiply_by_inputs=False), "norm", False
    ),
    "feature_ablation": TokenMethod("feature_ablation", "perturbation", lambda m, e: FeatureAblation(m)),
    "shapley": TokenMethod("shapley", "perturbation", lambda m, e: ShapleyValueSampling(m)),
    "kernel_shap": TokenMethod("kernel_shap", "perturbation", lambda m, e: KernelShap(m)),
    "lime": TokenMethod("lime", "perturbation", lambda m, e: Lime(m), linear=False),
}

METHODS = tuple(_BUILTIN)
"""The method names the explainers take."""


def token_method(method: object, allowed: tuple[str, ...] = METHODS) -> TokenMethod:
    """Validate ``method``: a name in ``allowed`` or a subclass of :class:`attrib.LayerAttribution`
    (run at the embeddings) or :class:`attrib.PerturbationAttribution` (run over token features).

    Raises:
        ValueError: an unknown name.
        TypeError: anything else.
    """
    if isinstance(method, str):
        if method not in allowed:
            raise ValueError(
                f"method must be one of {', '.join(allowed)} or an attrib Attribution class, got {method!r}"
            )
        return _BUILTIN[method]
    if isinstance(method, type) and issubclass(method, LayerAttribution):
        cls: Any = method
        return TokenMethod(method.__name__, "embedding", lambda m, e: cls(m, e), linear=False)
    if isinstance(method, type) and issubclass(method, PerturbationAttribution):
        cls = method
        return TokenMethod(method.__name__, "perturbation", lambda m, e: cls(m), linear=False)
    raise TypeError(
        f"method must be one of {', '.join(allowed)}, or a subclass of attrib.LayerAttribution (run at the "
        f"embeddings) or attrib.PerturbationAttribution (run over token features); got {method!r}"
    )


def check_options(options: dict[str, Any]) -> None:
    """Refuse the options an explainer sets itself."""
    for name in _RESERVED:
        if name in options:
            raise TypeError(
                f"{name}= is set by the explainer (baselines from baseline=, features from granularity=, the "
                f"attention mask as a forward argument); it cannot be passed as an option"
            )


def check_embeddings_run_once(
    spec: TokenMethod, model: nn.Module, embeddings: nn.Module, names: Sequence[str], row: tuple[Tensor, ...]
) -> None:
    """Refuse an embedding method when the per-token inputs ``names`` make the embedding module run twice.

    GPT-2 embeds ``token_type_ids`` with its token embeddings: the module
    then runs once for the tokens and once for the segments, and a method at
    its output cannot tell them apart. One forward pass of the first row
    (``row``: ``model``'s positional arguments) counts the calls.

    Raises:
        ValueError: the embedding module runs more than once per forward pass.
    """
    if spec.kind != "embedding" or not names:
        return
    calls = [0]

    def count(module: nn.Module, args: Any, output: Any) -> None:
        calls[0] += 1

    handle = embeddings.register_forward_hook(count)
    try:
        with guarded(model), torch.no_grad():
            model(*row)
    finally:
        handle.remove()
    if calls[0] > 1:
        raise ValueError(
            f"with {', '.join(names)} the token-embedding module runs {calls[0]} times per forward pass (GPT-2 "
            f"embeds token_type_ids with its token embeddings), so {spec.name} at the embeddings cannot tell the "
            "tokens apart; use a perturbation method (feature_ablation, shapley, kernel_shap, lime), or inputs "
            f"without {', '.join(names)}"
        )


def _accepted(method: Attribution, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without ``seed`` for a method that draws nothing (it is used by the sampling methods only)."""
    parameters = inspect.signature(method.attribute).parameters
    return {k: v for k, v in options.items() if k != "seed" or "seed" in parameters}


def run(
    spec: TokenMethod,
    method: Attribution,
    inputs: Tensor,
    args: tuple[Any, ...],
    target: Any,
    baselines: Tensor,
    feature_mask: Tensor,
    options: dict[str, Any],
) -> Tensor:
    """Run ``method`` and reduce its map to ``(N, L)`` (``(N, K, L)`` for ``(N, K)`` targets).

    ``inputs`` are what the wrapped model takes first (token ids, or a
    template's presence flags), ``args`` its further arguments (the attention
    mask), ``baselines`` the reference inputs, ``feature_mask`` the
    per-example feature ids (perturbation methods).
    """
    options = _accepted(method, options)
    if spec.kind == "perturbation":
        result = method.attribute(
            inputs, target, baselines=baselines, feature_mask=feature_mask, additional_forward_args=args, **options
        )
        return result  # type: ignore[no-any-return]
    if "baselines" in inspect.signature(method.attribute).parameters:
        options = {**options, "baselines": baselines}
    maps: Tensor = method.attribute(inputs, target, additional_forward_args=args, **options)
    return maps.norm(dim=-1) if spec.reduce == "norm" else maps.sum(-1)
