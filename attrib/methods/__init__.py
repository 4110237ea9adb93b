"""Attribution methods, one file per family.

* gradients: :mod:`.gradient` (Saliency, InputXGradient), :mod:`.integrated_gradients`,
  :mod:`.noise_tunnel` (SmoothGrad, SmoothGrad², VarGrad), :mod:`.modified_backprop`
  (Guided Backprop, DeconvNet);
* layers: :mod:`.cam` (Grad-CAM and the gradient CAMs, LinearApprox), :mod:`.score_cam`
  (ScoreCAM, AblationCAM), :mod:`.eigen_cam`, :mod:`.guided_grad_cam`, :mod:`.excitation`
  (excitation backprop and its contrastive form);
* layer attribution (Captum's): :mod:`.layer_integrated_gradients` (LayerIntegratedGradients,
  LayerConductance), :mod:`.layer_activation` (LayerActivation, LayerGradientXActivation);
* relevance: :mod:`.lrp` (LRP under the composites of :mod:`attrib.lrp`);
* transformers: :mod:`.attention` (attention rollout, Chefer et al.'s gradient-weighted rollout),
  :mod:`.attn_lrp` (AttnLRP);
* reference-based: :mod:`.deeplift` (DeepLift, DeepLiftShap), :mod:`.gradient_shap`;
* perturbations: :mod:`.occlusion`, :mod:`.rise`, :mod:`.extremal`;
* feature groups: :mod:`.feature_ablation` (FeatureAblation, FeaturePermutation), :mod:`.shapley`,
  :mod:`.lime` (Lime and the coalition-surrogate base), :mod:`.kernel_shap`.
"""

from .attention import AttentionRollout, GradientWeightedRollout
from .attn_lrp import AttnLRP
from .cam import GradCAM, GradCAMPlusPlus, GradientCAM, HiResCAM, LayerCAM, LinearApprox, XGradCAM
from .deeplift import DeepLift, DeepLiftShap
from .eigen_cam import EigenCAM
from .excitation import ContrastiveExcitationBackprop, ExcitationBackprop
from .extremal import ExtremalPerturbation
from .feature_ablation import FeatureAblation, FeaturePermutation
from .gradient import InputXGradient, Saliency
from .gradient_shap import GradientShap
from .guided_grad_cam import GuidedGradCAM
from .integrated_gradients import IntegratedGradients
from .kernel_shap import KernelShap
from .layer_activation import LayerActivation, LayerGradientXActivation
from .layer_integrated_gradients import LayerConductance, LayerIntegratedGradients
from .lime import Lime
from .lrp import LRP
from .modified_backprop import Deconvnet, GuidedBackprop
from .noise_tunnel import NoiseTunnel
from .occlusion import Occlusion
from .rise import RISE
from .score_cam import AblationCAM, ChannelScoreCAM, ScoreCAM
from .shapley import ShapleyValueSampling

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
    "ChannelScoreCAM",
    "ContrastiveExcitationBackprop",
    "Deconvnet",
    "EigenCAM",
    "ExcitationBackprop",
    "ExtremalPerturbation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "LayerCAM",
    "LinearApprox",
    "NoiseTunnel",
    "Occlusion",
    "Saliency",
    "ScoreCAM",
    "XGradCAM",
]
