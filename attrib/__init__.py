"""attrib: attribution (saliency) maps for PyTorch models.

>>> import attrib
>>> maps = attrib.Saliency(model).attribute(images, target=3)
>>> cams = attrib.GradCAM(model, "layer4").then(attrib.Resize()).attribute(images, target=3)

Every method is an :class:`Attribution`; methods compose with ``.then(steps)``
(post-processing), ``*`` (products) and :class:`NoiseTunnel` (noise averaging).
The bases are :class:`GradientAttribution`, :class:`LayerAttribution` and
:class:`PerturbationAttribution`; backward rules (:class:`BackwardRule`)
redefine how the backward pass runs through the graph, and :mod:`attrib.lrp`
holds LRP's rules and composites. A :class:`Neuron` target explains an inner
unit instead of a class. Metrics live in
:mod:`attrib.metrics`, perturbation building blocks in :mod:`attrib.perturb`,
the shipped benchmark data and models in :mod:`attrib.data`, pictures in
:mod:`attrib.viz`, dataset-scale runs in :mod:`attrib.dataset`, token
attribution for text classifiers and language models in :mod:`attrib.text`.
"""

from . import lrp, metrics, perturb, text
from .attribution import Attribution
from .compose import Pipeline, Product
from .core.inputs import InputsLike
from .dataset import MapStore, SettingsMismatchError, evaluate_dataset, explain_dataset
from .gradient_attribution import GradientAttribution
from .layer_attribution import LayerAttribution
from .methods import (
    LRP,
    RISE,
    AblationCAM,
    AttentionRollout,
    AttnLRP,
    ContrastiveExcitationBackprop,
    Deconvnet,
    DeepLift,
    DeepLiftShap,
    EigenCAM,
    ExcitationBackprop,
    ExtremalPerturbation,
    FeatureAblation,
    FeaturePermutation,
    GradCAM,
    GradCAMPlusPlus,
    GradientShap,
    GradientWeightedRollout,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerActivation,
    LayerCAM,
    LayerConductance,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    Lime,
    LinearApprox,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ScoreCAM,
    ShapleyValueSampling,
    XGradCAM,
)
from .perturbation_attribution import PerturbationAttribution
from .postprocess import GaussianSmooth, MinMaxNormalize, PercentileClip, ReduceChannels, Resize, Step
from .rules import BackwardRule, DeconvReLU, GuidedReLU, UnsupportedModelError
from .targets import Neuron, Target, TargetLike

__version__ = "0.3.0"

__all__ = [
    "GradientWeightedRollout",
    "AttnLRP",
    "AttentionRollout",
    "LRP",
    "Lime",
    "KernelShap",
    "LayerIntegratedGradients",
    "LayerConductance",
    "LayerGradientXActivation",
    "LayerActivation",
    "ShapleyValueSampling",
    "GradientShap",
    "FeaturePermutation",
    "FeatureAblation",
    "DeepLiftShap",
    "DeepLift",
    "RISE",
    "AblationCAM",
    "Attribution",
    "BackwardRule",
    "ContrastiveExcitationBackprop",
    "DeconvReLU",
    "Deconvnet",
    "EigenCAM",
    "ExcitationBackprop",
    "ExtremalPerturbation",
    "GaussianSmooth",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientAttribution",
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedReLU",
    "HiResCAM",
    "InputXGradient",
    "InputsLike",
    "IntegratedGradients",
    "LayerAttribution",
    "LayerCAM",
    "LinearApprox",
    "MapStore",
    "MinMaxNormalize",
    "Neuron",
    "NoiseTunnel",
    "Occlusion",
    "PercentileClip",
    "PerturbationAttribution",
    "Pipeline",
    "Product",
    "ReduceChannels",
    "Resize",
    "Saliency",
    "ScoreCAM",
    "SettingsMismatchError",
    "Step",
    "Target",
    "TargetLike",
    "UnsupportedModelError",
    "XGradCAM",
    "evaluate_dataset",
    "explain_dataset",
    "lrp",
    "metrics",
    "perturb",
    "text",
]
