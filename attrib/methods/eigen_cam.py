r"""Eigen-CAM: the first principal component of a layer's activations."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.batching import BatchSize, check_batch_size
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..layer_attribution import LayerAttribution
from ..targets import TargetLike


class EigenCAM(LayerAttribution):
    r"""Eigen-CAM (Muhammad and Yeasin, 2020). **Class-agnostic**: the map ignores ``target``.

    The layer's map :math:`A` of each example is read as :math:`P = hw`
    points in :math:`\mathbb{R}^C`, centred per channel
    (:math:`X = A^\top - \bar{A}`, shape :math:`P \times C`), and projected on
    its first right singular vector :math:`v_1` (the first principal axis):

    .. math:: M = \mathrm{ReLU}(s\, X v_1), \qquad
              s = \begin{cases} -1 & |\min X v_1| > \max X v_1 \\ 1 & \text{otherwise} \end{cases}

    The singular vector's sign is arbitrary; :math:`s` fixes it so that the
    larger extreme of the projection is positive (pytorch-grad-cam leaves
    it to LAPACK, so its map may be the negated one; ``relu=False`` returns
    the signed projection). One forward pass, no gradients; a batched SVD on
    the device. ``target`` only sets the output shape: ``(N, 1, *grid)``, or
    the same map repeated ``(N, K, 1, *grid)`` for an ``(N, K)`` target. It
    is still checked against the model output as by every method: a model
    returning a tuple, dict or dataclass-like output needs a callable target.

    Example:
        >>> maps = attrib.EigenCAM(model, "layer4").then(attrib.Resize()).attribute(images)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
        relu: bool = True,
    ) -> Tensor:
        """The first-principal-component map of ``inputs`` at the layer (``target`` is ignored but for ``K``)."""
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        # The scores are not used but for K; computing them checks the target against the output as elsewhere.
        activation, _, scores = self._layer_activations(batch, args, check_batch_size(batch_size), target)
        grid = self._layout(activation, batch.tensors).to_grid(activation)
        points = grid.flatten(2).transpose(1, 2)  # (N, P, C)
        points = points - points.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(points, full_matrices=False)
        projection = (points @ vh[:, :1].transpose(1, 2)).squeeze(-1)  # (N, P)
        flip = projection.amin(1, keepdim=True).abs() > projection.amax(1, keepdim=True)
        projection = torch.where(flip, -projection, projection)
        cam = projection.view(grid.shape[0], 1, *grid.shape[2:])
        if relu:
            cam = cam.clamp(min=0)
        if target is None:
            return cam
        return cam.unsqueeze(1).expand(-1, scores.shape[1], *cam.shape[1:]) if scores.dim() == 2 else cam
