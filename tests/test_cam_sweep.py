"""Every CAM on torchvision classifiers with random weights, layer=None, small inputs: finite maps of the right shape.

ResNet-18 and small-dimension ViT and Swin models run in CI; the rest of the families are marked slow
(``pytest -m slow``), among them the real ``vit_b_16`` and ``swin_t`` at 224 px.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from attrib.methods.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, LinearApprox, XGradCAM
from attrib.methods.eigen_cam import EigenCAM
from attrib.methods.guided_grad_cam import GuidedGradCAM
from attrib.methods.score_cam import AblationCAM, ScoreCAM
from attrib.rules import UnsupportedModelError

from .models import inputs_for, reinitialise

CAMS = [GradCAM, HiResCAM, XGradCAM, GradCAMPlusPlus, LayerCAM, LinearApprox, ScoreCAM, AblationCAM, EigenCAM]
M = torchvision.models


def _vit_small() -> nn.Module:
    return M.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )


def _swin_small() -> nn.Module:
    return M.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 1], window_size=[2, 2], num_classes=10
    )


# name -> (constructor, input size, expected grid of the chosen layer)
FAST: dict[str, tuple[Callable[[], nn.Module], int, tuple[int, int]]] = {
    "resnet18": (lambda: M.resnet18(num_classes=10), 64, (2, 2)),
    "vit_small": (_vit_small, 32, (4, 4)),
    "swin_small_dims": (_swin_small, 32, (2, 2)),
}
SLOW: dict[str, tuple[Callable[[], nn.Module], int, tuple[int, int]]] = {
    "resnet50": (lambda: M.resnet50(num_classes=10), 64, (2, 2)),
    "vgg11": (lambda: M.vgg11(num_classes=10), 64, (2, 2)),
    "densenet121": (lambda: M.densenet121(num_classes=10), 64, (2, 2)),
    "mobilenet_v3_large": (lambda: M.mobilenet_v3_large(num_classes=10), 64, (2, 2)),
    "efficientnet_b0": (lambda: M.efficientnet_b0(num_classes=10), 64, (2, 2)),
    "convnext_tiny": (lambda: M.convnext_tiny(num_classes=10), 64, (2, 2)),
    "regnet_y_400mf": (lambda: M.regnet_y_400mf(num_classes=10), 64, (2, 2)),
    "mobilenet_v3_small": (lambda: M.mobilenet_v3_small(num_classes=10), 64, (2, 2)),
    "swin_t": (lambda: M.swin_t(num_classes=10), 224, (7, 7)),
    "vit_b_16": (lambda: M.vit_b_16(num_classes=10), 224, (14, 14)),
}


def _heads_nonzero(model: nn.Module) -> nn.Module:
    """torchvision zero-initialises some heads (ViT), which would make every gradient 0; refill the last Linear."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    reinitialise(last, 0, scale=1.0)
    return model.eval()


def _check(name: str, spec: tuple[Callable[[], nn.Module], int, tuple[int, int]], cams: list[type]) -> None:
    build, size, grid = spec
    torch.manual_seed(0)  # torchvision's own initialisers use the global RNG
    model = _heads_nonzero(build())
    x = inputs_for((3, size, size), 1, 0)
    for cls in cams:
        options = {"batch_size": 256} if cls in (ScoreCAM, AblationCAM) else {}
        maps = cls(model).attribute(x, target=torch.tensor([[1, 2]]), **options)
        assert maps.shape == (1, 2, 1, *grid), (name, cls.__name__, maps.shape)
        assert torch.isfinite(maps).all(), (name, cls.__name__)
    try:
        guided = GuidedGradCAM(model).attribute(x, target=1)
    except UnsupportedModelError as err:  # guided backprop is defined for ReLU networks only
        assert "ReLU" in str(err)
    else:
        assert guided.shape == x.shape and torch.isfinite(guided).all()


@pytest.mark.parametrize("name", sorted(FAST))
def test_sweep_fast(name):
    # ScoreCAM/AblationCAM (one evaluation per channel: 512 on ResNet-18) and the gradient CAMs that share
    # GradCAM's code path run on ResNet-18 in the slow sweep (resnet50 there); the ViT and Swin run every CAM.
    cams = CAMS if name != "resnet18" else [GradCAM, GradCAMPlusPlus, EigenCAM]
    _check(name, FAST[name], cams)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_sweep_slow(name):
    cams = CAMS if SLOW[name][1] < 224 else [GradCAM, HiResCAM, EigenCAM]
    _check(name, SLOW[name], cams)
