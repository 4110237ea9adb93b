"""TokenDeletion and TokenInsertion: a known curve, a float64 reference, padding, batching, NaN, state, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from attrib.data import PAD_ID, load_model, make_sequences
from attrib.metrics.token_deletion import TokenDeletion, TokenInsertion

from .reference_token_deletion import token_curve_reference


class BagModel(nn.Module):
    """Logits = the sum of the kept tokens' rows of ``weights`` (V, C); kept: the mask, else ids != 0."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(weights.to(torch.float64), freeze=False)
        self.calls: list[tuple[Tensor, Tensor | None]] = []

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        self.calls.append((ids.clone(), None if mask is None else mask.clone()))
        keep = (ids != 0) if mask is None else (mask != 0)
        out: Tensor = (self.table(ids) * keep.unsqueeze(-1).to(torch.float64)).sum(1)
        return out


def _bag(values: list[float]) -> BagModel:
    """Token id i + 1 has logit ``values[i]`` for class 0 and 0 for class 1; id 0 is padding."""
    weights = torch.zeros(len(values) + 1, 2, dtype=torch.float64)
    weights[1:, 0] = torch.tensor(values, dtype=torch.float64)
    return BagModel(weights).eval()


def test_a_known_curve_with_padding_and_special_tokens() -> None:
    # ids 1..4 weigh 4, 3, 2, 1 (id 5, "[CLS]", weighs 100 and is special); the last column is padding.
    model = _bag([4.0, 3.0, 2.0, 1.0, 100.0])
    ids = torch.tensor([[5, 3, 1, 4, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    special = torch.tensor([[True, False, False, False, False, False]])
    scores = torch.tensor([[9.0, 2.0, 4.0, 1.0, 3.0, 50.0]])  # the true order; CLS and padding scores are ignored
    deletion = TokenDeletion(model, ids, 0, attention_mask=mask, special_tokens_mask=special, score="logit")
    fractions, curve = deletion.curve(scores)
    assert fractions.tolist() == [[0.0, 0.25, 0.5, 0.75, 1.0]]
    assert curve.tolist() == [[110.0, 106.0, 103.0, 101.0, 100.0]]
    assert deletion(scores).tolist() == [0.25 * (216 + 209 + 204 + 201) / 2]
    insertion = TokenInsertion(model, ids, 0, attention_mask=mask, special_tokens_mask=special, score="logit")
    assert insertion.curve(scores)[1].tolist() == [[100.0, 104.0, 107.0, 109.0, 110.0]]
    assert not deletion.higher_is_better and insertion.higher_is_better
    # steps=3 over 4 tokens: floor(s * 4 / 3) = 0, 1, 2, 4 tokens removed
    fractions, curve = TokenDeletion(model, ids, 0, attention_mask=mask, special_tokens_mask=special,
                                     score="logit", steps=3).curve(scores)
    assert fractions.tolist() == [[0.0, 0.25, 0.5, 1.0]] and curve.tolist() == [[110.0, 106.0, 103.0, 100.0]]


def test_equal_scores_go_in_position_order_and_short_curves_are_padded() -> None:
    model = _bag([1.0, 2.0, 3.0])
    ids = torch.tensor([[1, 2, 3], [3, 1, 0]])
    fractions, curve = TokenDeletion(model, ids, 0, score="logit", attention_mask=ids != 0).curve(torch.zeros(2, 3))
    assert curve[0].tolist() == [6.0, 5.0, 3.0, 0.0]
    assert curve[1].tolist() == [4.0, 1.0, 0.0, 0.0]  # two tokens: the last point repeats
    assert fractions[1].tolist() == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("inserts", [False, True])
@pytest.mark.parametrize("steps", [None, 5])
def test_shipped_model_matches_the_float64_reference(inserts: bool, steps: int | None) -> None:
    model = load_model("text-classifier")
    data = make_sequences(5, seed=4, max_length=12)
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(5, 12, generator=g)
    target = torch.tensor([0, 1, 1, 0, 1])
    metric = (TokenInsertion if inserts else TokenDeletion)(
        model, data.input_ids, target, attention_mask=data.attention_mask, replacement=PAD_ID, steps=steps,
        batch_size=7,
    )
    fractions, curves = metric.curve(scores)
    auc = metric(scores)

    def score_of(row: int) -> float:
        def fn(ids: Tensor, mask: Tensor) -> float:
            with torch.no_grad():
                return float(model(ids[None]).softmax(1)[0, target[row]])  # no mask passed: <pad> is deleted
        return fn  # type: ignore[return-value]

    for n in range(5):
        ((ref_f, ref_v, ref_auc),) = token_curve_reference(
            score_of(n), data.input_ids[n:n + 1], data.attention_mask[n:n + 1], scores[n:n + 1],
            deletable=data.attention_mask[n:n + 1], replacement=PAD_ID, inserts=inserts, steps=steps,
        )
        points = len(ref_v)
        assert fractions[n, :points].tolist() == pytest.approx(ref_f, abs=1e-12)
        assert curves[n, :points].tolist() == pytest.approx(ref_v, abs=2e-6)
        assert float(auc[n]) == pytest.approx(ref_auc, abs=2e-6)


def test_mask_deleted_zeroes_the_attention_mask_of_removed_tokens() -> None:
    model = _bag([1.0, 2.0, 3.0, 4.0])
    ids = torch.tensor([[4, 1, 2, 3, 0], [2, 3, 1, 0, 0]])
    mask = (ids != 0).long()
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    scores = torch.tensor([[0.0, 0.3, 0.1, 0.2, 0.0], [0.0, -1.0, 1.0, 0.0, 0.0]])
    metric = TokenDeletion(model, ids, 0, attention_mask=mask, special_tokens_mask=special, replacement=4,
                           mask_deleted=True, score="logit", batch_size=3)
    model.calls.clear()
    _, curves = metric.curve(scores)
    seen = [(i, m) for ids_block, m in model.calls for i, m in zip(ids_block, m)]  # type: ignore[arg-type]
    assert all(m is not None for _, m in seen)
    for row_ids, row_mask in seen:
        assert bool(((row_ids == 4) | (row_mask != 0) | (row_ids == 0)).all())  # removed => id 4 and mask 0

    def score_of(ids: Tensor, m: Tensor) -> float:
        with torch.no_grad():
            return float(model(ids[None], m[None])[0, 0])

    reference = token_curve_reference(score_of, ids, mask, scores, deletable=(mask != 0) & ~special,
                                      replacement=4)
    for n, (_, values, _) in enumerate(reference):
        assert curves[n, : len(values)].tolist() == values


def test_batch_size_and_padding_do_not_change_the_result() -> None:
    model = load_model("text-classifier")
    data = make_sequences(6, seed=9)
    scores = torch.randn(6, data.input_ids.shape[1], generator=torch.Generator().manual_seed(0))
    aucs = [TokenDeletion(model, data.input_ids, attention_mask=data.attention_mask, batch_size=b)(scores)
            for b in (1, 13, None)]
    assert torch.allclose(aucs[0], aucs[1], atol=1e-6) and torch.allclose(aucs[0], aucs[2], atol=1e-6)
    # eight more <pad> columns, with scores there that would rank first if padding were ranked
    padded_ids = torch.cat([data.input_ids, torch.full((6, 8), PAD_ID)], 1)
    padded_mask = torch.cat([data.attention_mask, torch.zeros(6, 8, dtype=torch.bool)], 1)
    padded_scores = torch.cat([scores, torch.full((6, 8), 1e3)], 1)
    padded = TokenDeletion(model, padded_ids, attention_mask=padded_mask)(padded_scores)
    assert torch.allclose(padded, aucs[0], atol=1e-5)


def test_nan_scores_on_real_tokens_give_nan() -> None:
    model = _bag([1.0, 2.0])
    ids = torch.tensor([[1, 2, 0], [2, 1, 0]])
    scores = torch.tensor([[float("nan"), 1.0, 0.0], [0.0, 1.0, float("nan")]])
    auc = TokenDeletion(model, ids, 0, attention_mask=ids != 0)(scores)
    assert math.isnan(float(auc[0])) and math.isfinite(float(auc[1]))  # NaN on padding is ignored


@given(st.lists(st.floats(-3, 3, allow_nan=False, allow_subnormal=False), min_size=2, max_size=8),
       st.randoms(use_true_random=False))
def test_the_true_contributions_minimise_deletion_of_an_additive_logit(values: list[float], rnd: object) -> None:
    # For logits that add up token contributions, removing the largest contributions first lowers every
    # point of the curve as far as it can go: no other ranking has a smaller deletion AUC.
    model = _bag(values)
    ids = torch.arange(1, len(values) + 1).unsqueeze(0)
    truth = torch.tensor([values], dtype=torch.float64)
    shuffled = truth[:, torch.tensor(rnd.sample(range(len(values)), len(values)))]  # type: ignore[attr-defined]
    metric = TokenDeletion(model, ids, 0, score="logit")
    assert float(metric(truth)) <= float(metric(shuffled)) + 1e-9
    assert float(TokenInsertion(model, ids, 0, score="logit")(truth)) >= float(
        TokenInsertion(model, ids, 0, score="logit")(shuffled)) - 1e-9


def test_state_is_restored_also_after_a_fault() -> None:
    model = _bag([1.0, 2.0]).train()
    ids = torch.tensor([[1, 2]])
    metric = TokenDeletion(model, ids, 0, score="logit")
    metric(torch.tensor([[1.0, 0.0]]))
    assert model.training and model.table.weight.requires_grad

    class Faulty(BagModel):
        def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
            if len(self.calls) >= 2:
                raise RuntimeError("boom")
            return super().forward(ids, mask)

    faulty = Faulty(torch.ones(3, 2)).train()
    metric = TokenDeletion(faulty, ids, 0, score="logit", batch_size=1)
    faulty.calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        metric(torch.tensor([[1.0, 0.0]]))
    assert faulty.training and faulty.table.weight.requires_grad and faulty.table.weight.grad is None


def test_bad_arguments_are_named() -> None:
    model = _bag([1.0, 2.0])
    ids = torch.tensor([[1, 2, 0]])
    with pytest.raises(ValueError, match="input_ids must be integer token ids"):
        TokenDeletion(model, ids.float())
    with pytest.raises(ValueError, match="input_ids must be integer token ids"):
        TokenDeletion(model, ids[0])
    with pytest.raises(ValueError, match="attention_mask must be a tensor of the shape"):
        TokenDeletion(model, ids, attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="at least one real, non-special token"):
        TokenDeletion(model, ids, attention_mask=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="mask_deleted=True needs"):
        TokenDeletion(model, ids, mask_deleted=True)
    with pytest.raises(ValueError, match="score must be one of"):
        TokenDeletion(model, ids, score="probit")
    with pytest.raises(ValueError, match="steps"):
        TokenDeletion(model, ids, steps=0)
    with pytest.raises(TypeError, match="replacement must be a token id"):
        TokenDeletion(model, ids, replacement=0.5)  # type: ignore[arg-type]
    metric = TokenDeletion(model, ids, 0, score="logit")
    with pytest.raises(ValueError, match="scores must have the shape of input_ids"):
        metric(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="one row per example"):
        metric(torch.zeros(2, 3))
