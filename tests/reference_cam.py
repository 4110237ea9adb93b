"""Slow float64 references for the CAM family, written from each paper's formula.

One example and one target at a time, explicit loops over channels, a
float64 copy of the model, plain forward hooks; none of attrib's blocks,
targets, layouts or capture machinery.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .reference import as_float64


def activation_and_gradient(model64: nn.Module, layer: str, x: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """A (C, h, w) and dS_c/dA of one example ``x`` (no batch dim) at ``layer``, in float64."""
    store: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: object, out: Tensor) -> None:
        out.retain_grad()
        store["a"] = out

    handle = dict(model64.named_modules())[layer].register_forward_hook(hook)
    try:
        out = model64(x.detach().double().unsqueeze(0).requires_grad_(True))
    finally:
        handle.remove()
    out[0, c].backward()
    return store["a"][0].detach(), store["a"].grad[0]


def _cam(weights: list[Tensor], a: Tensor, relu: bool) -> Tensor:
    """sum_k weights[k] * A_k, as a loop, then ReLU."""
    total = torch.zeros_like(a[0])
    for k in range(a.shape[0]):
        total = total + weights[k] * a[k]
    return total.clamp(min=0) if relu else total


def gradient_cam(method: str, a: Tensor, g: Tensor, relu: bool = True, eps: float = 0.0) -> Tensor:
    """One example's map (h, w) from A and G (C, h, w) by the named formula."""
    channels = range(a.shape[0])
    if method == "gradcam":
        return _cam([g[k].mean() for k in channels], a, relu)
    if method in ("hirescam", "linear_approx"):
        return _cam([g[k] for k in channels], a, relu)
    if method == "layercam":
        return _cam([g[k].clamp(min=0) for k in channels], a, relu)
    if method == "xgradcam":
        weights = []
        for k in channels:
            total = a[k].sum()
            weights.append((g[k] * a[k] / total).sum() if total != 0 else torch.zeros((), dtype=a.dtype))
        return _cam(weights, a, relu)
    if method == "gradcam++":
        weights = []
        for k in channels:
            w = torch.zeros((), dtype=a.dtype)
            for i in range(a.shape[1]):
                for j in range(a.shape[2]):
                    gij = g[k, i, j]
                    den = 2 * gij**2 + a[k].sum() * gij**3 + eps
                    if gij != 0 and den != 0:
                        w = w + gij**2 / den * max(float(gij), 0.0)
            weights.append(w)
        return _cam(weights, a, relu)
    raise ValueError(method)


def gradient_cams(
    method: str, model: nn.Module, layer: str, x: Tensor, targets: list[int], **options: object
) -> Tensor:
    m = as_float64(model)
    maps = []
    for i, c in enumerate(targets):
        a, g = activation_and_gradient(m, layer, x[i], c)
        maps.append(gradient_cam(method, a, g, **options).unsqueeze(0))  # type: ignore[arg-type]
    return torch.stack(maps)


def _layer_output(model64: nn.Module, layer: str, x: Tensor) -> tuple[Tensor, Tensor]:
    store: dict[str, Tensor] = {}
    handle = dict(model64.named_modules())[layer].register_forward_hook(
        lambda mod, args, out: store.setdefault("a", out.detach())
    )
    try:
        with torch.no_grad():
            out = model64(x.detach().double().unsqueeze(0))
    finally:
        handle.remove()
    return store["a"][0], out[0]


def score_cam(model: nn.Module, layer: str, x: Tensor, targets: list[int]) -> Tensor:
    """Softmax over channels of the score of x * normalised upsampled A_k; ReLU(sum_k w_k A_k)."""
    m = as_float64(model)
    maps = []
    for i, c in enumerate(targets):
        a, _ = _layer_output(m, layer, x[i])
        scores = []
        for k in range(a.shape[0]):
            up = F.interpolate(a[k][None, None], size=x.shape[2:], mode="bilinear", align_corners=True)[0, 0]
            span = up.max() - up.min()
            mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
            with torch.no_grad():
                scores.append(m((x[i].double() * mask).unsqueeze(0))[0, c])
        weights = torch.softmax(torch.stack(scores), 0)
        maps.append(_cam(list(weights), a, True).unsqueeze(0))
    return torch.stack(maps)


def ablation_cam(model: nn.Module, layer: str, x: Tensor, targets: list[int]) -> Tensor:
    """(S - S with channel k of the layer zeroed) / S per channel; ReLU(sum_k w_k A_k)."""
    m = as_float64(model)
    module = dict(m.named_modules())[layer]
    maps = []
    for i, c in enumerate(targets):
        a, out = _layer_output(m, layer, x[i])
        clean = out[c]
        weights = []
        for k in range(a.shape[0]):
            ablated = a.clone()
            ablated[k] = 0
            handle = module.register_forward_hook(lambda mod, args, o, abl=ablated: abl.unsqueeze(0))
            try:
                with torch.no_grad():
                    score = m(x[i].double().unsqueeze(0))[0, c]
            finally:
                handle.remove()
            weights.append((clean - score) / clean)
        maps.append(_cam(weights, a, True).unsqueeze(0))
    return torch.stack(maps)


def eigen_cam(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """Projection of the centred (hw, C) activations on the first principal axis (numpy SVD), sign fixed."""
    m = as_float64(model)
    maps = []
    for i in range(x.shape[0]):
        a, _ = _layer_output(m, layer, x[i])
        points = a.reshape(a.shape[0], -1).T.numpy()
        points = points - points.mean(axis=0)
        _, _, vt = np.linalg.svd(points, full_matrices=False)
        projection = points @ vt[0]
        if abs(projection.min()) > projection.max():
            projection = -projection
        maps.append(torch.from_numpy(projection.reshape(1, *a.shape[1:])))
    return torch.stack(maps)
