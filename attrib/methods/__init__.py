"""Attribution methods, one file per family."""

from .gradient import InputXGradient, Saliency
from .integrated_gradients import IntegratedGradients
from .modified_backprop import Deconvnet, GuidedBackprop
from .noise_tunnel import NoiseTunnel

__all__ = ["Deconvnet", "GuidedBackprop", "InputXGradient", "IntegratedGradients", "NoiseTunnel", "Saliency"]
