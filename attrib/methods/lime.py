"""LIME: a weighted linear surrogate fitted to the model's scores on random coalitions of feature groups."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import linear_fit
from ..core.baselines import as_baselines
from ..core.batching import BatchSize, check_batch_size
from ..core.checks import positive_int
from ..core.features import FeatureGroups, as_feature_groups
from ..core.inputs import ForwardArgs, InputBatch, InputsLike, as_forward_args, as_input_batch
from ..core.randomness import feature_major_rand, make_generator
from ..perturbation_attribution import PerturbationAttribution
from ..targets import TargetLike

SurrogateFit = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(X (B, S, F), y (B, S), w (B, S)) -> coef (B, F)``: a user's interpretable model, ``B`` fits at once."""

#: The most feature groups a surrogate is fitted over: its factor holds ``N (F + K + 1)^2`` float64 numbers.
MAX_FEATURES = 10_000

_MODELS = ("lasso", "ridge", "linear")
_DEFAULT_ALPHA = {"lasso": 0.01, "ridge": 1.0}


@dataclass(frozen=True)
class Coalitions:
    """One call's validated pieces: inputs, forward args, feature groups and fills (baselines)."""

    batch: InputBatch
    args: ForwardArgs
    groups: FeatureGroups
    fills: tuple[Tensor, ...]
    batch_size: BatchSize

    @property
    def active(self) -> Tensor:
        """``(N, F)`` bool: the features each example has."""
        return self.groups.occurs.expand(self.batch.n, self.groups.n_features)

    def maps(self, coef: Tensor, dtype: torch.dtype) -> Any:
        """Per-feature values ``(N, F)`` or ``(N, K, F)`` spread over each input's elements, in the caller's form."""
        return self.batch.restore(self.groups.expand(coef.to(dtype)))


class CoalitionSurrogate(PerturbationAttribution):
    """Base of LIME and KernelSHAP: score coalitions of feature groups, fit a linear surrogate per example.

    Subclasses choose the coalitions, their weights and the fit; this class
    validates the arguments and scores the coalitions' rows.
    """

    def _coalitions(
        self, inputs: InputsLike, baselines: Any, feature_mask: Any, batch_size: BatchSize, forward_args: Any
    ) -> Coalitions:
        batch = as_input_batch(inputs, floating=False)
        args = as_forward_args(forward_args, batch.n)
        groups = as_feature_groups(feature_mask, batch, local=True)
        if groups.n_features > MAX_FEATURES:
            raise ValueError(
                f"feature_mask gives {groups.n_features} features (every element is one when it is None); "
                f"{type(self).__name__} fits one coefficient per feature and takes at most {MAX_FEATURES}: group "
                "elements into superpixels or grid cells (attrib.perturb.feature_masks)"
            )
        return Coalitions(batch, args, groups, as_baselines(baselines, batch), check_batch_size(batch_size))

    def _coalition_scores(self, problem: Coalitions, present: Tensor, target: TargetLike) -> Tensor:
        """Scores ``(S, N)`` or ``(S, N, K)`` of the coalitions ``present`` ``(S, 1 or N, F)`` (bool), sample-major.

        Row ``(s, e)`` takes example ``e``'s input on the features of
        ``present[s, 0 or e]`` and its baseline elsewhere; ``batch_size``
        rows are scored at a time.
        """
        shared = present.shape[1] == 1
        flat = present.reshape(-1, present.shape[2])
        batch = problem.batch

        def perturb(example: Tensor, copy: Tensor) -> tuple[Tensor, ...]:
            index = copy if shared else copy * batch.n + example
            return problem.groups.compose(flat.index_select(0, index), example, batch.tensors, problem.fills)

        with self._guard():
            resolved = self._resolved_target(target, batch, problem.args, problem.batch_size)
            return self._perturbed_scores(
                batch.n, present.shape[0], perturb, problem.args, resolved, problem.batch_size, batch.device
            )


class Lime(CoalitionSurrogate):
    r"""LIME (Ribeiro et al., 2016) over feature groups, as Captum's ``Lime`` with its defaults.

    The features of ``feature_mask`` (see :mod:`attrib.core.features`) are
    switched on and off: a coalition :math:`z \in \{0, 1\}^F` gives the row
    :math:`x_z` (the input on the features with :math:`z_j = 1`, the baseline
    elsewhere). ``n_samples`` coalitions are drawn with every feature present
    with probability 1/2 (Captum's default sampler), scored
    :math:`y_s = S_t(x_{z_s})`, and weighted by an exponential kernel of the
    distance between the input and the row (Captum's default similarity):

    .. math::
        w_s = \exp\Big(-\frac{d(x, x_{z_s})^2}{2\,\sigma^2}\Big),\qquad
        d = 1 - \frac{\langle x, x_z\rangle}{\|x\|\,\|x_z\|}\ (\text{cosine}) \ \text{or}\ \|x - x_z\|_2,

    over all inputs' elements flattened together, :math:`\sigma` =
    ``kernel_width``. When an input is not floating point (token ids) its
    values are labels, not coordinates, and a distance between id vectors
    would depend on how the vocabulary is numbered; the distance is then
    taken on the interpretable (presence) representation instead, between
    the all-present coalition :math:`\mathbf 1` and :math:`z` over the
    example's :math:`M` features, as LIME's text explainer does:
    :math:`d = 1 - \sqrt{|z| / M}` (cosine; 1 for the empty coalition) or
    :math:`d = \sqrt{M - |z|}` (Euclidean). A linear model
    :math:`y \approx \beta_0 + z^\top\beta` with an intercept (scikit-learn's default ``fit_intercept=True``, as
    Captum's ``SkLearn*`` models) is fitted per example (and per target) in
    float64 on the device (:mod:`attrib.core.linear_fit`):

    * ``"lasso"`` (default, Captum's ``SkLearnLasso(alpha=0.01)``):
      :math:`\min \frac{1}{2\sum w} \sum_s w_s (y_s - \beta_0 - z_s^\top\beta)^2 + \alpha\|\beta\|_1`;
    * ``"ridge"`` (``alpha`` 1.0 by default): :math:`\sum_s w_s r_s^2 + \alpha\|\beta\|_2^2`;
    * ``"linear"``: weighted least squares, minimum-norm when the coalitions
      do not determine it (fewer samples than features);
    * a callable ``fit(X, y, w) -> coef``: ``X`` ``(B, S, F)`` float64 0/1
      coalitions (0 on the features an example lacks), ``y`` ``(B, S)``
      scores, ``w`` ``(B, S)`` weights, one row per problem (``B = N``
      examples, or ``N * K`` for an ``(N, K)`` target, example-major),
      returning ``(B, F)`` coefficients; whether to fit an intercept is its
      choice.

    Every element of a group gets its feature's coefficient :math:`\beta_j`
    (Captum's ``return_input_shape=True``).

    Coalitions are drawn on the inputs' device from ``seed``/``generator``
    and shared by the examples (Captum redraws per example; the distribution
    is the same). With per-example masks (token spans of texts of different
    lengths, superpixels) each example's features are numbered ``0 .. M_e-1``
    and the coalitions are drawn feature by feature
    (:func:`~attrib.core.randomness.feature_major_rand`), so example ``e``
    reads the same ``z`` over its own features in any batch as alone: an
    example's map does not depend on the rest of the batch. Rows are scored ``batch_size`` at a time; the fit keeps
    ``O(N F^2)`` numbers, whatever ``n_samples``, so group pixels into
    superpixels or cells (:mod:`attrib.perturb.feature_masks`) for images
    (at most :data:`MAX_FEATURES` features).
    Maps have each input's shape (``(N, K, ...)`` for an ``(N, K)`` target),
    in the scores' dtype.

    Example:
        >>> lime = Lime(model)
        >>> maps = lime.attribute(images, target=labels, feature_mask=superpixels, n_samples=500, seed=0)
        >>> ridge = lime.attribute(images, target=labels, feature_mask=superpixels, interpretable_model="ridge")
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        baselines: Any = 0,
        feature_mask: Any = None,
        n_samples: int = 25,
        interpretable_model: str | SurrogateFit = "lasso",
        alpha: float | None = None,
        kernel_width: float = 1.0,
        distance: str = "cosine",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: BatchSize = 64,
        additional_forward_args: Any = None,
    ) -> Any:
        """LIME maps of ``target`` for ``inputs``: each feature's surrogate coefficient, in the form of ``inputs``."""
        samples = positive_int(n_samples, "n_samples", "the number of coalitions scored per example")
        fit = _surrogate_fit(interpretable_model, alpha)
        if isinstance(kernel_width, bool) or not isinstance(kernel_width, numbers.Real) or not kernel_width > 0:
            raise ValueError(f"kernel_width must be a positive number, got {kernel_width!r}")
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
        problem = self._coalitions(inputs, baselines, feature_mask, batch_size, additional_forward_args)
        features = problem.groups.n_features
        draw = make_generator(seed, generator, problem.batch.device)
        present = lime_coalitions(samples, features, draw)
        scores = self._coalition_scores(problem, present, target)
        weights = similarity_weights(problem, present[:, 0], float(kernel_width), distance)
        values = scores.to(torch.float64)
        y = values if values.dim() == 3 else values.unsqueeze(2)
        coef = fit(present, y, weights, problem.active)  # (N, K, F)
        return problem.maps(coef if values.dim() == 3 else coef[:, 0], scores.dtype)


Fit = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``(present (S, 1, F), y (S, N, K), w (S, N), active (N, F)) -> coef (N, K, F)``."""


def _surrogate_fit(model: object, alpha: float | None) -> Fit:
    """The fit named by ``interpretable_model`` (with ``alpha``), checked."""
    if callable(model):
        if alpha is not None:
            raise ValueError("alpha is only for interpretable_model='lasso' or 'ridge', not for a callable")
        return _callable_fit(model)
    if model not in _MODELS:
        raise ValueError(
            f"interpretable_model must be 'lasso', 'ridge', 'linear' or a callable (X, y, w) -> coef, got {model!r}"
        )
    if model == "linear":
        if alpha is not None:
            raise ValueError("alpha is only for interpretable_model='lasso' or 'ridge', not for 'linear'")
    else:
        alpha = _DEFAULT_ALPHA[str(model)] if alpha is None else alpha
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    strength = float(alpha) if alpha is not None else 0.0

    def fit(present: Tensor, y: Tensor, weights: Tensor, active: Tensor) -> Tensor:
        factor = linear_fit.weighted_factor(present, y, weights, active)
        if model == "lasso":
            coef = linear_fit.lasso(factor, strength)
        elif model == "ridge":
            coef = linear_fit.ridge(factor, strength)
        else:
            coef = linear_fit.least_squares(factor)
        return coef.transpose(1, 2)

    return fit


def _callable_fit(model: SurrogateFit) -> Fit:
    def fit(present: Tensor, y: Tensor, weights: Tensor, active: Tensor) -> Tensor:
        n, k, features = y.shape[1], y.shape[2], present.shape[2]
        x = (present & active.unsqueeze(0)).to(torch.float64).permute(1, 0, 2)  # (N, S, F)
        samples = x.shape[1]
        xs = x.unsqueeze(1).expand(n, k, samples, features).reshape(n * k, samples, features)
        ys = y.permute(1, 2, 0).reshape(n * k, samples)
        ws = weights.t().unsqueeze(1).expand(n, k, samples).reshape(n * k, samples)
        coef = model(xs, ys, ws)
        if not isinstance(coef, Tensor) or tuple(coef.shape) != (n * k, features):
            got = tuple(coef.shape) if isinstance(coef, Tensor) else type(coef).__name__
            raise ValueError(
                f"interpretable_model must return a (B, F) = ({n * k}, {features}) tensor of coefficients "
                f"for X (B, S, F), y (B, S), w (B, S); got {got}"
            )
        coef = coef.to(device=y.device, dtype=torch.float64).view(n, k, features)
        return torch.where(active.unsqueeze(1), coef, torch.zeros_like(coef))

    return fit


def lime_coalitions(count: int, features: int, generator: torch.Generator) -> Tensor:
    """``(count, 1, features)`` bool: coalitions with every feature present with probability 1/2, independently.

    Drawn feature by feature (:func:`~attrib.core.randomness.feature_major_rand`):
    the first ``G`` columns are ``lime_coalitions(count, G)`` from the same generator state.
    """
    return (feature_major_rand(count, features, generator) < 0.5).unsqueeze(1)


def similarity_weights(problem: Coalitions, present: Tensor, kernel_width: float, distance: str) -> Tensor:
    r"""``(S, N)``: Captum's exponential kernel :math:`\exp(-d^2 / 2\sigma^2)` of each coalition's row, float64.

    ``present`` ``(S, F)``. The distances come from per-feature sums
    :math:`\sum x^2`, :math:`\sum x b`, :math:`\sum b^2` over each group's
    elements, so no row is built: :math:`\langle x, x_z\rangle = \sum_j z_j
    \sum x^2 + (1 - z_j)\sum x b` and likewise for :math:`\|x_z\|^2` and
    :math:`\|x - x_z\|^2`. Norms are clamped at 1e-8 as in
    ``torch.nn.CosineSimilarity``.

    If an input is not floating point (token ids), the distance is between
    the presence vectors :math:`\mathbf 1` and :math:`z` over each example's
    own :math:`M` features (:func:`presence_distances`), not between id vectors.
    """
    groups, batch = problem.groups, problem.batch
    z = present.to(torch.float64)
    if not all(x.is_floating_point() for x in batch.tensors):
        return torch.exp(-(presence_distances(z, problem.active, distance) ** 2) / (2 * kernel_width**2))
    xs = tuple(x.to(torch.float64) for x in batch.tensors)
    bs = tuple(b.to(torch.float64) for b in problem.fills)
    if distance == "euclidean":
        gap = feature_sums(groups, tuple((x - b) ** 2 for x, b in zip(xs, bs)))  # (N, F)
        squared = (1 - z) @ gap.t()
    else:
        xx = feature_sums(groups, tuple(x * x for x in xs))
        xb = feature_sums(groups, tuple(x * b for x, b in zip(xs, bs)))
        bb = feature_sums(groups, tuple(b * b for b in bs))
        dot = z @ (xx - xb).t() + xb.sum(1)
        norm = (z @ (xx - bb).t() + bb.sum(1)).clamp_min(0).sqrt().clamp_min(1e-8)
        cosine = dot / (xx.sum(1).sqrt().clamp_min(1e-8) * norm)
        squared = (1 - cosine) ** 2
    return torch.exp(-squared / (2 * kernel_width**2))


def presence_distances(present: Tensor, active: Tensor, distance: str) -> Tensor:
    r"""``(S, N)`` float64: distances between the all-present coalition and each coalition, per example.

    ``present`` ``(S, F)`` coalitions, ``active`` ``(N, F)`` the features each
    example has (:math:`M` of them, :math:`|z|` present): cosine
    :math:`1 - \langle \mathbf 1, z\rangle / (\|\mathbf 1\|\,\|z\|) = 1 - \sqrt{|z|/M}`
    (norms clamped at 1e-8, so 1 for the empty coalition), or Euclidean
    :math:`\|\mathbf 1 - z\|_2 = \sqrt{M - |z|}`.
    """
    on = present.to(torch.float64) @ active.to(torch.float64).t()  # (S, N): |z| over the example's features
    total = active.sum(1).to(torch.float64)  # (N,): M
    if distance == "euclidean":
        return (total - on).clamp_min(0).sqrt()
    return 1 - on / (total.sqrt().clamp_min(1e-8) * on.sqrt().clamp_min(1e-8))


def feature_sums(groups: FeatureGroups, values: tuple[Tensor, ...]) -> Tensor:
    """``(N, F)``: each example's sum of ``values`` (one ``(N, ...)`` tensor per input) over each feature's elements."""
    n = values[0].shape[0]
    out = torch.zeros(n, groups.n_features, dtype=values[0].dtype, device=values[0].device)
    for value, mask in zip(values, groups.masks):
        index = mask.expand(n, *value.shape[1:]).reshape(n, -1)
        out.scatter_add_(1, index, value.expand(n, *value.shape[1:]).reshape(n, -1))
    return out
