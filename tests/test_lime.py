"""Lime and the batched weighted fits: scikit-learn and Captum with the same coalitions, references, properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression, SkLearnRidge
from captum.attr import Lime as CaptumLime
from captum.attr._core.lime import get_exp_kernel_similarity_function
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Lasso, LinearRegression, Ridge
from torch import nn

from attrib.core import linear_fit
from attrib.core.baselines import as_baselines
from attrib.core.features import as_feature_groups
from attrib.core.inputs import as_forward_args, as_input_batch
from attrib.methods.lime import Coalitions, Lime, lime_coalitions, similarity_weights

from .models import SmoothNet, assert_batch_invariant, build, inputs_for, specs
from .reference_lime import lime_reference, spread
from .test_differential import assert_close_rel
from .test_feature_ablation import TokenNet, two_input_case
from .test_shapley import PER_EXAMPLE_MASKS, assert_alone_equals_batched, own_ids, per_example_case
from .test_state import Tripwire, assert_same, snapshot, untidy

MODELS = {"linear": SkLearnLinearRegression, "lasso": SkLearnLasso, "ridge": SkLearnRidge}


def captum_lime(model, present: torch.Tensor, interpretable: str, alpha: float | None = None):
    """Captum's Lime drawing the coalitions ``present`` (S, 1, F), fitting scikit-learn's model to a tight tolerance."""
    options = {"lasso": {"alpha": alpha or 0.01, "tol": 1e-14, "max_iter": 10**6}, "ridge": {"alpha": alpha or 1.0}}

    def coalitions(original_inp, **kwargs):
        for z in present[:, 0]:
            yield z.long().unsqueeze(0)

    return CaptumLime(
        model, interpretable_model=MODELS[interpretable](**options.get(interpretable, {})), perturb_func=coalitions
    )


# The weighted fits against scikit-learn -------------------------------------------------------


def random_problem(seed: int, samples: int, features: int, problems: int, targets: int):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(samples, 1, features, generator=g) < 0.5
    slope = torch.randn(problems, features, targets, generator=g, dtype=torch.float64)
    y = torch.einsum("sf,bfk->sbk", z[:, 0].double(), slope) + torch.randn(samples, problems, targets, generator=g)
    y = y.double() + 3.0
    w = torch.rand(samples, problems, generator=g, dtype=torch.float64) + 0.05
    columns = torch.rand(problems, features, generator=g) < 0.8
    return z, y, w, columns


@settings(max_examples=12)
@given(
    seed=st.integers(0, 10**6),
    features=st.integers(1, 9),
    extra=st.integers(-4, 40),
    targets=st.integers(1, 2),
)
def test_fits_match_scikit_learn_with_sample_weights_and_missing_columns(seed, features, extra, targets):
    samples = max(2, 2 * features + extra)
    z, y, w, columns = random_problem(seed, samples, features, 3, targets)
    factor = linear_fit.weighted_factor(z, y, w, columns)
    ours = {
        "linear": linear_fit.least_squares(factor),
        "ridge": linear_fit.ridge(factor, 0.7),
        "lasso": linear_fit.lasso(factor, 0.05),
    }
    for b in range(3):
        x = (z[:, 0] & columns[b]).double().numpy()
        for k in range(targets):
            estimators = {
                "linear": LinearRegression(),
                "ridge": Ridge(alpha=0.7),
                "lasso": Lasso(alpha=0.05, tol=1e-14, max_iter=10**6),
            }
            for name, estimator in estimators.items():
                if name == "lasso" and samples < 2 * features:
                    continue  # rank-deficient: the lasso's minimiser need not be unique
                estimator.fit(x, y[:, b, k].numpy(), sample_weight=w[:, b].numpy())
                theirs = torch.from_numpy(np.asarray(estimator.coef_, dtype=np.float64))
                assert_close_rel(ours[name][b, :, k], theirs, rtol=1e-7, scale=float(theirs.abs().max()) + 1e-3)
                assert bool((ours[name][b, ~columns[b], k] == 0).all())


@settings(max_examples=10)
@given(seed=st.integers(0, 10**6), features=st.integers(2, 8), samples=st.integers(1, 30))
def test_constrained_fit_solves_the_kkt_system_and_holds_the_constraint_when_rank_deficient(seed, features, samples):
    z, y, w, columns = random_problem(seed, samples, features, 2, 2)
    columns[:, 0] = True
    gain = torch.randn(2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    factor = linear_fit.weighted_factor(z, y, w, columns, intercept=False)
    phi = linear_fit.constrained_least_squares(factor, columns, gain)
    torch.testing.assert_close(phi.sum(1), gain, rtol=1e-12, atol=1e-12)
    assert bool((phi[~columns] == 0).all())
    for b in range(2):
        keep = columns[b].nonzero().squeeze(1)
        x = z[:, 0].double()[:, keep].numpy()
        m = keep.numel()
        kkt = np.zeros((m + 1, m + 1))
        kkt[:m, :m] = x.T @ (w[:, b, None].numpy() * x)
        kkt[:m, m] = kkt[m, :m] = 1.0
        if np.linalg.matrix_rank(kkt) < m + 1:
            continue  # many solutions: ours is the minimum-norm correction, checked by the constraint above
        for k in range(2):
            rhs = np.concatenate([x.T @ (w[:, b].numpy() * y[:, b, k].numpy()), [float(gain[b, k])]])
            solution = torch.from_numpy(np.linalg.solve(kkt, rhs)[:m])
            assert_close_rel(phi[b, keep, k], solution, rtol=1e-8)


def test_lasso_stops_on_the_duality_gap_and_reaches_zero_for_a_large_alpha():
    z, y, w, _ = random_problem(0, 60, 6, 2, 1)
    factor = linear_fit.weighted_factor(z, y, w)
    total = factor.total.view(-1, 1, 1)
    gram, q, v = factor.zz.mT @ factor.zz / total, factor.zz.mT @ factor.zy / total, factor.yy / total.view(-1, 1)
    coef = linear_fit.lasso(factor, 0.02)
    assert bool((linear_fit.lasso_gap(gram, q, v, coef, 0.02) <= 1e-12 * 0.5 * v).all())
    early = linear_fit.lasso(factor, 0.02, max_iter=5, check_every=1000)
    assert bool((linear_fit.lasso_gap(gram, q, v, early, 0.02) > 1e-9 * v).any())
    assert bool((linear_fit.lasso(factor, 1e3) == 0).all())
    with pytest.raises(ValueError, match="alpha"):
        linear_fit.lasso(factor, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        linear_fit.ridge(factor, -1.0)


# Lime against Captum and the reference --------------------------------------------------------


@pytest.mark.parametrize("interpretable", ["linear", "lasso", "ridge"])
def test_matches_captum_with_the_same_coalitions_on_tuple_inputs_with_cross_input_groups(interpretable):
    model, inputs, masks, baselines, gain = two_input_case(False)
    masks = (masks[0], torch.tensor([3, 4, 4, 5]))  # ids 0..5, contiguous as Captum numbers them
    target = torch.tensor([2, 0, 1])
    ours = Lime(model).attribute(
        inputs,
        target,
        baselines=baselines,
        feature_mask=masks,
        n_samples=40,
        interpretable_model=interpretable,
        seed=5,
        batch_size=7,
        additional_forward_args=gain,
    )
    present = lime_coalitions(40, 6, torch.Generator().manual_seed(5))
    full = (baselines[0].expand_as(inputs[0]), baselines[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = captum_lime(model, present, interpretable).attribute(
            inputs, baselines=full, target=target, feature_mask=masks, n_samples=40, additional_forward_args=(gain,)
        )
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape
        assert_close_rel(o, t, rtol=2e-5)  # Captum hands scikit-learn float32 data


def presence_kernel(width: float):
    """Captum's ``similarity_func``: the exponential kernel of the cosine distance between 1 and the coalition z."""

    def similarity(original, perturbed, interpretable, **kwargs):
        z = interpretable.double().flatten()
        cosine = float(z.sum()) / (max(float(z.numel()) ** 0.5, 1e-8) * max(float(z.norm()), 1e-8))
        return float(np.exp(-((1 - cosine) ** 2) / (2 * width**2)))

    return similarity


@pytest.mark.parametrize("width", [1.0, 0.4])
def test_matches_captum_on_token_ids_with_a_pad_id_baseline_and_the_presence_kernel(width):
    model = TokenNet().double()
    ids = torch.tensor([[1, 4, 4, 9, 2], [3, 3, 7, 10, 0]])
    spans = torch.tensor([[0, 0, 1, 1, 2]])
    ours = Lime(model).attribute(
        ids, 1, baselines=6, feature_mask=spans, n_samples=30, seed=1, interpretable_model="linear", kernel_width=width
    )
    present = lime_coalitions(30, 3, torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = captum_lime(model, present, "linear")
        method.similarity_func = presence_kernel(width)
        theirs = method.attribute(ids, baselines=6, target=1, feature_mask=spans, n_samples=30)
    assert_close_rel(ours, theirs, rtol=2e-5)


class Relabelled(nn.Module):
    """``model`` with its vocabulary renumbered: id ``perm[i]`` here is id ``i`` there."""

    def __init__(self, model: nn.Module, perm: torch.Tensor) -> None:
        super().__init__()
        self.model, self.inverse = model, perm.argsort()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(self.inverse[ids])


@settings(max_examples=8)
@given(seed=st.integers(0, 1000), distance=st.sampled_from(["cosine", "euclidean"]))
def test_token_id_maps_do_not_depend_on_how_the_vocabulary_is_numbered(seed, distance):
    """The kernel reads which tokens are present, not their ids: renumbering the vocabulary changes nothing."""
    model = TokenNet(seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    perm = torch.randperm(11, generator=g)
    spans = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 2, 3, 4], [0, 1, 1, 1, 1]])
    options = {"feature_mask": spans, "n_samples": 30, "seed": seed, "interpretable_model": "ridge"}
    ours = Lime(model).attribute(ids, 1, baselines=6, distance=distance, **options)
    renamed = Lime(Relabelled(model, perm)).attribute(
        perm[ids], 1, baselines=int(perm[6]), distance=distance, **options
    )
    torch.testing.assert_close(ours, renamed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_token_ids_with_per_example_spans_match_the_reference_with_the_presence_kernel(distance):
    model = TokenNet(length=6).double()
    ids = torch.tensor([[1, 4, 4, 9, 2, 5], [3, 3, 7, 10, 0, 0], [8, 8, 8, 2, 2, 1]])
    spans = torch.tensor([[0, 0, 1, 1, 2, 3], [5, 6, 7, 8, 9, 9], [4, 4, 4, 4, 4, 7]])  # 4, 5 and 2 features
    target = torch.tensor([1, 0, 2])
    ours = Lime(model).attribute(
        ids,
        target,
        baselines=6,
        feature_mask=spans,
        n_samples=40,
        seed=3,
        interpretable_model="linear",
        distance=distance,
        kernel_width=0.8,
    )
    present = lime_coalitions(40, 5, torch.Generator().manual_seed(3))[:, 0]
    for e in range(3):
        own = len(spans[e].unique())
        values = lime_reference(
            lambda rows, e=e: model(*rows)[:, target[e]],
            [ids[e : e + 1]],
            [torch.full_like(ids[e : e + 1], 6)],
            [spans[e : e + 1]],
            present[:, :own],
            model="linear",
            kernel_width=0.8,
            distance=distance,
            presence=True,
        )
        (expected,) = spread(values, [ids[e : e + 1]], [spans[e : e + 1]])
        assert_close_rel(ours[e : e + 1], expected, rtol=1e-9)


def test_default_lasso_is_captums_default_within_scikit_learns_own_tolerance():
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 2, 3, torch.float64)
    ours = Lime(model).attribute(x, 1, baselines=0.2, n_samples=60, seed=4)
    present = lime_coalitions(60, 6, torch.Generator().manual_seed(4))

    def coalitions(original_inp, **kwargs):
        for z in present[:, 0]:
            yield z.long().unsqueeze(0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = CaptumLime(model, perturb_func=coalitions).attribute(x, baselines=0.2, target=1, n_samples=60)
    assert_close_rel(ours, theirs, rtol=1e-3)  # scikit-learn stops at a duality gap of 1e-4 by default


@pytest.mark.parametrize(
    ("interpretable", "distance", "width"),
    [("lasso", "cosine", 1.0), ("ridge", "euclidean", 2.0), ("linear", "cosine", 0.3), ("lasso", "euclidean", 5.0)],
)
def test_per_example_masks_match_the_reference_fit_over_each_examples_own_features(interpretable, distance, width):
    model, inputs, masks, baselines, gain = two_input_case(True)
    target = torch.tensor([1, 0, 2])
    ours = Lime(model).attribute(
        inputs,
        target,
        baselines=baselines,
        feature_mask=masks,
        n_samples=48,
        interpretable_model=interpretable,
        kernel_width=width,
        distance=distance,
        seed=2,
        batch_size=11,
        additional_forward_args=gain,
    )
    counts = [len(own_ids(masks, e)) for e in range(3)]  # example e's features are 0 .. counts[e] - 1
    present = lime_coalitions(48, max(counts), torch.Generator().manual_seed(2))[:, 0]
    full = (baselines[0].expand_as(inputs[0]), torch.full_like(inputs[1], baselines[1]))
    alpha = {"lasso": 0.01, "ridge": 1.0, "linear": 0.0}[interpretable]
    for e in range(3):
        xe = tuple(t[e : e + 1] for t in inputs)
        be = tuple(t[e : e + 1] for t in full)
        me = tuple(m[e : e + 1] for m in masks)
        own = slice(0, counts[e])

        def score(rows, e=e):
            return model(*rows, gain[e : e + 1])[:, target[e]]

        values = lime_reference(
            score, xe, be, me, present[:, own], model=interpretable, alpha=alpha, kernel_width=width, distance=distance
        )
        for o, r in zip(ours, spread(values, xe, me)):
            assert_close_rel(o[e : e + 1], r, rtol=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_similarity_weights_are_captums_kernel_of_each_row(distance):
    model, inputs, masks, baselines, _ = two_input_case(False)
    batch = as_input_batch(inputs)
    groups = as_feature_groups(masks, batch)
    fills = as_baselines(baselines, batch)
    present = lime_coalitions(9, groups.n_features, torch.Generator().manual_seed(0))[:, 0]
    present[0] = False  # the all-baseline row
    present[1] = True  # the input itself
    ours = similarity_weights(Coalitions(batch, as_forward_args(None, 3), groups, fills, None), present, 0.7, distance)
    kernel = get_exp_kernel_similarity_function(distance, 0.7)
    for s in range(9):
        for e in range(3):
            rows = groups.compose(present[s : s + 1], torch.tensor([e]), batch.tensors, fills)
            original = tuple(t[e : e + 1] for t in inputs)
            # -log w = d^2 / (2 width^2): Captum computes the distance in float32
            assert -math.log(ours[s, e].item()) == pytest.approx(
                -math.log(kernel(original, rows, None)), rel=1e-6, abs=1e-6
            )


class Affine(nn.Module):
    """An affine score per class: LIME's linear surrogate recovers it exactly."""

    def __init__(self, features: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(3, features, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.t() + self.bias


@settings(max_examples=15)
@given(
    seed=st.integers(0, 10**6),
    width=st.floats(0.5, 5.0),  # weights down to about 1e-17: far below what a Gram matrix resolves
    distance=st.sampled_from(["cosine", "euclidean"]),
    baseline=st.floats(-1, 1),
)
def test_linear_surrogate_is_exact_on_an_affine_model(seed, width, distance, baseline):
    model = Affine(8, seed)
    x = inputs_for((8,), 3, seed, torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    maps = Lime(model).attribute(
        x,
        torch.tensor([0, 2, 1]),
        baselines=baseline,
        feature_mask=mask,
        n_samples=40,
        interpretable_model="linear",
        kernel_width=width,
        distance=distance,
        seed=seed,
    )
    contribution = (x - baseline) * model.weight.detach()[[0, 2, 1]]
    expected = torch.zeros_like(x)
    for j in range(5):
        inside = mask == j
        expected[:, inside] = contribution[:, inside].sum(1, keepdim=True)
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)


# Properties --------------------------------------------------------------------------------


@settings(max_examples=8)
@given(spec=specs(), n=st.integers(1, 3), seed=st.integers(0, 100), interpretable=st.sampled_from(["lasso", "ridge"]))
def test_batch_size_independence_and_batch_equivariance(spec, n, seed, interpretable):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, seed, torch.float64)
    target = torch.arange(n) % spec.classes
    mask = torch.arange(spec.size) // 2

    def attribute(inputs, target, **options):
        return Lime(model).attribute(
            inputs, target, feature_mask=mask, n_samples=12, interpretable_model=interpretable, seed=seed, **options
        )

    assert_batch_invariant(attribute, x, target, [1, 5, "auto"], seed)


def test_n_by_k_and_callable_targets_match_single_targets_with_the_same_coalitions():
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 3, 31, torch.float64)
    method = Lime(model)
    both = method.attribute(x, torch.tensor([[0, 1]] * 3), n_samples=20, seed=2, interpretable_model="ridge")
    assert both.shape == (3, 2, 6)
    for k in range(2):
        single = method.attribute(x, k, n_samples=20, seed=2, interpretable_model="ridge")
        torch.testing.assert_close(both[:, k], single, rtol=1e-12, atol=1e-12)
    diff = method.attribute(x, lambda out: out[:, 0] - out[:, 1], n_samples=20, seed=2, interpretable_model="ridge")
    torch.testing.assert_close(diff, both[:, 0] - both[:, 1])  # the ridge fit is linear in the scores


def weighted_lstsq(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A user's interpretable model: weighted least squares with an intercept, (B, S, F) -> (B, F)."""
    design = torch.cat([torch.ones_like(x[..., :1]), x], 2) * w.sqrt().unsqueeze(2)
    solution = torch.linalg.pinv(design) @ (y * w.sqrt()).unsqueeze(2)
    return solution[:, 1:, 0]


def test_a_callable_interpretable_model_gets_every_problem_at_once():
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 2, 8, torch.float64)
    mask = torch.tensor([0, 0, 1, 1, 2, 3])
    calls = []

    def fit(xs, ys, ws):
        calls.append((xs.shape, ys.shape, ws.shape))
        return weighted_lstsq(xs, ys, ws)

    target = torch.tensor([[0, 2], [1, 1]])
    ours = Lime(model).attribute(x, target, feature_mask=mask, n_samples=30, seed=0, interpretable_model=fit)
    linear = Lime(model).attribute(x, target, feature_mask=mask, n_samples=30, seed=0, interpretable_model="linear")
    assert calls == [((4, 30, 4), (4, 30), (4, 30))]
    torch.testing.assert_close(ours, linear, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match=r"interpretable_model must return a \(B, F\) = \(4, 4\)"):
        Lime(model).attribute(x, target, feature_mask=mask, interpretable_model=lambda a, b, c: a.sum(1)[:, :2])


def test_seed_and_generator_are_deterministic_and_leave_the_global_rng_alone():
    model = SmoothNet(features=6)
    x = inputs_for((6,), 2, 41)
    state = torch.get_rng_state()
    a = Lime(model).attribute(x, 0, n_samples=30, seed=9)
    b = Lime(model).attribute(x, 0, n_samples=30, generator=torch.Generator().manual_seed(9))
    c = Lime(model).attribute(x, 0, n_samples=30, seed=10)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32


@settings(max_examples=5)
@given(seed=st.integers(0, 2**16), fail_at=st.integers(0, 3))
def test_state_restored_after_success_and_injected_failure(seed, fail_at):
    inner = SmoothNet(features=6, seed=seed)
    model = nn.Sequential(inner.l1, Tripwire(fail_at), nn.Tanh(), inner.l2)
    untidy(model, seed)
    x = inputs_for((6,), 2, seed).requires_grad_(seed % 2 == 0)
    before = snapshot(model, (x,))
    rng = torch.random.get_rng_state()
    try:
        Lime(model).attribute(x, 0, n_samples=16, seed=seed, batch_size=5)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(model, (x,)))
    assert torch.equal(rng, torch.random.get_rng_state())


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"n_samples": 2.5}, ValueError, "n_samples"),
        ({"n_samples": True}, ValueError, "n_samples"),
        ({"interpretable_model": "svm"}, ValueError, "interpretable_model"),
        ({"interpretable_model": "linear", "alpha": 0.1}, ValueError, "alpha"),
        ({"interpretable_model": weighted_lstsq, "alpha": 0.1}, ValueError, "alpha"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"interpretable_model": "ridge", "alpha": -2}, ValueError, "alpha"),
        ({"kernel_width": 0}, ValueError, "kernel_width"),
        ({"kernel_width": "wide"}, ValueError, "kernel_width"),
        ({"distance": "manhattan"}, ValueError, "distance"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"feature_mask": torch.tensor([0.5] * 6)}, TypeError, "feature_mask"),
        ({"seed": "one"}, TypeError, "seed"),
    ],
)
def test_bad_options_are_refused_by_name(options, error, says):
    with pytest.raises(error, match=says):
        Lime(SmoothNet()).attribute(torch.zeros(2, 6), 0, **options)


def test_too_many_features_are_refused_with_a_hint_to_group_them():
    with pytest.raises(ValueError, match="feature_mask gives 10001 features.*superpixels"):
        Lime(lambda x: x.sum(1, keepdim=True)).attribute(torch.ones(1, 10001), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 3, 5, torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 3, 3])
    gen = torch.Generator(device="cuda").manual_seed(0)
    present = lime_coalitions(50, 4, gen).cpu()
    for interpretable in ("lasso", "ridge", "linear"):
        gpu = Lime(model.cuda()).attribute(
            x.cuda(), 1, feature_mask=mask.cuda(), n_samples=50, seed=0, interpretable_model=interpretable
        )
        assert gpu.device.type == "cuda"
        model.cpu()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpu = captum_lime(model, present, interpretable).attribute(x, target=1, feature_mask=mask, n_samples=50)
        assert_close_rel(gpu.cpu(), cpu, rtol=2e-5)


@settings(max_examples=20)
@given(
    spans=PER_EXAMPLE_MASKS,
    n=st.integers(2, 4),
    seed=st.integers(0, 1000),
    interpretable=st.sampled_from(["linear", "ridge", "lasso"]),
    distance=st.sampled_from(["cosine", "euclidean"]),
    token_ids=st.booleans(),
)
def test_an_examples_map_does_not_depend_on_the_rest_of_the_batch(spans, n, seed, interpretable, distance, token_ids):
    model, x, mask, target = per_example_case(token_ids, n, seed, spans)

    def attribute(inputs, target, mask):
        return Lime(model).attribute(
            inputs,
            target,
            baselines=3 if token_ids else 0.2,
            feature_mask=mask,
            n_samples=24,
            interpretable_model=interpretable,
            distance=distance,
            seed=seed,
            batch_size=7,
        )

    assert_alone_equals_batched(attribute, x, target, mask)
