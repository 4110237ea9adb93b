"""attrib: attribution (saliency) maps for PyTorch models.

>>> import attrib
>>> maps = attrib.Saliency(model).attribute(images, target=3)

Every method is an :class:`Attribution`; methods compose with ``.then(steps)``
(post-processing), ``*`` (products) and :class:`NoiseTunnel` (noise averaging).
"""

from .attribution import Attribution
from .compose import Pipeline, Product
from .core.inputs import InputsLike
from .gradient_attribution import GradientAttribution
from .layer_attribution import LayerAttribution
from .methods import Deconvnet, GuidedBackprop, InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
from .perturbation_attribution import PerturbationAttribution
from .postprocess import GaussianSmooth, MinMaxNormalize, PercentileClip, ReduceChannels, Resize, Step
from .rules import BackwardRule, DeconvReLU, GuidedReLU, UnsupportedModelError
from .targets import Target, TargetLike

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "BackwardRule",
    "DeconvReLU",
    "Deconvnet",
    "GaussianSmooth",
    "GradientAttribution",
    "GuidedBackprop",
    "GuidedReLU",
    "InputXGradient",
    "InputsLike",
    "IntegratedGradients",
    "LayerAttribution",
    "MinMaxNormalize",
    "NoiseTunnel",
    "PercentileClip",
    "PerturbationAttribution",
    "Pipeline",
    "Product",
    "ReduceChannels",
    "Resize",
    "Saliency",
    "Step",
    "Target",
    "TargetLike",
    "UnsupportedModelError",
]
