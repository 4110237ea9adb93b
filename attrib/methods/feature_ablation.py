"""Feature ablation and permutation feature importance: switch one feature group at a time, record the score drop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.baselines import as_baselines
from ..core.batching import BatchSize, check_batch_size
from ..core.checks import positive_int
from ..core.features import as_feature_groups
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..core.randomness import make_generator
from ..perturbation_attribution import PerturbationAttribution
from ..targets import TargetLike


class FeatureAblation(PerturbationAttribution):
    r"""Feature ablation, as Captum's ``FeatureAblation``.

    The elements of each input are grouped into features by ``feature_mask``
    (see :mod:`attrib.core.features`; by default every element is its own
    feature). Feature :math:`j` covers the elements :math:`G_j`; replacing
    them by the baseline :math:`b` gives the attribution

    .. math::
        A_t(x)_i = S_t(x) - S_t\big(x \odot (1 - \mathbb 1_{G_j}) + b \odot \mathbb 1_{G_j}\big),
        \qquad i \in G_j,

    the same value for every element of the group. Ids span the inputs of a
    tuple: an id used in two inputs is one feature, ablated in both at once.
    With per-example masks each example's features are numbered on their
    own (:func:`~attrib.core.features.as_feature_groups` with ``local``), so
    ``1 + max_e F_e`` copies are scored, not one per id of the whole batch.

    Inputs need not be floating point: for token ids pass ``baselines`` as
    ids (a pad or mask token). ``baselines``: a number (0 by default), a
    tensor broadcastable to the input, or a tuple of these per input.

    The ``(1 + F) x N`` rows (the clean inputs, then one ablated copy per
    feature) are laid out sample-major and scored ``batch_size`` rows at a
    time, so peak memory is one block plus one score per row whatever ``F``.
    Maps have each input's shape ``(N, ...)``; an ``(N, K)`` target gives
    ``(N, K, ...)`` from the same forward passes.

    Example:
        >>> ablation = FeatureAblation(model)
        >>> mask = grid_mask((224, 224), 16)                        # (1, 1, 224, 224): 196 cells
        >>> maps = ablation.attribute(images, target=labels, feature_mask=mask, batch_size=128)
        >>> maps.shape                                              # (N, 3, 224, 224)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = 0,
        feature_mask: Any = None,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
    ) -> Any:
        """Feature ablation maps of ``target`` for ``inputs``, in the form of ``inputs``."""
        batch = as_input_batch(inputs, floating=False)
        args = as_forward_args(additional_forward_args, batch.n)
        batch_size = check_batch_size(batch_size)
        groups = as_feature_groups(feature_mask, batch, local=True)  # 1 + max_e F_e copies, not 1 + all ids
        fills = as_baselines(baselines, batch)

        def perturb(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
            return groups.ablate(copy - 1, example, batch.tensors, fills)  # copy 0: feature -1, the clean input

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            scores = self._perturbed_scores(
                batch.n, 1 + groups.n_features, perturb, args, resolved, batch_size, batch.device
            )
        drops = groups.features_last(scores[:1] - scores[1:])  # (N, F) or (N, K, F)
        return batch.restore(groups.expand(drops))


class FeaturePermutation(PerturbationAttribution):
    r"""Permutation feature importance, as Captum's ``FeaturePermutation``.

    Feature :math:`j` (a group :math:`G_j` of ``feature_mask``) is shuffled
    across the batch: example :math:`n` gets the values of example
    :math:`\pi_j(n)` on :math:`G_j` and keeps its own elsewhere, with
    :math:`\pi_j` a uniformly random permutation of the :math:`N` examples
    other than the identity, drawn independently per feature. Each element of
    the group gets the example's score drop, averaged over
    ``n_permutations`` draws (Captum does one):

    .. math::
        A_t(x)_{n,i} = \frac{1}{P} \sum_{p=1}^{P}
        \Big(S_t(x_n) - S_t\big(x_n \odot (1 - \mathbb 1_{G_j}) + x_{\pi_{j,p}(n)} \odot \mathbb 1_{G_j}\big)\Big),
        \qquad i \in G_j.

    The result depends on the whole batch (it needs ``N >= 2``): it is a
    dataset-level importance read per example, not a per-example explanation.
    A feature spanning several inputs moves as one unit (one permutation for
    all its elements; Captum draws one per input tensor). Permutations are
    drawn on the inputs' device from ``seed``/``generator`` before any forward
    pass (``P x F x N`` indices), so the result does not depend on
    ``batch_size``. Extra forward arguments stay with their example.

    Example:
        >>> importance = FeaturePermutation(model).attribute(table, target=0, seed=0)   # (N, D)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        feature_mask: Any = None,
        n_permutations: int = 1,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
    ) -> Any:
        """Permutation importance maps of ``target`` for ``inputs``, in the form of ``inputs``."""
        batch = as_input_batch(inputs, floating=False)
        n = batch.n
        if n < 2:
            raise ValueError("FeaturePermutation shuffles features across the batch, so inputs need N >= 2 examples")
        n_permutations = positive_int(n_permutations, "n_permutations", "the number of permutations per feature")
        args = as_forward_args(additional_forward_args, n)
        batch_size = check_batch_size(batch_size)
        groups = as_feature_groups(feature_mask, batch)
        features = groups.n_features
        count = int(n_permutations) * features
        sources = batch_permutations(count, n, make_generator(seed, generator, batch.device))

        def perturb(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
            local = copy - 1  # copy 0 is the clean input; copy 1 + p * F + j permutes feature j
            feature = torch.where(local >= 0, local % features, -1)
            source = sources[local.clamp(min=0), example]
            return groups.ablate(feature, example, batch.tensors, batch.tensors, source)

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            scores = self._perturbed_scores(n, 1 + count, perturb, args, resolved, batch_size, batch.device)
        drops = (scores[:1] - scores[1:]).view(int(n_permutations), features, *scores.shape[1:]).mean(0)
        return batch.restore(groups.expand(groups.features_last(drops)))


def batch_permutations(count: int, n: int, generator: torch.Generator) -> Tensor:
    """``(count, n)``: independent uniform permutations of ``0..n-1`` other than the identity (``n >= 2``).

    Row ``c`` says which example each example takes its values from. Drawn
    by sorting uniform keys on the generator's device; identity rows are
    redrawn (one host check per round; a round is needed with probability
    ``count / n!``, so rounds are few even for ``n = 2``).
    """
    device = torch.device(generator.device)
    perms = torch.rand(count, n, generator=generator, device=device).argsort(1)
    identity = torch.arange(n, device=device)
    redo = (perms == identity).all(1).nonzero().squeeze(1)
    while redo.numel():
        perms[redo] = torch.rand(redo.numel(), n, generator=generator, device=device).argsort(1)
        redo = redo[(perms[redo] == identity).all(1)]
    return perms
