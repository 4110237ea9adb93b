"""Standalone perturbation modules: differentiable, device-resident building blocks of perturbation methods.

* :func:`gaussian_blur`: the one separable Gaussian blur (pyramid, smoothing step, baselines).
* :class:`Perturbation`: the blur/fade pyramid of increasingly perturbed copies, ``apply(mask)``.
* :class:`MaskGenerator`: smooth masks from a coarse parameter grid (extremal perturbation).
* :class:`RiseMasks`: RISE's random upsampled binary grids, regenerated chunk by chunk from a seed.
* :func:`grid_mask`, :func:`superpixel_mask`: integer feature masks (grid cells, superpixels) for the
  feature-group methods.
* :func:`simple_reward`, :func:`contrastive_reward`: extremal-perturbation rewards.
"""

from .blur import gaussian_blur
from .feature_masks import grid_mask, superpixel_mask
from .mask_generator import MaskGenerator
from .pyramid import Perturbation
from .rewards import contrastive_reward, simple_reward
from .rise_masks import RiseMasks

__all__ = [
    "MaskGenerator",
    "Perturbation",
    "RiseMasks",
    "contrastive_reward",
    "gaussian_blur",
    "grid_mask",
    "simple_reward",
    "superpixel_mask",
]
