"""FeatureAblation and FeaturePermutation: float64 references, Captum parity, properties, state, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation
from captum.attr import FeaturePermutation as CaptumFeaturePermutation
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.core.checks import positive_int
from attrib.core.features import as_feature_groups
from attrib.core.inputs import as_input_batch
from attrib.methods.feature_ablation import FeatureAblation, FeaturePermutation, batch_permutations
from attrib.methods.shapley import ShapleyValueSampling

from .models import SmoothNet, TwoInputNet, assert_batch_invariant, build, inputs_for, specs
from .reference_shapley import ablation_maps
from .test_differential import assert_close_rel
from .test_state import Tripwire, assert_same, snapshot, untidy


class TokenNet(nn.Module):
    """Token ids (N, T) -> embedding -> tanh MLP over the flattened sequence -> 3 classes."""

    def __init__(self, vocab: int = 11, length: int = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, 4)
        self.l1 = nn.Linear(4 * length, 6)
        self.l2 = nn.Linear(6, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(self.embed(ids).flatten(1))))


def two_input_case(per_example: bool):
    """TwoInputNet in float64, masks whose ids span both inputs (id 3 is in the image and the vector)."""
    model = TwoInputNet().double()
    image, vector = inputs_for((2, 4, 4), 3, 1, torch.float64), inputs_for((4,), 3, 2, torch.float64)
    gain = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    if per_example:
        image_mask = torch.stack([torch.arange(16).view(1, 4, 4) // d for d in (4, 6, 16)])  # (3, 1, 4, 4)
        vector_mask = torch.tensor([[3, 5, 5, 7], [3, 3, 8, 8], [0, 9, 9, 9]])
    else:
        image_mask = (torch.arange(16).view(1, 1, 4, 4) % 4) + 2 * (torch.arange(16).view(1, 1, 4, 4) // 8)
        vector_mask = torch.tensor([3, 6, 6, 9])
    baselines = (torch.full((1, 2, 1, 1), 0.25, dtype=torch.float64), -0.5)
    return model, (image, vector), (image_mask, vector_mask), baselines, gain


@pytest.mark.parametrize("per_example", [False, True])
def test_feature_ablation_matches_captum_and_reference_with_group_masks_over_tuple_inputs(per_example):
    model, inputs, masks, baselines, gain = two_input_case(per_example)
    target = torch.tensor([0, 2, 1])
    ours = FeatureAblation(model).attribute(
        inputs, target, baselines=baselines, feature_mask=masks, batch_size=5, additional_forward_args=gain
    )
    theirs = CaptumFeatureAblation(model).attribute(
        inputs, baselines=baselines, target=target, feature_mask=masks, additional_forward_args=(gain,)
    )
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape
        assert_close_rel(o, t, rtol=1e-10)
    full_baselines = (baselines[0].expand_as(inputs[0]), torch.full_like(inputs[1], baselines[1]))
    for e in range(3):
        example_masks = [m[e : e + 1] if m.shape[0] == 3 and per_example else m for m in masks]

        def score(rows, e=e):
            return model(*rows, gain[e : e + 1])[:, target[e]]

        ref = ablation_maps(
            score, [x[e : e + 1] for x in inputs], [b[e : e + 1] for b in full_baselines], example_masks
        )
        for o, r in zip(ours, ref):
            torch.testing.assert_close(o[e : e + 1], r, rtol=1e-10, atol=1e-12)


def test_feature_ablation_default_mask_is_element_wise_and_matches_captum():
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 4, 3, torch.float64)
    ours = FeatureAblation(model).attribute(x, 2, baselines=0.3)
    theirs = CaptumFeatureAblation(model).attribute(x, baselines=0.3, target=2)
    assert_close_rel(ours, theirs, rtol=1e-10)


def test_feature_ablation_of_an_n_by_k_target_is_each_column_from_the_same_passes():
    model, inputs, masks, baselines, gain = two_input_case(False)
    targets = torch.tensor([[0, 1], [2, 2], [1, 0]])
    both = FeatureAblation(model).attribute(
        inputs, targets, baselines=baselines, feature_mask=masks, additional_forward_args=gain
    )
    assert both[0].shape == (3, 2, 2, 4, 4) and both[1].shape == (3, 2, 4)
    for k in range(2):
        one = FeatureAblation(model).attribute(
            inputs, targets[:, k], baselines=baselines, feature_mask=masks, additional_forward_args=gain
        )
        for b, o in zip(both, one):
            torch.testing.assert_close(b[:, k], o, rtol=0, atol=0)


def test_feature_ablation_on_token_ids_with_a_pad_id_baseline_and_span_mask():
    model = TokenNet().double()
    ids = torch.tensor([[1, 4, 4, 9, 2], [3, 3, 7, 10, 0]])
    spans = torch.tensor([0, 0, 1, 1, 2])  # three token spans, shared by the batch
    ours = FeatureAblation(model).attribute(ids, 1, baselines=0, feature_mask=spans)
    theirs = CaptumFeatureAblation(model).attribute(ids, baselines=0, target=1, feature_mask=spans.unsqueeze(0))
    assert ours.dtype == torch.float64 and ours.shape == ids.shape
    assert_close_rel(ours, theirs, rtol=1e-10)
    for e in range(2):
        ref = ablation_maps(
            lambda rows: model(*rows)[:, 1], [ids[e : e + 1]], [torch.zeros_like(ids[e : e + 1])], [spans]
        )
        torch.testing.assert_close(ours[e : e + 1], ref[0])


def test_callable_target_is_scored_row_by_row():
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 3, 4, torch.float64)
    ours = FeatureAblation(model).attribute(
        x, lambda out: out[:, 0] - out[:, 2], feature_mask=torch.tensor([0, 0, 1, 1, 2, 2])
    )
    theirs = [FeatureAblation(model).attribute(x, c, feature_mask=torch.tensor([0, 0, 1, 1, 2, 2])) for c in (0, 2)]
    torch.testing.assert_close(ours, theirs[0] - theirs[1])


@given(spec=specs(), n=st.integers(1, 4), cell=st.integers(1, 3), seed=st.integers(0, 100))
def test_feature_ablation_is_batch_size_independent_and_batch_equivariant(spec, n, cell, seed):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, seed, torch.float64)
    target = torch.arange(n) % spec.classes
    h = spec.size
    mask = (torch.arange(h).view(h, 1) // cell) * h + torch.arange(h).view(1, h) // cell

    def attribute(inputs, target, **options):
        return FeatureAblation(model).attribute(inputs, target, feature_mask=mask, **options)

    assert_batch_invariant(attribute, x, target, [1, 3, 7, "auto"], seed)


# FeaturePermutation -------------------------------------------------------------------------------


def permutation_reference(model, x, target, mask, sources):
    """Mean over draws of S(x_n) - S(x_n with feature j's elements from x_{pi(n)}), looping over features."""
    ids = sorted(set(mask.flatten().tolist()))
    out = torch.zeros_like(x)
    clean = model(x).gather(1, target.view(-1, 1)).squeeze(1)
    draws = sources.shape[0] // len(ids)
    for p in range(draws):
        for j, feature in enumerate(ids):
            inside = (mask == feature).expand_as(x)
            shuffled = torch.where(inside, x[sources[p * len(ids) + j]], x)
            drop = clean - model(shuffled).gather(1, target.view(-1, 1)).squeeze(1)
            out += torch.where(inside, drop.view(-1, *([1] * (x.dim() - 1))), torch.zeros_like(x)) / draws
    return out


@pytest.mark.parametrize("draws", [1, 3])
def test_feature_permutation_matches_reference_and_captum_with_the_same_permutations(draws):
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 5, 5, torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1])
    mask = torch.tensor([[0, 2, 2, 5, 5, 0]])
    ours = FeaturePermutation(model).attribute(x, target, feature_mask=mask, n_permutations=draws, seed=7, batch_size=4)
    sources = batch_permutations(draws * 3, 5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, permutation_reference(model, x, target, mask, sources))
    if draws == 1:  # Captum draws one permutation per feature, in feature order: hand it ours
        queue = iter(sources)

        def perm_func(rows: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
            return torch.where(inside, rows[next(queue)], rows)

        theirs = CaptumFeaturePermutation(model, perm_func=perm_func).attribute(x, target=target, feature_mask=mask)
        assert_close_rel(ours, theirs, rtol=1e-10)


def test_feature_permutation_of_two_examples_is_the_swap_and_matches_captum_across_inputs():
    model, inputs, masks, _, gain = two_input_case(False)
    inputs = tuple(x[:2] for x in inputs)
    gain = gain[:2]
    ours = FeaturePermutation(model).attribute(inputs, 1, feature_mask=masks, seed=0, additional_forward_args=gain)
    torch.manual_seed(0)  # Captum's own draws; with N=2 the only permutation it accepts is the swap
    theirs = CaptumFeaturePermutation(model).attribute(
        inputs, target=1, feature_mask=masks, additional_forward_args=(gain,)
    )
    for o, t in zip(ours, theirs):
        assert_close_rel(o, t, rtol=1e-10)


def test_batch_permutations_are_uniform_non_identity_permutations():
    draws = batch_permutations(6000, 3, torch.Generator().manual_seed(0))
    assert torch.equal(draws.sort(1).values, torch.arange(3).expand(6000, 3))
    assert not bool((draws == torch.arange(3)).all(1).any())
    counts = torch.unique(draws, dim=0, return_counts=True)[1]
    assert counts.numel() == 5 and bool((counts - 1200).abs().max() < 150)  # 5 sigma is about 155
    swaps = batch_permutations(200, 2, torch.Generator().manual_seed(1))
    assert torch.equal(swaps, torch.tensor([[1, 0]]).expand(200, 2))


def test_feature_permutation_seed_and_generator_are_deterministic_and_leave_the_global_rng_alone():
    model = SmoothNet(features=6).double()
    x = inputs_for((6,), 6, 6, torch.float64)
    state = torch.get_rng_state()
    a = FeaturePermutation(model).attribute(x, 0, n_permutations=2, seed=3)
    b = FeaturePermutation(model).attribute(x, 0, n_permutations=2, generator=torch.Generator().manual_seed(3))
    c = FeaturePermutation(model).attribute(x, 0, n_permutations=2, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


@settings(max_examples=8)  # every element is a feature: hundreds of forward passes per example at batch_size=1
@given(spec=specs(), n=st.integers(2, 4), seed=st.integers(0, 100))
def test_feature_permutation_is_batch_size_independent(spec, n, seed):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, seed, torch.float64)
    whole = FeaturePermutation(model).attribute(x, 0, seed=seed, batch_size=None)
    for batch_size in (1, 5, "auto"):
        torch.testing.assert_close(FeaturePermutation(model).attribute(x, 0, seed=seed, batch_size=batch_size), whole)


# State and bad input, for the three feature-group methods --------------------------------------------------


METHODS = {
    "ablation": lambda m: (FeatureAblation(m), {"batch_size": 3}),
    "permutation": lambda m: (FeaturePermutation(m), {"batch_size": 3, "seed": 0}),
    "shapley": lambda m: (ShapleyValueSampling(m), {"batch_size": 3, "seed": 0, "n_samples": 2}),
}


@pytest.mark.parametrize("name", sorted(METHODS))
@given(spec=specs(), fail_at=st.integers(0, 4))
def test_state_restored_after_success_and_injected_failure(name, spec, fail_at):
    inner = build(spec)
    model = nn.Sequential(inner[0], Tripwire(fail_at), *list(inner)[1:])
    untidy(model, spec.seed)
    x = inputs_for(spec.input_shape, 2, spec.seed)
    before = snapshot(model, (x,))
    method, options = METHODS[name](model)
    mask = torch.arange(spec.size).view(1, spec.size) // 2  # column pairs
    try:
        method.attribute(x, target=0, feature_mask=mask, **options)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(model, (x,)))


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize(
    ("mask", "error", "words"),
    [
        (torch.zeros(6, dtype=torch.bool), TypeError, "feature_mask must hold integer feature ids"),
        (torch.zeros(6), TypeError, "feature_mask must hold integer feature ids"),
        ([1, 2], TypeError, "feature_mask must be an integer Tensor or a tuple"),
        (torch.zeros(5, dtype=torch.long), ValueError, "does not broadcast"),
        (torch.zeros(2, 3, 6, dtype=torch.long), ValueError, "more dimensions"),
        (torch.tensor([0, 1, -1, 2, 2, 2]), ValueError, "ids must be >= 0"),
        ((torch.zeros(6, dtype=torch.long),) * 2, ValueError, "one entry per input"),
    ],
)
def test_bad_feature_masks_are_refused_by_name(name, mask, error, words):
    method, options = METHODS[name](SmoothNet(features=6))
    with pytest.raises(error, match=words):
        method.attribute(inputs_for((6,), 3, 0), 0, feature_mask=mask, **options)


def test_other_bad_arguments_are_refused_by_name():
    model, ids = TokenNet(), torch.tensor([[1, 2, 3, 4, 5]] * 2)
    with pytest.raises(ValueError, match="whole numbers"):
        FeatureAblation(model).attribute(ids, 0, baselines=0.5)
    with pytest.raises(ValueError, match="N >= 2"):
        FeaturePermutation(SmoothNet()).attribute(torch.zeros(1, 6), 0)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="n_permutations must be a positive int"):
            FeaturePermutation(SmoothNet()).attribute(torch.zeros(2, 6), 0, n_permutations=bad)
    with pytest.raises(ValueError, match="seed or generator"):
        FeaturePermutation(SmoothNet()).attribute(torch.zeros(2, 6), 0, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="batch_size"):
        FeatureAblation(SmoothNet()).attribute(torch.zeros(2, 6), 0, batch_size=0)
    two = TwoInputNet()
    with pytest.raises(TypeError, match="one mask per input"):
        FeatureAblation(two).attribute(
            (torch.zeros(2, 2, 4, 4), torch.zeros(2, 4)), 0, feature_mask=torch.zeros(4, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="finite"):
        FeatureAblation(SmoothNet()).attribute(torch.full((2, 6), float("nan")), 0)


class CountingRows(nn.Module):
    """Counts the rows it scores."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def test_per_example_masks_score_one_copy_per_feature_of_the_widest_example():
    """Ids 0..2 and 10..15: 1 + 6 copies per example (each example's own features), not 1 + 9 (every id)."""
    model = CountingRows(SmoothNet(features=6).double())
    x = inputs_for((6,), 2, 4, torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2], [10, 11, 12, 13, 14, 15]])
    maps = FeatureAblation(model).attribute(x, 1, feature_mask=mask, baselines=0.3)
    assert model.rows == 2 * 7
    for e in range(2):
        alone = FeatureAblation(model.inner).attribute(x[e : e + 1], 1, feature_mask=mask[e : e + 1], baselines=0.3)
        torch.testing.assert_close(maps[e : e + 1], alone, rtol=1e-12, atol=1e-12)


def test_per_example_numbering_gives_each_example_its_own_features_in_order_across_inputs():
    batch = as_input_batch((torch.zeros(3, 1, 2), torch.zeros(3, 4)))
    masks = (torch.tensor([[[7, 2]]]), torch.tensor([[0, 0, 1, 1], [5, 5, 5, 5], [1, 2, 3, 3]]))  # shared, per example
    groups = as_feature_groups(masks, batch, local=True)
    assert groups.per_example and groups.n_features == 4
    assert groups.ids.tolist() == [[0, 1, 2, 7], [2, 5, 7, -1], [1, 2, 3, 7]]
    assert groups.counts.tolist() == [4, 3, 4]
    assert groups.occurs.tolist() == [[True] * 4, [True] * 3 + [False], [True] * 4]
    assert groups.masks[0].tolist() == [[[3, 2]], [[2, 0]], [[3, 1]]]
    assert groups.masks[1].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 2, 2]]
    shared = as_feature_groups(masks[0], as_input_batch(torch.zeros(3, 1, 2)), local=True)
    assert not shared.per_example and shared.ids.tolist() == [2, 7] and shared.masks[0].tolist() == [[[1, 0]]]


@pytest.mark.parametrize(
    ("value", "minimum", "message"),
    [
        (0, 1, "n_samples must be a positive int (the number of draws), got 0"),
        (True, 1, "n_samples must be a positive int (the number of draws), got True"),
        (2.0, 1, "n_samples must be a positive int (the number of draws), got 2.0"),
        ("3", 1, "n_samples must be a positive int (the number of draws), got '3'"),
        (1, 2, "n_samples must be an int >= 2 (the number of draws), got 1"),
    ],
)
def test_the_shared_positive_int_check_names_the_argument_and_what_was_expected(value, minimum, message):
    with pytest.raises(ValueError) as error:
        positive_int(value, "n_samples", "the number of draws", minimum=minimum)
    assert str(error.value) == message
    assert positive_int(np.int64(3), "n_samples") == 3 and type(positive_int(np.int64(3), "n_samples")) is int


def test_feature_ablation_matches_captum_on_a_residual_net_with_per_image_superpixels():
    from attrib.perturb.feature_masks import superpixel_mask

    from .models import ResidualBNNet

    model = ResidualBNNet(width=6).double()
    x = inputs_for((3, 16, 16), 4, 62, torch.float64)
    masks = superpixel_mask(x, 20, backend="torch")
    target = torch.tensor([[0, 3], [1, 1], [4, 2], [2, 0]])
    ours = FeatureAblation(model).attribute(x, target, feature_mask=masks, baselines=0.1, batch_size=33)
    for k in range(2):
        theirs = CaptumFeatureAblation(model).attribute(
            x, baselines=0.1, target=target[:, k], feature_mask=masks, perturbations_per_eval=8
        )
        assert_close_rel(ours[:, k], theirs, rtol=1e-10)
