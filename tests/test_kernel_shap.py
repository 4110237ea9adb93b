"""KernelShap: exact Shapley values by enumeration, Captum and the KKT reference on the same coalitions, properties."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from captum.attr import KernelShap as CaptumKernelShap
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.methods.kernel_shap import KernelShap, all_coalitions, shapley_coalitions

from .models import SmoothNet, assert_batch_invariant, build, inputs_for, specs
from .reference_lime import kernel_shap_reference, spread
from .reference_shapley import shapley_maps
from .test_differential import assert_close_rel
from .test_feature_ablation import TokenNet, two_input_case
from .test_lime import Affine
from .test_shapley import (
    PER_EXAMPLE_MASKS,
    Interactions,
    assert_alone_equals_batched,
    exact_case,
    exact_maps,
    own_ids,
    per_example_case,
)
from .test_state import Tripwire, assert_same, snapshot, untidy


def captum_with_coalitions(model, middle: torch.Tensor) -> CaptumKernelShap:
    """Captum's KernelShap drawing the full and empty coalitions, then ``middle`` (S, 1, F), instead of its own."""
    features = middle.shape[2]

    def coalitions(original_inp, **kwargs):
        yield torch.ones(1, features, dtype=torch.long)
        yield torch.zeros(1, features, dtype=torch.long)
        for z in middle[:, 0]:
            yield z.long().unsqueeze(0)

    method = CaptumKernelShap(model)
    method.perturb_func = coalitions
    return method


@pytest.mark.parametrize("kind", ["interactions", "mlp", "conv"])
def test_enumerating_every_coalition_gives_the_exact_shapley_values(kind):
    model, x, baseline, mask, features = exact_case(kind)
    target = torch.tensor([0, 1, 0])
    exact = exact_maps(model, x, baseline, mask, target)
    ours = KernelShap(model).attribute(
        x, target, baselines=baseline, feature_mask=mask, n_samples=2**features, batch_size=100
    )
    assert_close_rel(ours, exact, rtol=1e-12)


def test_enumeration_with_per_example_masks_is_exact_over_each_examples_own_features():
    model, inputs, masks, baselines, gain = two_input_case(True)  # 10 ids over the batch, 4 to 6 per example
    target = torch.tensor([1, 0, 2])
    ours = KernelShap(model).attribute(
        inputs, target, baselines=baselines, feature_mask=masks, n_samples=1024, additional_forward_args=gain
    )
    full = (baselines[0].expand_as(inputs[0]), torch.full_like(inputs[1], baselines[1]))
    for e in range(3):
        xe, be = tuple(t[e : e + 1] for t in inputs), tuple(t[e : e + 1] for t in full)
        me = tuple(m[e : e + 1] for m in masks)
        values = kernel_shap_reference(lambda rows, e=e: model(*rows, gain[e : e + 1])[:, target[e]], xe, be, me, None)
        for o, r in zip(ours, spread(values, xe, me)):
            assert_close_rel(o[e : e + 1], r, rtol=1e-10)


def test_sampled_per_example_coalitions_match_the_kkt_reference():
    model, inputs, masks, baselines, gain = two_input_case(True)  # 6, 5 and 2 features
    target = torch.tensor([2, 2, 0])
    ours = KernelShap(model).attribute(
        inputs, target, baselines=baselines, feature_mask=masks, n_samples=30, seed=7, additional_forward_args=gain
    )
    counts = [len(own_ids(masks, e)) for e in range(3)]  # example e's features are 0 .. counts[e] - 1
    active = torch.arange(max(counts)) < torch.tensor(counts).view(-1, 1)
    middle = shapley_coalitions(28, active, torch.Generator().manual_seed(7))
    full = (baselines[0].expand_as(inputs[0]), torch.full_like(inputs[1], baselines[1]))
    for e in range(3):
        xe, be = tuple(t[e : e + 1] for t in inputs), tuple(t[e : e + 1] for t in full)
        me = tuple(m[e : e + 1] for m in masks)
        assert not bool(middle[:, e, counts[e] :].any())  # only the example's own features are drawn
        listed = 2 ** counts[e] <= 30  # an example with few features enumerates its coalitions: exact
        values = kernel_shap_reference(
            lambda rows, e=e: model(*rows, gain[e : e + 1])[:, target[e]],
            xe,
            be,
            me,
            None if listed else middle[:, e, : counts[e]],
        )
        for o, r in zip(ours, spread(values, xe, me)):
            assert_close_rel(o[e : e + 1], r, rtol=1e-9)


@pytest.mark.parametrize("antithetic", [False, True])
def test_matches_captum_with_the_same_coalitions_on_tuple_inputs_with_cross_input_groups(antithetic):
    model, inputs, masks, baselines, gain = two_input_case(False)
    masks = (masks[0], torch.tensor([3, 4, 4, 5]))  # ids 0..5, contiguous as Captum numbers them
    target = torch.tensor([2, 0, 1])
    ours = KernelShap(model).attribute(
        inputs,
        target,
        baselines=baselines,
        feature_mask=masks,
        n_samples=40,
        antithetic=antithetic,
        seed=5,
        batch_size=7,
        additional_forward_args=gain,
    )
    middle = shapley_coalitions(38, torch.ones(1, 6, dtype=torch.bool), torch.Generator().manual_seed(5), antithetic)
    full = (baselines[0].expand_as(inputs[0]), baselines[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = captum_with_coalitions(model, middle).attribute(
            inputs, baselines=full, target=target, feature_mask=masks, n_samples=40, additional_forward_args=(gain,)
        )
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape
        assert_close_rel(o, t, rtol=2e-5)  # Captum: weight 1e6 for the empty and full coalitions, float32 fit


def test_matches_captum_on_token_ids_with_a_pad_id_baseline():
    model = TokenNet().double()
    ids = torch.tensor([[1, 4, 4, 9, 2], [3, 3, 7, 10, 0]])
    spans = torch.tensor([[0, 0, 1, 2, 3]])
    ours = KernelShap(model).attribute(ids, 1, baselines=6, feature_mask=spans, n_samples=12, seed=1)
    middle = shapley_coalitions(10, torch.ones(1, 4, dtype=torch.bool), torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = captum_with_coalitions(model, middle).attribute(
            ids, baselines=6, target=1, feature_mask=spans, n_samples=12
        )
    assert_close_rel(ours, theirs, rtol=2e-5)


class Interactions10(nn.Module):
    """A non-linear score of 10 features with pairwise and triple interactions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x[:, 0] * x[:, 1] * x[:, 2] + torch.sin(x[:, 3]) * x[:, 4] + torch.relu(x[:, 5] - x[:, 6]) ** 2
        b = torch.tanh(x[:, 7:].sum(1)) * x[:, 9] + x[:, 8] * x[:, 0]
        return torch.stack([a + b, a - b], 1)


@pytest.mark.parametrize("antithetic", [False, True])
def test_sampling_converges_to_the_exact_shapley_values_and_is_exactly_efficient(antithetic):
    model = Interactions10()
    x = inputs_for((10,), 3, 17, torch.float64)
    target = torch.tensor([0, 1, 0])
    exact = exact_maps(model, x, 0.1, None, target)
    scale = float(exact.abs().max())
    with torch.no_grad():
        out, base = model(x), model(torch.full_like(x, 0.1))
    gain = (out - base).gather(1, target.view(-1, 1)).squeeze(1)
    errors = {}
    for samples in (40, 1000):  # 1000 < 2^10: sampled
        ours = KernelShap(model).attribute(
            x, target, baselines=0.1, n_samples=samples, antithetic=antithetic, seed=0, batch_size=1024
        )
        errors[samples] = float((ours - exact).abs().max()) / scale
        torch.testing.assert_close(ours.sum(1), gain, rtol=1e-12, atol=1e-12)
    assert errors[1000] < errors[40] / 2, errors
    assert errors[1000] < 0.08, errors
    exactly = KernelShap(model).attribute(x, target, baselines=0.1, n_samples=1024)
    assert_close_rel(exactly, exact, rtol=1e-12)


@settings(max_examples=12)
@given(n_samples=st.integers(2, 20), antithetic=st.booleans(), seed=st.integers(0, 1000), per_example=st.booleans())
def test_efficiency_holds_for_any_number_of_samples(n_samples, antithetic, seed, per_example):
    model, inputs, masks, baselines, gain = two_input_case(per_example)
    target = torch.tensor([[0, 2], [1, 1], [2, 0]])
    maps = KernelShap(model).attribute(
        inputs,
        target,
        baselines=baselines,
        feature_mask=masks,
        n_samples=n_samples,
        antithetic=antithetic,
        seed=seed,
        additional_forward_args=gain,
    )
    full = (baselines[0].expand_as(inputs[0]), torch.full_like(inputs[1], baselines[1]))
    delta = model(*inputs, gain).gather(1, target) - model(*full, gain).gather(1, target)
    # sum_j phi_j: every element of a group carries phi_j, so weigh each element by 1 / (its group's size)
    ids = torch.cat([masks[0].expand(3, 2, 4, 4).reshape(3, -1), masks[1].view(-1, 4).expand(3, 4)], 1)
    share = 1 / (ids.unsqueeze(2) == ids.unsqueeze(1)).sum(2).double()
    total = (torch.cat([maps[0].flatten(2), maps[1]], 2) * share.unsqueeze(1)).sum(2)
    torch.testing.assert_close(total, delta, rtol=1e-11, atol=1e-11)


@settings(max_examples=10)
@given(seed=st.integers(0, 10**6), baseline=st.floats(-1, 1), antithetic=st.booleans())
def test_exact_on_an_affine_model_from_sampled_coalitions(seed, baseline, antithetic):
    model = Affine(8, seed)
    x = inputs_for((8,), 3, seed, torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5])
    maps = KernelShap(model).attribute(
        x,
        torch.tensor([0, 2, 1]),
        baselines=baseline,
        feature_mask=mask,
        n_samples=40,
        antithetic=antithetic,
        seed=seed,
    )
    contribution = (x - baseline) * model.weight.detach()[[0, 2, 1]]
    expected = torch.zeros_like(x)
    for j in range(6):
        inside = mask == j
        expected[:, inside] = contribution[:, inside].sum(1, keepdim=True)
    torch.testing.assert_close(maps, expected, rtol=1e-10, atol=1e-10)


def test_coalition_sizes_follow_the_shapley_kernel_and_antithetic_pairs_are_complements():
    active = torch.tensor([[True] * 6 + [False] * 2, [True, False] * 4])
    drawn = shapley_coalitions(20000, active, torch.Generator().manual_seed(0))
    assert drawn.shape == (20000, 2, 8)
    assert not bool((drawn & ~active).any())
    for e, m in ((0, 6), (1, 4)):
        sizes = drawn[:, e].sum(1)
        kernel = torch.tensor([(m - 1) / (k * (m - k)) for k in range(1, m)], dtype=torch.float64)
        expected = kernel / kernel.sum() * 20000
        counts = torch.bincount(sizes, minlength=m + 1)[1:m].double()
        assert bool(((counts - expected).abs() < 5 * expected.sqrt() + 1).all()), (counts, expected)
    pairs = shapley_coalitions(7, active, torch.Generator().manual_seed(1), antithetic=True)
    assert pairs.shape == (7, 2, 8)
    assert torch.equal(pairs[1::2], active & ~pairs[0:6:2])
    everything = all_coalitions(16, torch.tensor([[True] * 4, [True] * 2 + [False] * 2]))
    assert everything.shape == (16, 2, 4)
    assert torch.unique(everything[:14, 0], dim=0).shape[0] == 14 and not bool(everything[14:, 0].any())
    assert torch.unique(everything[:2, 1], dim=0).shape[0] == 2 and not bool(everything[2:, 1].any())
    assert not bool(everything[:, 1, 2:].any())


@settings(max_examples=10)
@given(counts=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 1000), antithetic=st.booleans())
def test_a_rows_coalitions_depend_only_on_its_own_features(counts, seed, antithetic):
    """Row ``e`` of a batch of rows with features ``0 .. M_e - 1`` draws what a lone row of ``M_e`` features draws."""
    active = torch.arange(max(counts) + 2) < torch.tensor(counts).view(-1, 1)  # two features no row has
    drawn = shapley_coalitions(13, active, torch.Generator().manual_seed(seed), antithetic)
    for e, m in enumerate(counts):
        alone = shapley_coalitions(
            13, torch.ones(1, m, dtype=torch.bool), torch.Generator().manual_seed(seed), antithetic
        )
        assert torch.equal(drawn[:, e, :m], alone[:, 0]) and not bool(drawn[:, e, m:].any())


@settings(max_examples=8)
@given(spec=specs(), n=st.integers(1, 3), seed=st.integers(0, 100))
def test_batch_size_independence_and_batch_equivariance(spec, n, seed):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, seed, torch.float64)
    target = torch.arange(n) % spec.classes
    mask = torch.arange(spec.size) // 2

    def attribute(inputs, target, **options):
        return KernelShap(model).attribute(inputs, target, feature_mask=mask, n_samples=7, seed=seed, **options)

    assert_batch_invariant(attribute, x, target, [1, 4, "auto"], seed)


def test_n_by_k_and_callable_targets_match_single_targets_with_the_same_coalitions():
    model = Interactions()
    x = inputs_for((6,), 3, 31, torch.float64)
    method = KernelShap(model)
    both = method.attribute(x, torch.tensor([[0, 1]] * 3), n_samples=20, seed=2)
    assert both.shape == (3, 2, 6)
    for k in range(2):
        torch.testing.assert_close(both[:, k], method.attribute(x, k, n_samples=20, seed=2), rtol=1e-12, atol=1e-12)
    diff = method.attribute(x, lambda out: out[:, 0] - out[:, 1], n_samples=20, seed=2)
    torch.testing.assert_close(diff, both[:, 0] - both[:, 1])


def test_seed_and_generator_are_deterministic_and_leave_the_global_rng_alone():
    model = SmoothNet(features=8)
    x = inputs_for((8,), 2, 41)
    state = torch.get_rng_state()
    a = KernelShap(model).attribute(x, 0, n_samples=30, seed=9)
    b = KernelShap(model).attribute(x, 0, n_samples=30, generator=torch.Generator().manual_seed(9))
    c = KernelShap(model).attribute(x, 0, n_samples=30, seed=10)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32
    with torch.no_grad():
        delta = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(a.sum(1), delta, rtol=1e-5, atol=1e-6)  # float32 scores, float64 fit


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
        KernelShap(model).attribute(x, 0, n_samples=16, seed=seed, batch_size=5)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(model, (x,)))
    assert torch.equal(rng, torch.random.get_rng_state())


@pytest.mark.parametrize("bad", [0, 1, -3, 2.0, True, "many"])
def test_bad_n_samples_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="n_samples"):
        KernelShap(SmoothNet()).attribute(torch.zeros(2, 6), 0, n_samples=bad)


def test_a_single_feature_gets_the_whole_gain():
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 2, 3, torch.float64)
    maps = KernelShap(model).attribute(x, 1, feature_mask=torch.zeros(6, dtype=torch.long), n_samples=5, seed=0)
    with torch.no_grad():
        delta = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(maps, delta.view(2, 1).expand(2, 6), rtol=1e-12, atol=1e-12)
    assert math.isfinite(float(maps.sum()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = Interactions10()
    x = inputs_for((10,), 3, 5, torch.float64)
    target = torch.tensor([0, 1, 1])
    gen = torch.Generator(device="cuda").manual_seed(0)
    middle = shapley_coalitions(198, torch.ones(1, 10, dtype=torch.bool, device="cuda"), gen).cpu()
    gpu = KernelShap(model).attribute(x.cuda(), target.cuda(), n_samples=200, seed=0)
    assert gpu.device.type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = captum_with_coalitions(model, middle).attribute(x, target=target, n_samples=200)
    assert_close_rel(gpu.cpu(), cpu, rtol=2e-5)
    exact = KernelShap(model).attribute(x.cuda(), target.cuda(), n_samples=1024)
    assert_close_rel(exact.cpu(), exact_maps(model, x, 0.0, None, target), rtol=1e-12)


class Counting(nn.Module):
    """Counts the rows it scores."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize(("n_samples", "evaluations"), [(7, 7), (63, 63), (64, 64), (65, 64), (1000, 64)])
def test_n_samples_counts_every_scored_coalition_and_enumeration_never_exceeds_it(n_samples, evaluations):
    model = Counting(SmoothNet(features=6))
    KernelShap(model).attribute(inputs_for((6,), 3, 0), 1, n_samples=n_samples, seed=0, batch_size=50)
    assert model.rows == 3 * evaluations


@settings(max_examples=20)
@given(
    spans=PER_EXAMPLE_MASKS,
    n=st.integers(2, 4),
    seed=st.integers(0, 1000),
    n_samples=st.sampled_from([3, 10, 20, 40, 64]),  # some examples enumerate (2^M <= n_samples), others draw
    antithetic=st.booleans(),
    token_ids=st.booleans(),
)
def test_an_examples_map_does_not_depend_on_the_rest_of_the_batch(spans, n, seed, n_samples, antithetic, token_ids):
    model, x, mask, target = per_example_case(token_ids, n, seed, spans)

    def attribute(inputs, target, mask):
        return KernelShap(model).attribute(
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


def test_per_example_masks_enumerate_or_draw_per_example():
    """At n_samples=20 an example of 3 features gets its exact Shapley values even beside one of 6 that draws."""
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 2, 5, torch.float64)
    mask = torch.tensor([[0, 0, 4, 4, 9, 9], [0, 1, 2, 3, 4, 5]])
    counted = Counting(model)
    maps = KernelShap(counted).attribute(x, 1, feature_mask=mask, n_samples=20, seed=0)
    assert counted.rows == 2 * 20  # 18 drawn coalitions for the wide example, 6 + 12 padding for the narrow one
    exact = shapley_maps(lambda rows: model(*rows)[:, 1], [x[:1]], [torch.zeros_like(x[:1])], [mask[:1]])[0]
    assert_close_rel(maps[:1], exact, rtol=1e-12)
    wide = KernelShap(model).attribute(x[1:], 1, feature_mask=mask[1:], n_samples=20, seed=0)
    assert_close_rel(maps[1:], wide, rtol=1e-10)
