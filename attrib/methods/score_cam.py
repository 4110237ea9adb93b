r"""CAMs weighted by evaluating the model once per channel: ScoreCAM and AblationCAM.

Both take the layer's activations :math:`A \in \mathbb{R}^{C \times h \times w}`
from one clean forward pass, evaluate the model on one changed copy per
channel (a masked input for ScoreCAM, an ablated activation for
AblationCAM), turn the ``C`` target scores into channel weights :math:`w`,
and return :math:`\mathrm{ReLU}(\sum_k w_k A_k)` at the layer's resolution
(``(N, 1, h, w)``; ``(N, K, 1, h, w)`` for an ``(N, K)`` target, all ``K``
from the same ``C`` copies).

Memory: the ``C x N`` copies are laid out sample-major and evaluated
``batch_size`` rows at a time; only the current block's copies exist at any
moment, plus the layer's clean activations ``(N, C, h, w)`` and one score per
copy. Peak memory is therefore one forward pass of ``batch_size`` rows plus
``batch_size`` input-sized masks, whatever ``C`` is: on ResNet-50's
``layer4`` (``C = 2048``, 7x7 at 224 px) with ``batch_size=32`` that is 32
masked images (19 MB in float32) and the activations of a 32-image forward
pass, against 2048 masked copies (1.2 GB per image) if all were built at once.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.batching import BatchSize, check_batch_size
from ..core.forward import Model
from ..core.inputs import ForwardArgs, InputBatch, InputsLike, as_forward_args, as_input_batch
from ..core.tokens import Layout, Reshape, ablation_positions
from ..layer_attribution import LayerAttribution
from ..targets import Target, TargetLike
from .cam import channel_sum, safe_divide

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


class ChannelScoreCAM(LayerAttribution):
    """Base of CAMs whose channel weights come from the target scores of one model evaluation per channel.

    A subclass defines :meth:`channel_scores` (the ``C`` scores of every
    example) and :meth:`channel_weights` (scores to weights).
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
        relu: bool = True,
    ) -> Tensor:
        """The map of ``target`` for ``inputs``: ``(N, 1, *grid)``, or ``(N, K, 1, *grid)`` for ``(N, K)`` targets.

        Args:
            batch_size: the most rows (copies) in one forward pass (default 64, as Occlusion and RISE);
                bounds the memory.
            relu: clamp the map at zero (default, as the papers).
        """
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        batch_size = check_batch_size(batch_size)
        activation, resolved, clean = self._layer_activations(batch, args, batch_size, target)
        layout = self._layout(activation, batch.tensors)
        grid = layout.to_grid(activation)
        with self._guard():
            scores = self.channel_scores(batch, args, resolved, batch_size, activation, layout, grid)
        weights = self.channel_weights(scores.movedim(0, -1), clean.unsqueeze(-1))  # (N, [K,] C)
        grid_dims = grid.dim() - 2
        weights = weights.reshape(*weights.shape, *([1] * grid_dims)).to(grid.dtype)
        return channel_sum(weights, grid.unsqueeze(1) if clean.dim() == 2 else grid, grid_dims, relu)

    @abstractmethod
    def channel_scores(
        self,
        batch: InputBatch,
        args: ForwardArgs,
        target: Target,
        batch_size: BatchSize,
        activation: Tensor,
        layout: Layout,
        grid: Tensor,
    ) -> Tensor:
        """Target scores ``(C, N)`` or ``(C, N, K)`` of the copy for each channel of each example.

        ``activation`` is the layer's clean output ``(N, ...)``, ``grid`` its
        map ``(N, C, *grid)`` under ``layout``.
        """

    @abstractmethod
    def channel_weights(self, scores: Tensor, clean: Tensor) -> Tensor:
        """Channel weights ``(N, [K,] C)`` from the copies' scores ``(N, [K,] C)`` and the clean ``(N, [K,] 1)``."""


class ScoreCAM(ChannelScoreCAM):
    r"""Score-CAM (Wang et al., 2020), as pytorch-grad-cam computes it.

    Each channel :math:`A_k` is upsampled to the input size (bilinear, corners
    aligned, as ``torch.nn.UpsamplingBilinear2d``) and min-max normalised to a
    mask :math:`M_k \in [0, 1]` (0 for a constant channel); the input is
    multiplied by each mask and scored:

    .. math:: w_k = \operatorname{softmax}_k \big(S(x \odot M_k)\big), \qquad
              M = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    :math:`S` is the target score of the model output (the logit for a
    classifier), as in pytorch-grad-cam; the paper's version uses the
    softmax probability minus the baseline's, which a callable ``target``
    can express. Every input tensor with the first input's number of
    dimensions is masked (at its own size); other inputs pass unchanged.
    ``C`` masked copies per example, ``batch_size`` at a time (see the
    module docstring for the memory bound). Shapes as :class:`attrib.GradCAM`.

    Example:
        >>> maps = attrib.ScoreCAM(model, "layer4").attribute(images, target=3, batch_size=32)
    """

    def channel_scores(
        self,
        batch: InputBatch,
        args: ForwardArgs,
        target: Target,
        batch_size: BatchSize,
        activation: Tensor,
        layout: Layout,
        grid: Tensor,
    ) -> Tensor:
        def rows(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
            channel = grid[example, copy].unsqueeze(1)  # (R, 1, *grid)
            return tuple(_masked(x.index_select(0, example), channel) for x in batch.tensors)

        return self._perturbed_scores(batch.n, grid.shape[1], rows, args, target, batch_size, batch.device)

    def channel_weights(self, scores: Tensor, clean: Tensor) -> Tensor:
        return torch.softmax(scores, dim=-1)


def _masked(x: Tensor, channel: Tensor) -> Tensor:
    """``x`` times the upsampled, min-max normalised ``channel`` ``(R, 1, *grid)``; ``x`` if shapes do not match."""
    if x.dim() != channel.dim() or x.dim() - 2 not in _INTERPOLATION:
        return x
    mask = F.interpolate(channel.to(x.dtype), size=x.shape[2:], mode=_INTERPOLATION[x.dim() - 2], align_corners=True)
    flat = mask.flatten(1)
    low = flat.amin(1, keepdim=True)
    mask = safe_divide(flat - low, flat.amax(1, keepdim=True) - low).view_as(mask)
    return x * mask


class AblationCAM(ChannelScoreCAM):
    r"""Ablation-CAM (Desai and Ramaswamy, 2020): the relative score drop when a channel is removed.

    For each channel :math:`k` the model runs on the clean input with the
    layer's output changed so that the map's channel :math:`k` is set to
    ``ablation_value`` (0, as in the paper), and

    .. math:: w_k = \frac{S(x) - S_{A_k \leftarrow 0}(x)}{S(x)}, \qquad
              M = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    (:math:`w = 0` where :math:`S(x) = 0`). For token layers only the
    positions that form the map are ablated (a ViT's class token is kept).
    pytorch-grad-cam agrees on layers whose activations reach 0 (after a
    ReLU); elsewhere it ablates to :math:`\min A - 10^7`. ``C`` evaluations
    per example, ``batch_size`` at a time (see the module docstring); the
    layers below the ablated one are recomputed in each. Shapes as
    :class:`attrib.GradCAM`.

    Example:
        >>> maps = attrib.AblationCAM(model, "layer4").attribute(images, target=3, batch_size=64)
    """

    def __init__(
        self,
        model: Model,
        layer: str | nn.Module | None = None,
        *,
        ablation_value: float = 0.0,
        reshape: Reshape | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, layer, reshape=reshape, eval_mode=eval_mode)
        if isinstance(ablation_value, bool) or not isinstance(ablation_value, (int, float)):
            raise TypeError(f"ablation_value must be a number, got {type(ablation_value).__name__}")
        self.ablation_value = float(ablation_value)

    def channel_scores(
        self,
        batch: InputBatch,
        args: ForwardArgs,
        target: Target,
        batch_size: BatchSize,
        activation: Tensor,
        layout: Layout,
        grid: Tensor,
    ) -> Tensor:
        positions = ablation_positions(layout, tuple(activation.shape[1:])).to(activation.device).flatten(1)
        current: list[tuple[Tensor, Tensor]] = []

        def rows(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
            current[:] = [(example, copy)]
            return batch.rows(example)

        def ablated(output: Tensor) -> Tensor:
            example, copy = current[0]
            clean = activation.index_select(0, example)
            if output.shape != clean.shape:
                raise ValueError(
                    f"layer {self.layer_name!r} gave shape {tuple(output.shape)} for a block whose clean "
                    f"output has shape {tuple(clean.shape)}; AblationCAM needs a deterministic layer"
                )
            flat = clean.flatten(1).clone()
            flat.scatter_(1, positions.index_select(0, copy), self.ablation_value)
            return flat.view_as(clean)

        with self._captured(replace=ablated):
            return self._perturbed_scores(batch.n, grid.shape[1], rows, args, target, batch_size, batch.device)

    def channel_weights(self, scores: Tensor, clean: Tensor) -> Tensor:
        return safe_divide(clean - scores, clean.expand_as(scores))
