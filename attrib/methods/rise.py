"""RISE: randomized input sampling for explanation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.batching import BatchSize, check_batch_size, row_blocks
from ..core.inputs import ForwardArgs, InputBatch, InputsLike, as_forward_args, as_input_batch
from ..perturb.rise_masks import RiseMasks
from ..perturbation_attribution import PerturbationAttribution
from ..targets import Target, TargetLike, class_scores

SCORES: dict[str, Callable[[Tensor], Tensor]] = {
    "softmax": lambda output: torch.softmax(_with_classes(_tensor(output, "softmax")), dim=1),
    "sigmoid": lambda output: torch.sigmoid(_tensor(output, "sigmoid")),
    "logits": lambda output: output,  # any output: a callable target may pick from a tuple or dict
}

#: Values in one accumulation chunk of full-resolution masks (16 MiB in float32).
_CHUNK_VALUES = 2**22


class RISE(PerturbationAttribution):
    r"""RISE (Petsiuk et al., 2018): the expected score of randomly masked inputs, per pixel.

    .. math::
        A_t(x)_{yx} = \frac{1}{p}\,\mathbb{E}_M\big[S_t(x \odot M)\, M_{yx}\big]
        \approx \frac{1}{p\,|\mathcal M|} \sum_{M \in \mathcal M} S_t(x \odot M)\, M_{yx}

    over ``num_masks`` smooth random masks :math:`M` (:class:`attrib.perturb.RiseMasks`:
    a ``num_cells`` grid of cells kept with probability ``p``, upsampled
    bilinearly with a random shift), each broadcast over the channels.
    :math:`S_t` is the score of class ``t``; ``score`` picks it:

    * ``"softmax"``: the softmax probability, for single-label classifiers
      (one class per image). Each class's probability also falls when another
      class's evidence rises, which is right when classes exclude each other.
    * ``"sigmoid"``: the sigmoid of the logit, for multi-label models (one
      independent sigmoid per class, several classes present; TorchRay's
      choice). With a softmax there, a class's map would also light up where
      the *other* objects are masked out.
    * ``"logits"``: the output as it is (the identity): raw logits, or a model
      that already ends in a softmax or sigmoid.
    * ``"auto"`` (the default) picks from the model and its output on the
      clean inputs: ``"sigmoid"`` if the model declares itself multi-label
      (``model.attrib_multilabel = True``, as the shipped ``shapes-*`` models
      do); ``"logits"`` if the output is not a tensor, has one class or none,
      or its rows are already distributions (non-negative, summing to 1: a
      softmax head); ``"softmax"`` otherwise. Raw logits do not tell whether
      classes exclude each other, nor does a sigmoid head's output, so set
      ``attrib_multilabel`` on your own multi-label model or pass ``score``.
      The choice of the last call is :attr:`chosen_score` (and shows in
      ``repr``).

    Since :math:`\mathbb{E}[M_{yx}] = p`, a model with a constant score ``s``
    gets the map ``s`` up to sampling noise (TorchRay's ``rise`` omits the
    ``1/p`` and gives ``p s``).

    Every target reads the same forward passes: an ``(N, K)`` target, or
    ``target="all"`` (every class), costs no more model evaluations than one
    target. The ``num_masks x N`` masked rows are evaluated ``batch_size`` rows
    at a time and the masks regenerated chunk by chunk, so memory is bounded by
    ``batch_size`` (plus ``num_cells**2 + 2`` numbers a mask), not by
    ``num_masks``; the masks depend only on the seed, never on ``batch_size``.

    Shapes: ``inputs`` ``(N, C, H, W)``; the maps are ``(N, 1, H, W)``, or
    ``(N, K, 1, H, W)`` for an ``(N, K)`` target or ``target="all"``
    (``K`` = the number of classes).

    Example:
        >>> rise = attrib.RISE(model)
        >>> maps = rise.attribute(images, target=labels, num_masks=4000, seed=0, batch_size=128)
        >>> every = rise.attribute(images, target="all", seed=0)     # (N, classes, 1, H, W)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike | str = None,
        *,
        num_masks: int = 8000,
        num_cells: int = 7,
        p: float = 0.5,
        score: str = "auto",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """RISE maps of ``target`` (``None``: the top-1 class; ``"all"``: every class) for images ``inputs``."""
        batch = as_input_batch(inputs)
        if batch.form != "tensor" or batch.tensors[0].dim() != 4:
            raise ValueError(
                "RISE explains images: inputs must be one tensor of shape (N, C, H, W), got "
                + (f"shape {tuple(batch.tensors[0].shape)}" if batch.form == "tensor" else f"a {batch.form}")
            )
        if score not in SCORES and score != "auto":
            raise ValueError(f"score must be one of {', '.join(map(repr, [*SCORES, 'auto']))}, got {score!r}")
        args = as_forward_args(additional_forward_args, batch.n)
        batch_size = check_batch_size(batch_size)
        x = batch.tensors[0]
        n, height, width = x.shape[0], x.shape[2], x.shape[3]
        masks = RiseMasks(
            num_masks, (height, width), num_cells=num_cells, p=p, seed=seed, generator=generator, device=x.device
        )
        with self._guard():
            base = self._rise_target(target, batch, args, batch_size)
            scored = _ScoredTarget(base, score, self.model)

            def perturb(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
                return (x.index_select(0, example) * masks.rows(copy, dtype=x.dtype),)

            scores = self._perturbed_scores(n, num_masks, perturb, args, scored, batch_size, x.device)
        self.chosen_score = scored.score
        # Sum over thousands of masks in at least float32, whatever the model's dtype.
        weights = scores.reshape(num_masks, -1).to(torch.promote_types(scores.dtype, torch.float32))
        saliency = weights.new_zeros(weights.shape[1], height * width)  # (N * K, H * W)
        for start, stop in row_blocks(num_masks, max(1, _CHUNK_VALUES // (height * width))):
            block = masks.chunk(start, stop, dtype=weights.dtype).view(stop - start, -1)
            saliency.addmm_(weights[start:stop].T, block)
        saliency /= num_masks * masks.p
        return saliency.to(scores.dtype).view(n, *scores.shape[2:], 1, height, width)

    chosen_score: str | None = None
    """The score the last call used (``"auto"`` resolved); None before the first call."""

    def __repr__(self) -> str:
        chosen = "" if self.chosen_score is None else f", score={self.chosen_score!r} in the last call"
        return f"{type(self).__name__}({type(self.model).__name__}{chosen})"

    def _rise_target(
        self, target: TargetLike | str, batch: InputBatch, args: ForwardArgs, batch_size: BatchSize
    ) -> Target:
        if isinstance(target, str):
            if target != "all":
                raise ValueError(f"the only string target is 'all' (every class), got {target!r}")
            return Target("callable", batch.n, fn=class_scores)
        return self._resolved_target(target, batch, args, batch_size)


def auto_score(model: object, output: object) -> str:
    """The score ``score="auto"`` picks for ``model`` from its ``output`` on clean inputs (see :class:`RISE`).

    Example:
        >>> auto_score(model, torch.tensor([[2.0, -1.0, 0.5]]))      # raw logits of a single-label model
        'softmax'
    """
    if getattr(model, "attrib_multilabel", False) is True:
        return "sigmoid"
    if not isinstance(output, Tensor) or not output.is_floating_point() or output.dim() < 2 or output.shape[1] == 1:
        return "logits"
    rows = output.flatten(2).sum(2) if output.dim() > 2 else output
    if bool((output >= 0).all()) and bool(((rows.sum(1) - 1).abs() <= 1e-4).all()):
        return "logits"  # every row is already a distribution over the classes (a softmax head)
    return "softmax"


class _ScoredTarget(Target):
    """``base``'s scores of a transformed output (probabilities instead of logits).

    ``score="auto"`` is resolved on the first block of perturbed outputs (the
    choice depends only on the model and on properties every output shares).
    """

    def __init__(self, base: Target, score: str, model: object) -> None:
        super().__init__(base.kind, base.n, base.indices, base.fn, base._checked)
        self.score, self.model = score, model

    def scores(self, output: Tensor, example: Tensor) -> Tensor:
        if self.score == "auto":
            self.score = auto_score(self.model, output)
        return super().scores(SCORES[self.score](output), example)


def _tensor(output: object, score: str) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model returned a {type(output).__name__}, not a Tensor; pass a callable target computing the score "
            f"and score='logits' (score={score!r} needs a Tensor output), "
            "e.g. target=lambda out: out.logits.softmax(1)[:, 3]"
        )
    return output


def _with_classes(output: Tensor) -> Tensor:
    if output.dim() < 2:
        raise ValueError(
            f"score='softmax' needs an output with a class dimension (N, C, ...), got shape {tuple(output.shape)}; "
            "use score='sigmoid' or score='logits'"
        )
    return output
