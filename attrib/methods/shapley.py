"""Shapley value sampling: average marginal contributions of feature groups over random orders."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.baselines import as_baselines
from ..core.batching import BatchSize, check_batch_size
from ..core.checks import positive_int
from ..core.features import as_feature_groups
from ..core.inputs import InputsLike, as_forward_args, as_input_batch
from ..core.randomness import feature_major_rand, make_generator
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
    shared by the examples (as in Captum). With per-example masks (token
    spans of texts of different lengths, superpixels) each example's features
    are numbered ``0 .. F_e-1`` and its order is the shared order of
    ``0 .. F-1`` (``F`` the most any example has) restricted to its own
    features; orders are drawn by sorting keys laid out feature by feature
    (:func:`feature_orders`), so that restriction is exactly the order the
    example draws alone: an example's map does not depend on the rest of the
    batch. All prefixes of all orders are
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
        samples = positive_int(n_samples, "n_samples", "the number of random orders")
        n, device = batch.n, batch.device
        args = as_forward_args(additional_forward_args, n)
        batch_size = check_batch_size(batch_size)
        groups = as_feature_groups(feature_mask, batch, local=True)
        fills = as_baselines(baselines, batch)
        features = groups.n_features
        orders = feature_orders(samples, features, make_generator(seed, generator, device), bool(antithetic))
        rank = orders.argsort(1).unsqueeze(1)  # rank[p, 0, j]: the position of feature j in order p
        if groups.per_example:  # rank[p, e, j]: its position among example e's features 0 .. F_e - 1
            own = torch.where(groups.occurs.unsqueeze(0), rank, features)
            rank = own.argsort(dim=2, stable=True).argsort(dim=2)
        partial = features - 1

        def perturb(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
            # copy 0: the baseline, copy 1: the input, copy 2 + p (F - 1) + k - 1: the first k features of order p
            local = (copy - 2).clamp(min=0)
            order = torch.div(local, max(partial, 1), rounding_mode="floor")
            size = torch.where(copy >= 2, local % max(partial, 1) + 1, copy * features)
            present = rank[order, example if groups.per_example else 0] < size.unsqueeze(1)
            return groups.compose(present, example, batch.tensors, fills)

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            n_copies = 2 + orders.shape[0] * partial
            scores = self._perturbed_scores(n, n_copies, perturb, args, resolved, batch_size, device)
        values = scores.to(torch.float64)
        shape = (orders.shape[0], 1, *values.shape[1:])
        middle = values[2:].view(orders.shape[0], partial, *values.shape[1:])
        prefixes = torch.cat([values[0].expand(shape), middle, values[1].expand(shape)], 1)  # (P, F + 1, N[, K])
        if groups.per_example:  # an example's prefixes of F_e or more features are its input: score it as such
            whole = torch.arange(features + 1, device=device).view(-1, 1) >= groups.counts.view(1, -1)  # (F + 1, N)
            whole = whole.view(1, *whole.shape, *([1] * (values.dim() - 2)))
            prefixes = torch.where(whole, values[1].unsqueeze(0).unsqueeze(0), prefixes)
        gains = prefixes[:, 1:] - prefixes[:, :-1]  # (P, F, N[, K]): gain of adding the feature at each position
        at_rank = rank.transpose(1, 2).reshape(*rank.shape[:1], features, -1, *([1] * (gains.dim() - 3)))
        phi = gains.gather(1, at_rank.expand_as(gains)).mean(0).to(scores.dtype)  # (F, N[, K]), by feature
        return batch.restore(groups.expand(groups.features_last(phi)))


def feature_orders(count: int, features: int, generator: torch.Generator, antithetic: bool = False) -> Tensor:
    """``(count, features)``: uniformly random orders of ``0..features-1`` (row ``p`` lists order ``p``).

    Drawn on the generator's device by sorting uniform float64 keys laid out
    feature by feature (:func:`~attrib.core.randomness.feature_major_rand`,
    ties broken by feature number), so order ``p`` restricted to features
    ``0 .. G-1`` is ``feature_orders(count, G)[p]`` from the same generator
    state. With ``antithetic`` rows come in pairs, an order followed by its reverse.
    """
    drawn = (count + 1) // 2 if antithetic else count
    orders = feature_major_rand(drawn, features, generator, torch.float64).argsort(dim=1, stable=True)
    if antithetic:
        orders = torch.stack([orders, orders.flip(1)], 1).reshape(-1, features)[:count]
    return orders
