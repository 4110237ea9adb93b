"""ShapleyValueSampling: exact Shapley values by enumeration, Captum with the same orders, efficiency, properties."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import ShapleyValueSampling as CaptumShapleyValueSampling
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.methods.shapley import ShapleyValueSampling, feature_orders

from .models import SmoothNet, assert_batch_invariant, build, inputs_for, specs
from .reference_shapley import shapley_maps
from .test_differential import assert_close_rel
from .test_feature_ablation import TokenNet, two_input_case


class Interactions(nn.Module):
    """A non-linear score of 6 features with pairwise and triple interactions (and a second class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x[:, 0] * x[:, 1] * x[:, 2] + torch.sin(x[:, 3]) * x[:, 4] + torch.relu(x[:, 5] - x[:, 0]) ** 2
        b = torch.tanh(x.sum(1)) + x[:, 2] * x[:, 5]
        return torch.stack([a, b], 1)


class Additive(nn.Module):
    """A sum of non-linear functions of single elements: Shapley values are each element's own gain."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return (torch.tanh(2 * flat) + 0.3 * flat**3).sum(1, keepdim=True).expand(-1, 2) * torch.tensor([1.0, -1.0])


def captum_with_orders(model, orders: torch.Tensor) -> CaptumShapleyValueSampling:
    """Captum's ShapleyValueSampling drawing the given orders instead of its own."""
    method = CaptumShapleyValueSampling(model)
    method.permutation_generator = lambda features, n_samples: iter(orders.tolist())
    return method


def own_ids(masks, e: int) -> list[int]:
    """Example ``e``'s ids over all inputs, in increasing order: its features ``0 .. F_e - 1``."""
    return sorted({int(i) for m in masks for i in m[e if m.shape[0] > 1 else 0].flatten().tolist()})


def test_matches_captum_with_the_same_orders_on_tuple_inputs_with_cross_input_groups():
    model, inputs, masks, baselines, gain = two_input_case(False)
    masks = (masks[0], torch.tensor([3, 4, 4, 5]))  # Captum numbers features 0..max: make the shared ids contiguous
    target = torch.tensor([2, 0, 1])
    ours = ShapleyValueSampling(model).attribute(
        inputs,
        target,
        baselines=baselines,
        feature_mask=masks,
        n_samples=9,
        seed=5,
        batch_size=7,
        additional_forward_args=gain,
    )
    orders = feature_orders(9, 6, torch.Generator().manual_seed(5))
    full = (baselines[0].expand_as(inputs[0]), baselines[1])  # Captum scores the baselines as given
    theirs = captum_with_orders(model, orders).attribute(
        inputs, baselines=full, target=target, feature_mask=masks, n_samples=9, additional_forward_args=(gain,)
    )
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape
        assert_close_rel(o, t, rtol=1e-5)  # Captum sums the orders in float32


def test_per_example_masks_match_captum_fed_each_examples_own_orders():
    """Example ``e`` follows the shared order of ``0 .. F-1`` restricted to its features ``0 .. F_e - 1``.

    Captum draws one order over the batch-wide ids, so it is run one example
    at a time, fed that restricted order in the example's ids (then the ids it lacks).
    """
    model, inputs, masks, baselines, gain = two_input_case(False)
    image = masks[0][0]  # (1, 4, 4), ids 0..5
    vector = torch.tensor([[3, 4, 4, 5], [3, 3, 5, 5], [0, 5, 5, 5]])
    masks = (torch.stack([image, image // 2, image % 2]), vector)  # 6, 5 and 3 features, ids across both inputs
    target = torch.tensor([2, 0, 1])
    ours = ShapleyValueSampling(model).attribute(
        inputs, target, baselines=baselines, feature_mask=masks, n_samples=9, seed=5, additional_forward_args=gain
    )
    widest = max(len(own_ids(masks, e)) for e in range(3))
    orders = feature_orders(9, widest, torch.Generator().manual_seed(5))
    full = (baselines[0].expand_as(inputs[0]), torch.full_like(inputs[1], baselines[1]))
    for e in range(3):
        ids = own_ids(masks, e)
        lacking = [i for i in range(6) if i not in ids]
        own = [[ids[j] for j in order if j < len(ids)] + lacking for order in orders.tolist()]
        rows = tuple(t[e : e + 1] for t in inputs)
        theirs = captum_with_orders(model, torch.tensor(own)).attribute(
            rows,
            baselines=tuple(b[e : e + 1] for b in full),
            target=target[e : e + 1],
            feature_mask=tuple(m[e : e + 1] for m in masks),
            n_samples=9,
            additional_forward_args=(gain[e : e + 1],),
        )
        for o, t in zip(ours, theirs):
            assert_close_rel(o[e : e + 1], t, rtol=1e-5)


def test_matches_captum_on_token_ids_with_a_pad_id_baseline():
    model = TokenNet().double()
    ids = torch.tensor([[1, 4, 4, 9, 2], [3, 3, 7, 10, 0]])
    spans = torch.tensor([[0, 0, 1, 1, 2]])
    ours = ShapleyValueSampling(model).attribute(ids, 1, baselines=6, feature_mask=spans, n_samples=4, seed=1)
    theirs = captum_with_orders(model, feature_orders(4, 3, torch.Generator().manual_seed(1))).attribute(
        ids, baselines=6, target=1, feature_mask=spans, n_samples=4
    )
    assert_close_rel(ours, theirs, rtol=1e-5)


def exact_case(kind: str):
    """(model, x (N, ...), baseline, mask, F) with 4-8 features, non-linear with interactions, float64."""
    if kind == "interactions":
        return Interactions(), inputs_for((6,), 3, 11, torch.float64), 0.2, None, 6
    if kind == "mlp":
        return SmoothNet(features=7).double(), inputs_for((7,), 3, 12, torch.float64), -0.1, None, 7
    model = build(_conv_spec()).double()
    mask = torch.arange(16).view(1, 1, 4, 4) // 2  # 8 pairs of columns-in-a-row, shared by the channels
    return model, inputs_for((2, 4, 4), 3, 13, torch.float64), 0.0, mask, 8


def _conv_spec():
    from .models import Spec

    return Spec(channels=2, size=4, convs=(3,), pools=(True,), hidden=(5,), classes=3, relu_styles=("tanh",), seed=3)


def exact_maps(model, x, baseline, mask, target):
    maps = []
    for e in range(x.shape[0]):
        xe = x[e : e + 1]
        m = torch.arange(xe[0].numel()).view(1, *xe.shape[1:]) if mask is None else mask
        maps.append(
            shapley_maps(lambda rows, e=e: model(*rows)[:, target[e]], [xe], [torch.full_like(xe, baseline)], [m])[0]
        )
    return torch.cat(maps)


@pytest.mark.parametrize("kind", ["interactions", "mlp", "conv"])
def test_sampling_converges_to_exact_shapley_values_and_is_exactly_efficient(kind):
    model, x, baseline, mask, features = exact_case(kind)
    target = torch.tensor([0, 1, 0])
    exact = exact_maps(model, x, baseline, mask, target)
    scale = float(exact.abs().max())
    gain = model(x).gather(1, target.view(-1, 1)).squeeze(1) - model(torch.full_like(x, baseline)).gather(
        1, target.view(-1, 1)
    ).squeeze(1)
    errors = {}
    for samples in (10, 1000):
        ours = ShapleyValueSampling(model).attribute(
            x, target, baselines=baseline, feature_mask=mask, n_samples=samples, seed=0, batch_size=512
        )
        errors[samples] = float((ours - exact).abs().max()) / scale
        per_feature = ours.flatten(1) if mask is None else ours[:, 0].flatten(1)[:, ::2]  # one element per group
        torch.testing.assert_close(per_feature.sum(1), gain, rtol=1e-12, atol=1e-12)  # efficiency, any n_samples
    assert errors[1000] < errors[10]
    assert errors[1000] < 0.06, errors  # about 1/sqrt(1000) of the marginals' spread, measured 0.005-0.03


@given(n_samples=st.integers(1, 6), antithetic=st.booleans(), seed=st.integers(0, 1000))
def test_efficiency_holds_for_any_number_of_orders_on_tuple_inputs(n_samples, antithetic, seed):
    model, inputs, masks, baselines, gain = two_input_case(False)
    target = torch.tensor([[0, 2], [1, 1], [2, 0]])
    maps = ShapleyValueSampling(model).attribute(
        inputs,
        target,
        baselines=baselines,
        n_samples=n_samples,
        antithetic=antithetic,
        seed=seed,
        additional_forward_args=gain,
    )
    full = (baselines[0].expand_as(inputs[0]), torch.full_like(inputs[1], baselines[1]))
    delta = model(*inputs, gain).gather(1, target) - model(*full, gain).gather(1, target)
    total = sum(m.flatten(2).sum(2) for m in maps)
    torch.testing.assert_close(total, delta, rtol=1e-12, atol=1e-12)


@given(n_samples=st.integers(1, 4), seed=st.integers(0, 1000), cell=st.integers(1, 3))
def test_additive_models_get_their_exact_shapley_values_from_any_number_of_orders(n_samples, seed, cell):
    model = Additive()
    x = inputs_for((1, 4, 4), 2, seed, torch.float64)
    mask = (torch.arange(4).view(4, 1) // cell) * 4 + torch.arange(4).view(1, 4) // cell
    ours = ShapleyValueSampling(model).attribute(x, 1, baselines=0.5, feature_mask=mask, n_samples=n_samples, seed=seed)
    own = -(torch.tanh(2 * x) + 0.3 * x**3 - (math.tanh(1.0) + 0.3 * 0.125))
    expected = torch.zeros_like(x)
    for j in mask.unique():
        inside = (mask == j).expand_as(x)
        expected += torch.where(inside, (own * inside).sum((1, 2, 3), keepdim=True), torch.zeros_like(x))
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_two_features_with_antithetic_orders_cover_both_orders_and_are_exact():
    model = Interactions()
    x = inputs_for((6,), 2, 21, torch.float64)
    mask = torch.tensor([0, 0, 1, 1, 1, 0])
    ours = ShapleyValueSampling(model).attribute(x, 0, feature_mask=mask, n_samples=2, antithetic=True, seed=3)
    exact = torch.cat(
        [
            shapley_maps(lambda rows: model(*rows)[:, 0], [x[e : e + 1]], [torch.zeros_like(x[e : e + 1])], [mask])[0]
            for e in range(2)
        ]
    )
    torch.testing.assert_close(ours, exact, rtol=1e-12, atol=1e-12)


def test_feature_orders_are_permutations_and_antithetic_pairs_are_reversals():
    orders = feature_orders(7, 5, torch.Generator().manual_seed(0), antithetic=True)
    assert orders.shape == (7, 5)
    assert torch.equal(orders.sort(1).values, torch.arange(5).expand(7, 5))
    assert torch.equal(orders[1::2], orders[0:6:2].flip(1))
    for narrow in (1, 3, 5):  # restricted to features 0..G-1, an order is the one drawn over G features
        restricted = orders[orders < narrow].view(7, narrow)
        assert torch.equal(restricted, feature_orders(7, narrow, torch.Generator().manual_seed(0), antithetic=True))
    plain = feature_orders(3000, 3, torch.Generator().manual_seed(1))
    counts = torch.unique(plain, dim=0, return_counts=True)[1]
    assert counts.numel() == 6 and bool((counts - 500).abs().max() < 110)  # 5 sigma is about 102


@given(spec=specs(), n=st.integers(1, 4), seed=st.integers(0, 100))
def test_batch_size_independence_and_batch_equivariance(spec, n, seed):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, seed, torch.float64)
    target = torch.arange(n) % spec.classes
    mask = torch.arange(spec.size) // 2

    def attribute(inputs, target, **options):
        return ShapleyValueSampling(model).attribute(
            inputs, target, feature_mask=mask, n_samples=3, seed=seed, **options
        )

    assert_batch_invariant(attribute, x, target, [1, 4, "auto"], seed)


def test_n_by_k_and_callable_targets_match_single_targets_with_the_same_orders():
    model = Interactions()
    x = inputs_for((6,), 3, 31, torch.float64)
    method = ShapleyValueSampling(model)
    both = method.attribute(x, torch.tensor([[0, 1]] * 3), n_samples=5, seed=2)
    assert both.shape == (3, 2, 6)
    for k in range(2):
        torch.testing.assert_close(both[:, k], method.attribute(x, k, n_samples=5, seed=2), rtol=0, atol=0)
    diff = method.attribute(x, lambda out: out[:, 0] - out[:, 1], n_samples=5, seed=2)
    torch.testing.assert_close(diff, both[:, 0] - both[:, 1])


def test_seed_and_generator_are_deterministic_and_leave_the_global_rng_alone():
    model = SmoothNet(features=6)
    x = inputs_for((6,), 2, 41)
    state = torch.get_rng_state()
    a = ShapleyValueSampling(model).attribute(x, 0, n_samples=3, seed=9)
    b = ShapleyValueSampling(model).attribute(x, 0, n_samples=3, generator=torch.Generator().manual_seed(9))
    c = ShapleyValueSampling(model).attribute(x, 0, n_samples=3, seed=10)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_float32_efficiency_is_float32_rounding_of_the_gain():
    model = SmoothNet(features=6)
    x = inputs_for((6,), 4, 51)
    maps = ShapleyValueSampling(model).attribute(x, 1, baselines=0.1, n_samples=7, seed=0)
    assert maps.dtype == torch.float32
    with torch.no_grad():
        delta = model(x)[:, 1] - model(torch.full_like(x, 0.1))[:, 1]
    torch.testing.assert_close(maps.sum(1), delta, rtol=1e-5, atol=1e-6)


def test_bad_n_samples_is_refused_by_name():
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="n_samples"):
            ShapleyValueSampling(SmoothNet()).attribute(torch.zeros(2, 6), 0, n_samples=bad)


def test_matches_captum_on_a_residual_net_with_per_image_superpixels():
    from attrib.perturb.feature_masks import superpixel_mask

    from .models import ResidualBNNet

    model = ResidualBNNet(width=6).double()
    x = inputs_for((3, 16, 16), 3, 61, torch.float64)
    masks = superpixel_mask(x, 12, backend="torch")
    masks = torch.unique(masks, return_inverse=True)[1]  # contiguous ids over the batch, as Captum numbers them
    features = int(masks.max()) + 1
    ours = ShapleyValueSampling(model).attribute(x, 1, feature_mask=masks, n_samples=6, seed=8, batch_size=100)
    theirs = captum_with_orders(model, feature_orders(6, features, torch.Generator().manual_seed(8))).attribute(
        x, target=1, feature_mask=masks, n_samples=6, perturbations_per_eval=16
    )
    assert_close_rel(ours, theirs, rtol=1e-5)


# Batch invariance with per-example masks ----------------------------------------------------------


def per_example_case(token_ids: bool, n: int, seed: int, spans: list[list[int]]):
    """(model, inputs (N, 6), per-example mask (N, 6), target (N,)): floats or token ids, float64 scores."""
    mask = torch.tensor(spans[:n])
    target = torch.arange(n) % 3
    if token_ids:
        model = TokenNet(length=6, seed=seed).double()
        x = torch.randint(0, 11, (n, 6), generator=torch.Generator().manual_seed(seed))
    else:
        model = SmoothNet(features=6, seed=seed).double()
        x = inputs_for((6,), n, seed, torch.float64)
    return model, x, mask, target


#: Per-example masks over 6 positions: 1 to 6 features each, ids with gaps, from texts or superpixels alike.
PER_EXAMPLE_MASKS = st.lists(st.lists(st.integers(0, 9), min_size=6, max_size=6), min_size=4, max_size=4)


def assert_alone_equals_batched(attribute, x, target, mask, rtol: float = 1e-9) -> None:
    """``attribute(x, target, mask)``: each example gets the map it gets alone (same seed) with per-example masks."""
    whole = attribute(x, target, mask)
    for e in range(x.shape[0]):
        alone = attribute(x[e : e + 1], target[e : e + 1], mask[e : e + 1])
        torch.testing.assert_close(whole[e : e + 1], alone, rtol=rtol, atol=rtol * float(alone.abs().max() + 1))


@settings(max_examples=20)
@given(
    spans=PER_EXAMPLE_MASKS,
    n=st.integers(2, 4),
    seed=st.integers(0, 1000),
    n_samples=st.integers(1, 5),
    antithetic=st.booleans(),
    token_ids=st.booleans(),
)
def test_an_examples_map_does_not_depend_on_the_rest_of_the_batch(spans, n, seed, n_samples, antithetic, token_ids):
    model, x, mask, target = per_example_case(token_ids, n, seed, spans)

    def attribute(inputs, target, mask):
        return ShapleyValueSampling(model).attribute(
            inputs,
            target,
            baselines=3 if token_ids else 0.2,
            feature_mask=mask,
            n_samples=n_samples,
            antithetic=antithetic,
            seed=seed,
            batch_size=7,
        )

    assert_alone_equals_batched(attribute, x, target, mask)
    maps = attribute(x, target, mask)  # efficiency per example over its own features
    ids = mask.unsqueeze(2) == mask.unsqueeze(1)
    total = (maps / ids.sum(2)).sum(1)
    base = torch.full_like(x, 3) if token_ids else torch.full_like(x, 0.2)
    with torch.no_grad():
        gain = (model(x) - model(base)).gather(1, target.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(total, gain, rtol=1e-12, atol=1e-12)
