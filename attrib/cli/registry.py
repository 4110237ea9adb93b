"""The one table from method names to attribution methods (used by the ``attrib`` command and by dataset runs).

Each entry builds the method for a model, composed with the post-processing
that turns its raw output into one input-sized heat map ``(N, 1, H, W)``
(``ReduceChannels("abs_max")`` for input-gradient methods, ``Resize()`` for
maps that live on a layer or a coarse grid), and carries ``attribute``
options suited to a fast demo. Methods are imported inside the builders, so
this module imports even where an optional family is absent.

Example:
    >>> method = build_method("gradcam", model)
    >>> maps = method.attribute(images, target=3, **default_options("gradcam"))   # (N, 1, H, W)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..attribution import Attribution
from ..postprocess import ReduceChannels, Resize, Step

Builder = Callable[[nn.Module, "str | None"], Attribution]


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry.

    Attributes:
        name: the registry (command-line) name.
        title: the name shown in tables and figure titles.
        family: ``"gradient"``, ``"layer"`` or ``"perturbation"``.
        build: ``(model, layer) -> raw method`` (before :attr:`steps`).
        steps: post-processing that yields an ``(N, 1, H, W)`` map.
        options: default ``attribute`` options for a fast run.
        uses_layer: whether ``layer`` means anything to the method.
        evaluations: model evaluations per map with :attr:`options`, roughly (for cost estimates).
    """

    name: str
    title: str
    family: str
    build: Builder
    steps: tuple[Step, ...]
    options: dict[str, Any] = field(default_factory=dict)
    uses_layer: bool = False
    evaluations: int = 1


def preferred_layer(model: nn.Module, role: str = "cam") -> str | None:
    """A model's own choice of layer for ``role`` (its ``attrib_layers`` dict), or None to let the method pick."""
    layers = getattr(model, "attrib_layers", None)
    if isinstance(layers, dict):
        value = layers.get(role)
        return value if isinstance(value, str) else None
    return None


def _layer(model: nn.Module, layer: str | None) -> Any:
    return layer if layer is not None else preferred_layer(model, "cam")


# Builders: imports are lazy so that a missing family only breaks its own entries.


def _saliency(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.gradient import Saliency

    return Saliency(model)


def _inputxgradient(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.gradient import InputXGradient

    return InputXGradient(model)


def _integratedgradients(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.integrated_gradients import IntegratedGradients

    return IntegratedGradients(model)


def _smoothgrad(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.gradient import Saliency
    from ..methods.noise_tunnel import NoiseTunnel

    return NoiseTunnel(Saliency(model))


def _guidedbackprop(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.modified_backprop import GuidedBackprop

    return GuidedBackprop(model)


def _deconvnet(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.modified_backprop import Deconvnet

    return Deconvnet(model)


def _cam(class_name: str) -> Builder:
    def build(model: nn.Module, layer: str | None) -> Attribution:
        from ..methods import cam

        cls: Any = getattr(cam, class_name)
        return cls(model, _layer(model, layer))  # type: ignore[no-any-return]

    return build


def _score_cam(class_name: str) -> Builder:
    def build(model: nn.Module, layer: str | None) -> Attribution:
        from ..methods import score_cam

        cls: Any = getattr(score_cam, class_name)
        return cls(model, _layer(model, layer))  # type: ignore[no-any-return]

    return build


def _eigencam(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.eigen_cam import EigenCAM

    return EigenCAM(model, _layer(model, layer))


def _guidedgradcam(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.guided_grad_cam import GuidedGradCAM

    return GuidedGradCAM(model, _layer(model, layer))


def _required_layer(model: nn.Module, layer: str | None, method: str) -> str:
    chosen = _layer(model, layer)
    if chosen is None:
        raise ValueError(f"{method} needs a layer: pass --layer (layer=...) with a dotted module name")
    return str(chosen)


def _excitation(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.excitation import ExcitationBackprop

    return ExcitationBackprop(model, _required_layer(model, layer, "excitation backprop"))


def _contrastive_excitation(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.excitation import ContrastiveExcitationBackprop

    contrast = preferred_layer(model, "contrast")
    classifier = preferred_layer(model, "classifier")
    if contrast is None:
        contrast, classifier = _contrast_layers(model)
    chosen = _required_layer(model, layer, "contrastive excitation backprop")
    return ContrastiveExcitationBackprop(model, chosen, contrast, classifier_layer=classifier)


def _contrast_layers(model: nn.Module) -> tuple[str, str | None]:
    """The input side of the last linear layer (TorchRay's ``contrast_layer``) and that layer."""
    names = [name for name, module in model.named_modules() if name and not list(module.children())]
    linear = [i for i, name in enumerate(names) if isinstance(model.get_submodule(name), nn.Linear)]
    if not linear or linear[-1] == 0:
        raise ValueError(
            "contrastive excitation needs a model ending in a linear classifier, or attrib_layers "
            "{'contrast': ..., 'classifier': ...} on the model"
        )
    return names[linear[-1] - 1], names[linear[-1]]


def _occlusion(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.occlusion import Occlusion

    return Occlusion(model)


def _rise(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.rise import RISE

    return RISE(model)


def _extremal(model: nn.Module, layer: str | None) -> Attribution:
    from ..methods.extremal import ExtremalPerturbation

    return ExtremalPerturbation(model)


_GRAD = (ReduceChannels("abs_max"),)
_MAP = (Resize(),)

_ENTRIES = (
    MethodSpec("saliency", "Saliency", "gradient", _saliency, _GRAD),
    MethodSpec("inputxgradient", "Input x Gradient", "gradient", _inputxgradient, _GRAD),
    MethodSpec(
        "integratedgradients", "Integrated Gradients", "gradient", _integratedgradients, _GRAD, {"n_steps": 16},
        False, 16,
    ),
    MethodSpec("smoothgrad", "SmoothGrad", "gradient", _smoothgrad, _GRAD, {"n_samples": 16, "seed": 0}, False, 16),
    MethodSpec("guidedbackprop", "Guided Backprop", "gradient", _guidedbackprop, _GRAD),
    MethodSpec("deconvnet", "DeconvNet", "gradient", _deconvnet, _GRAD),
    MethodSpec("gradcam", "Grad-CAM", "layer", _cam("GradCAM"), _MAP, uses_layer=True),
    MethodSpec("hirescam", "HiResCAM", "layer", _cam("HiResCAM"), _MAP, uses_layer=True),
    MethodSpec("xgradcam", "XGrad-CAM", "layer", _cam("XGradCAM"), _MAP, uses_layer=True),
    MethodSpec("gradcampp", "Grad-CAM++", "layer", _cam("GradCAMPlusPlus"), _MAP, uses_layer=True),
    MethodSpec("layercam", "Layer-CAM", "layer", _cam("LayerCAM"), _MAP, uses_layer=True),
    MethodSpec("scorecam", "Score-CAM", "layer", _score_cam("ScoreCAM"), _MAP, uses_layer=True, evaluations=64),
    MethodSpec(
        "ablationcam", "Ablation-CAM", "layer", _score_cam("AblationCAM"), _MAP, uses_layer=True, evaluations=64
    ),
    MethodSpec("eigencam", "Eigen-CAM", "layer", _eigencam, _MAP, uses_layer=True),
    MethodSpec("linearapprox", "Linear Approx.", "layer", _cam("LinearApprox"), _MAP, uses_layer=True),
    MethodSpec("guidedgradcam", "Guided Grad-CAM", "layer", _guidedgradcam, _GRAD, uses_layer=True),
    MethodSpec("excitation", "Excitation BP", "layer", _excitation, _MAP, uses_layer=True),
    MethodSpec(
        "contrastive_excitation", "Contrastive EBP", "layer", _contrastive_excitation, _MAP, uses_layer=True
    ),
    MethodSpec(
        "occlusion", "Occlusion", "perturbation", _occlusion, _MAP, {"window": 12, "stride": 4}, False, 196
    ),
    MethodSpec("rise", "RISE", "perturbation", _rise, _MAP, {"num_masks": 1000, "seed": 0}, False, 1000),
    MethodSpec(
        "extremal", "Extremal Perturbation", "perturbation", _extremal, _MAP,
        # TorchRay's schedule squeezed from 800 steps into 100: the area weight reaches the same final value
        {"areas": [0.05], "max_iter": 100, "regul_growth": round(1.0035**8, 6)},
        False, 200,
    ),
)

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _ENTRIES}
"""Registry name -> :class:`MethodSpec`, in the order the command shows them."""

_ALIASES = {
    "ig": "integratedgradients",
    "gradient": "saliency",
    "guided": "guidedbackprop",
    "gradcam++": "gradcampp",
    "ebp": "excitation",
    "cebp": "contrastive_excitation",
}


def method_names() -> tuple[str, ...]:
    """Every registry name, in display order."""
    return tuple(METHODS)


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case, dashes and a few aliases forgiven).

    Raises:
        ValueError: no such method; the message lists the names.
    """
    if not isinstance(name, str):
        raise TypeError(f"method name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        key = key.replace("_", "")
        key = {k.replace("_", ""): k for k in METHODS}.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return key


def spec_of(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``."""
    return METHODS[canonical_name(name)]


def build_method(name: str, model: nn.Module, *, layer: str | None = None) -> Attribution:
    """The method ``name`` for ``model``, composed so that it returns ``(N, 1, H, W)`` input-sized maps.

    ``layer`` (a dotted module name) is used by layer methods; None lets the
    model's ``attrib_layers`` or the method pick. Options for ``attribute``
    are the caller's; :func:`default_options` gives fast ones.

    Raises:
        ValueError: unknown name or layer.
        ImportError: the method's family is not installed in this build.
    """
    spec = spec_of(name)
    method = spec.build(model, layer)
    return method.then(*spec.steps)


def default_options(name: str, size: int | None = None) -> dict[str, Any]:
    """Fast ``attribute`` options for ``name`` (a fresh dict: the caller may change it).

    ``size`` is the images' larger side: Occlusion's window and stride, set
    for the shipped 64 px images, scale with it so that a 224 px image also
    takes about 200 windows rather than 2,900.
    """
    options: dict[str, Any] = {k: (list(v) if isinstance(v, list) else v) for k, v in spec_of(name).options.items()}
    if spec_of(name).name == "occlusion" and size is not None and size != 64:
        window, stride = int(options["window"]), int(options["stride"])
        options.update(window=max(2, round(window * size / 64)), stride=max(1, round(stride * size / 64)))
    return options
