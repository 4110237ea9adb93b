"""Shapley value sampling: average marginal contributions of feature groups over random orders."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from ..core.baselines import as_baselines
from ..core.batching import BatchSize, check_batch_size
from ..core.features import as_feature_groups
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..core.randomness import make_generator
from ..perturbation_attribution import PerturbationAttribution
from ..targets import TargetLike


class ShapleyValueSampling(PerturbationAttribution):
    r"""Shapley value sampling (Castro et al., 2009), as Captum's ``ShapleyValueSampling``.

    The features of ``feature_mask`` (see :mod:`attrib.core.features`) are
    players; a coalition :math:`C` is scored as :math:`v(C) = S_t(x_C)`,
    where :math:`x_C` takes the input on the features in :math:`C` and the
    baseline elsewhere. For ``n_samples`` orders :math:`\sigma_p` drawn
    uniformly, the features are added one by one starting from the baseline;
    feature :math:`j` gets its mean marginal contribution

    .. math::
        \phi_j = \frac{1}{P} \sum_{p=1}^{P}
        \Big(v\big(\mathrm{pre}_p(j) \cup \{j\}\big) - v\big(\mathrm{pre}_p(j)\big)\Big),

    with :math:`\mathrm{pre}_p(j)` the features before :math:`j` in
    :math:`\sigma_p`: an unbiased estimate of the Shapley value, exact for
    an additive model. Each order's contributions telescope to
    :math:`S_t(x) - S_t(b)`, so *efficiency holds for any* ``n_samples``
    (to float64 rounding of the score differences): the map summed over the
    elements of each group, i.e. :math:`\sum_j \phi_j`, is the score gain.
    Every element of a group gets the group's value; a feature an example
    lacks (per-example masks) gets 0 there.

    ``antithetic=True`` pairs each drawn order with its reverse (the
    ``n_samples`` orders are ``n_samples // 2`` pairs, plus one unpaired
    order if odd), which lowers the variance for models whose interactions
    are mostly pairwise.

    Orders are drawn on the inputs' device from ``seed``/``generator`` and
    shared by the examples (as in Captum). All prefixes of all orders are
    scored as sample-major rows, ``batch_size`` at a time: the baseline and
    the full input once, and ``F - 1`` partial coalitions per order, so
    ``2 + P (F - 1)`` copies per example. Inputs may be token ids, with
    ``baselines`` as ids. Maps have each input's shape; an ``(N, K)`` target
    gives ``(N, K, ...)``.

    Example:
        >>> shapley = ShapleyValueSampling(model)
        >>> maps = shapley.attribute(images, target=labels, feature_mask=superpixels, n_samples=50, seed=0)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = 0,
        feature_mask: Any = None,
        n_samples: int = 25,
        antithetic: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
    ) -> Any:
        """Shapley value maps of ``target`` for ``inputs``, in the form of ``inputs``."""
        batch = as_input_batch(inputs, floating=False)
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int (the number of random orders), got {n_samples!r}")
        n, device = batch.n, batch.device
        args = as_forward_args(additional_forward_args, n)
        batch_size = check_batch_size(batch_size)
        groups = as_feature_groups(feature_mask, batch)
        fills = as_baselines(baselines, batch)
        features = groups.n_features
        orders = feature_orders(int(n_samples), features, make_generator(seed, generator, device), bool(antithetic))
        rank = orders.argsort(1)  # rank[p, j]: the position of feature j in order p
        partial = features - 1

        def perturb(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
            # copy 0: the baseline, copy 1: the input, copy 2 + p (F - 1) + k - 1: the first k features of order p
            local = (copy - 2).clamp(min=0)
            order = torch.div(local, max(partial, 1), rounding_mode="floor")
            size = torch.where(copy >= 2, local % max(partial, 1) + 1, copy * features)
            present = rank.index_select(0, order) < size.unsqueeze(1)
            return groups.compose(present, example, batch.tensors, fills)

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            n_copies = 2 + orders.shape[0] * partial
            scores = self._perturbed_scores(n, n_copies, perturb, args, resolved, batch_size, device)
        values = scores.to(torch.float64)
        shape = (orders.shape[0], 1, *values.shape[1:])
        middle = values[2:].view(orders.shape[0], partial, *values.shape[1:])
        prefixes = torch.cat([values[0].expand(shape), middle, values[1].expand(shape)], 1)  # (P, F + 1, N[, K])
        gains = prefixes[:, 1:] - prefixes[:, :-1]  # (P, F, N[, K]): gain of adding the feature at each position
        at_rank = rank.view(*rank.shape, *([1] * (gains.dim() - 2))).expand_as(gains)
        phi = gains.gather(1, at_rank).mean(0).to(scores.dtype)  # (F, N[, K]), by feature
        return batch.restore(groups.expand(groups.features_last(phi)))


def feature_orders(count: int, features: int, generator: torch.Generator, antithetic: bool = False) -> Tensor:
    """``(count, features)``: uniformly random orders of ``0..features-1`` (row ``p`` lists order ``p``).

    Drawn on the generator's device by sorting uniform keys; with
    ``antithetic`` rows come in pairs, an order followed by its reverse.
    """
    device = torch.device(generator.device)
    drawn = (count + 1) // 2 if antithetic else count
    orders = torch.rand(drawn, features, generator=generator, device=device).argsort(1)
    if antithetic:
        orders = torch.stack([orders, orders.flip(1)], 1).reshape(-1, features)[:count]
    return orders
