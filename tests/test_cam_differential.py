"""The CAM family against the peers: Captum, TorchRay and pytorch-grad-cam, to 1e-5 relative.

pytorch-grad-cam returns min-max normalised maps upsampled with OpenCV; we
compare with its raw map instead: after its forward pass we call its own
``get_cam_image`` on the activations and gradients it recorded and apply the
ReLU its ``compute_cam_per_layer`` applies, before any scaling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import GuidedGradCam as CaptumGuidedGradCam
from captum.attr import LayerGradCam
from pytorch_grad_cam import (
    AblationCAM as PgcAblationCAM,
)
from pytorch_grad_cam import (
    EigenCAM as PgcEigenCAM,
)
from pytorch_grad_cam import (
    GradCAM as PgcGradCAM,
)
from pytorch_grad_cam import (
    GradCAMPlusPlus as PgcGradCAMPlusPlus,
)
from pytorch_grad_cam import (
    HiResCAM as PgcHiResCAM,
)
from pytorch_grad_cam import (
    LayerCAM as PgcLayerCAM,
)
from pytorch_grad_cam import (
    ScoreCAM as PgcScoreCAM,
)
from pytorch_grad_cam import (
    XGradCAM as PgcXGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchray.attribution.grad_cam import grad_cam as torchray_grad_cam
from torchray.attribution.linear_approx import linear_approx as torchray_linear_approx

from attrib.methods.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, LinearApprox, XGradCAM
from attrib.methods.eigen_cam import EigenCAM
from attrib.methods.guided_grad_cam import GuidedGradCAM
from attrib.methods.score_cam import AblationCAM, ScoreCAM

from .models import Spec, build, inputs_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


def vgg_like(style: str, seed: int) -> torch.nn.Sequential:
    """conv, relu, conv, relu, maxpool, conv, relu, flatten, linear (ReLUs as modules or functional calls)."""
    return build(Spec(3, 8, (4, 6, 5), (False, True, False), (), 6, (style,) * 4, seed))


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to 1e-5 relative (of the map's scale)."""
    theirs = theirs.to(ours.dtype)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()) + 1e-12)


STYLES = ["module", "functional", "tensor_inplace"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("layer", ["2", "6"])
def test_grad_cam_matches_captum_layer_grad_cam(style, layer):
    model = vgg_like(style, seed=1)
    x = inputs_for((3, 8, 8), 3, seed=1)
    targets = [0, 3, 5]
    module = dict(model.named_modules())[layer]
    theirs = LayerGradCam(model, module).attribute(x, target=targets, relu_attributions=True)
    close(GradCAM(model, layer).attribute(x, target=targets), theirs)
    signed = LayerGradCam(model, module).attribute(x, target=targets)
    close(GradCAM(model, layer).attribute(x, target=targets, relu=False), signed)


def test_guided_grad_cam_matches_captum():
    model = vgg_like("module", seed=2)
    x = inputs_for((3, 8, 8), 2, seed=2)
    theirs = CaptumGuidedGradCam(model, model[5]).attribute(x, target=[1, 4])
    close(GuidedGradCAM(model, "5", mode="nearest").attribute(x, target=[1, 4]), theirs)


@pytest.mark.parametrize("style", ["module", "functional", "tensor"])  # TorchRay's probe rejects in-place ReLUs
@pytest.mark.parametrize("layer", ["2", "6"])
def test_grad_cam_and_linear_approx_match_torchray(style, layer):
    model = vgg_like(style, seed=3)
    x = inputs_for((3, 8, 8), 2, seed=3)
    close(GradCAM(model, layer).attribute(x, target=4), torchray_grad_cam(model, x, 4, saliency_layer=layer))
    close(LinearApprox(model, layer).attribute(x, target=4), torchray_linear_approx(model, x, 4, saliency_layer=layer))


PGC = {
    "gradcam": (PgcGradCAM, GradCAM, {}),
    "hirescam": (PgcHiResCAM, HiResCAM, {}),
    "xgradcam": (PgcXGradCAM, XGradCAM, {}),
    "gradcam++": (PgcGradCAMPlusPlus, GradCAMPlusPlus, {"eps": 1e-6}),
    "layercam": (PgcLayerCAM, LayerCAM, {}),
    "scorecam": (PgcScoreCAM, ScoreCAM, {}),
    "ablationcam": (PgcAblationCAM, AblationCAM, {}),
}


def pgc_raw_maps(cls: type, model: torch.nn.Module, layer: str, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """pytorch-grad-cam's map before normalisation and upsampling: ReLU(get_cam_image(A, G))."""
    module = dict(model.named_modules())[layer]
    cam = cls(model=model, target_layers=[module])
    wanted = [ClassifierOutputTarget(t) for t in targets]
    cam(input_tensor=x, targets=wanted)
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy() if cam.activations_and_grads.gradients else None
    raw = cam.get_cam_image(x, module, wanted, acts, grads, False)
    cam.activations_and_grads.release()
    return np.maximum(raw, 0)


@pytest.mark.parametrize("name", sorted(PGC))
@pytest.mark.parametrize("style", ["module", "functional"])
def test_cams_match_pytorch_grad_cam(name, style):
    theirs_cls, ours_cls, options = PGC[name]
    model = vgg_like(style, seed=4)
    x = inputs_for((3, 8, 8), 2, seed=4)
    layer = "6"  # after a ReLU: pytorch-grad-cam's AblationCAM zeroes channels there, as the paper does
    theirs = torch.from_numpy(pgc_raw_maps(theirs_cls, model, layer, x, [2, 5])).unsqueeze(1)
    close(ours_cls(model, layer, **options).attribute(x, target=[2, 5], batch_size=7), theirs)


def test_eigen_cam_matches_pytorch_grad_cam_up_to_the_sign_of_the_component():
    model = vgg_like("module", seed=5)
    x = inputs_for((3, 8, 8), 3, seed=5)
    module = model[6]
    cam = PgcEigenCAM(model=model, target_layers=[module])
    cam(input_tensor=x, targets=None)
    acts = cam.activations_and_grads.activations[0].numpy()
    theirs = torch.from_numpy(cam.get_cam_image(x, module, None, acts, None, False)).unsqueeze(1)  # signed
    cam.activations_and_grads.release()
    ours = EigenCAM(model, "6").attribute(x, relu=False)
    for i in range(3):
        sign = 1.0 if float((ours[i] * theirs[i]).sum()) >= 0 else -1.0
        close(ours[i], sign * theirs[i])
