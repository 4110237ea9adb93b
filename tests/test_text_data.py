"""The shipped text data (generator, vocabulary) and the shipped text classifier (weights, accuracy, padding)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attrib.data import STATED_ACCURACY, WEIGHTS_DIR, load_model
from attrib.data.text import (
    LABELS,
    NEGATIVE,
    NEGATORS,
    PAD_ID,
    POSITIVE,
    UNK_ID,
    VOCAB,
    SequenceBatch,
    decode,
    encode,
    make_sequences,
)
from attrib.data.text_model import TEXT_MODEL_NAME, TextClassifier

FIELDS = ("input_ids", "attention_mask", "lengths", "labels", "deciding", "polarity")


def _equal(a: SequenceBatch, b: SequenceBatch) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def _rule(words: list[str]) -> tuple[int, list[int], list[bool]]:
    """The task's rule read off the words alone: (label, per-token polarity, per-token deciding)."""
    polarity = [0] * len(words)
    for t, w in enumerate(words):
        if w in POSITIVE or w in NEGATIVE:
            sign = 1 if w in POSITIVE else -1
            if t > 0 and words[t - 1] in NEGATORS:
                sign = -sign
                polarity[t - 1] = sign
            polarity[t] = sign
    cues = [polarity[t] for t, w in enumerate(words) if w in POSITIVE or w in NEGATIVE]
    total = sum(cues)
    assert total != 0, "the generator promises a strict majority"
    label = int(total > 0)
    return label, polarity, [p == 2 * label - 1 for p in polarity]


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8))
def test_generator_is_deterministic_and_leaves_global_rng_alone(seed: int, n: int) -> None:
    state = torch.get_rng_state()
    first, second = make_sequences(n, seed=seed), make_sequences(n, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)
    assert _equal(first, second)
    assert not torch.equal(make_sequences(n, seed=seed + 1).input_ids, first.input_ids)


def test_generator_shapes_padding_and_ground_truth_follow_the_rule() -> None:
    batch = make_sequences(300, seed=3)
    n, length = 300, 24
    assert len(batch) == n
    for f in ("input_ids", "attention_mask", "deciding", "polarity"):
        assert getattr(batch, f).shape == (n, length)
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.bool
    assert batch.deciding.dtype == torch.bool and batch.labels.shape == (n,) and batch.lengths.shape == (n,)
    # padding: the real tokens come first, <pad> exactly after them, and nowhere else
    assert torch.equal(batch.attention_mask, torch.arange(length) < batch.lengths[:, None])
    assert torch.equal(batch.input_ids == PAD_ID, ~batch.attention_mask)
    assert int(batch.lengths.min()) >= 6 and int(batch.lengths.max()) == length
    assert int(batch.lengths.min()) < 10  # variable lengths, so padding is exercised
    assert int(batch.input_ids.max()) < len(VOCAB) and not bool((batch.input_ids == UNK_ID).any())
    # labels, polarities and deciding tokens agree with the rule read from the words alone
    for i in range(n):
        words = decode(batch.input_ids[i]).split()
        label, polarity, deciding = _rule(words)
        real = int(batch.lengths[i])
        assert int(batch.labels[i]) == label
        assert batch.polarity[i, :real].tolist() == polarity and not bool(batch.polarity[i, real:].any())
        assert batch.deciding[i, :real].tolist() == deciding and not bool(batch.deciding[i, real:].any())
    # the task is not trivial: both labels, negations, contrary phrases and stray negators all occur
    assert 0.4 < float(batch.labels.float().mean()) < 0.6
    negator = torch.isin(batch.input_ids, encode(list(NEGATORS)))
    assert bool((negator & (batch.polarity != 0)).any()) and bool((negator & (batch.polarity == 0)).any())
    against = (batch.polarity != 0) & ~batch.deciding
    assert 0 < int(against.any(1).sum()) < n // 2
    assert bool(batch.deciding.any(1).all())


def test_generator_options_indexing_and_bad_arguments() -> None:
    short = make_sequences(20, seed=1, max_length=10, min_length=8, negation=0.0, stray_negators=0.0)
    assert short.input_ids.shape == (20, 10) and int(short.lengths.min()) >= 8
    assert not bool(torch.isin(short.input_ids, encode(list(NEGATORS))).any())
    one = short[3]
    assert len(one) == 1 and torch.equal(one.input_ids, short.input_ids[3:4])
    assert len(short[-1]) == 1 and torch.equal(short[-1].labels, short.labels[-1:])
    for kwargs in (
        {"n": 0},
        {"n": 2, "max_length": 5},
        {"n": 2, "min_length": 5},
        {"n": 2, "min_length": 12, "max_length": 10},
        {"n": 2, "negation": 1.5},
        {"n": 2, "stray_negators": -0.1},
    ):
        with pytest.raises(ValueError):
            make_sequences(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        make_sequences(2, seed=1.5)  # type: ignore[arg-type]


def test_encode_and_decode() -> None:
    ids = encode("The plot was NOT bad xyzzy")
    assert ids.dtype == torch.long and ids[-1] == UNK_ID
    assert decode(ids) == "the plot was not bad <unk>"
    padded = encode(["not", "bad"], length=5)
    assert padded.tolist()[2:] == [PAD_ID] * 3
    assert decode(padded) == "not bad" and decode(padded, keep_padding=True).split()[-1] == "<pad>"
    assert VOCAB[PAD_ID] == "<pad>" and len(set(VOCAB)) == len(VOCAB) and LABELS == ("negative", "positive")
    with pytest.raises(ValueError, match="more than length"):
        encode("a b c", length=2)
    with pytest.raises(ValueError, match="one sequence"):
        decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode([len(VOCAB)])


def test_weights_are_small_half_precision_and_load_as_documented() -> None:
    path = WEIGHTS_DIR / f"{TEXT_MODEL_NAME}.pt"
    assert path.stat().st_size < 300_000
    state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = load_model(TEXT_MODEL_NAME)
    assert isinstance(model, TextClassifier) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert isinstance(model.embedding, torch.nn.Embedding) and model.embedding.padding_idx == PAD_ID
    assert not bool(model.embedding.weight[PAD_ID].any())
    with pytest.raises(ValueError, match="text-classifier"):
        load_model("text-lstm")


def test_shipped_text_model_reaches_its_stated_accuracy() -> None:
    # STATED_ACCURACY is measured on make_sequences(5000, seed=7); fresh sequences from a seed used neither in
    # training nor for that measurement reach it within 1 point (its 2,000-sequence standard error is < 0.1 point)
    batch = make_sequences(2000, seed=424242)
    model = load_model(TEXT_MODEL_NAME)
    with torch.no_grad():
        predicted = model(batch.input_ids, batch.attention_mask).argmax(1)
        without_mask = model(batch.input_ids).argmax(1)
    accuracy = float((predicted == batch.labels).float().mean())
    assert accuracy >= STATED_ACCURACY[TEXT_MODEL_NAME]["accuracy"] - 0.01
    assert torch.equal(predicted, without_mask)  # with real padding, the mask says what the pad ids say


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000), extra=st.integers(0, 8), junk=st.booleans())
def test_padding_does_not_change_the_logits(seed: int, extra: int, junk: bool) -> None:
    model = load_model(TEXT_MODEL_NAME)
    batch = make_sequences(6, seed=seed)
    with torch.no_grad():
        reference = model(batch.input_ids, batch.attention_mask)
        longest = int(batch.lengths.max())
        trimmed = model(batch.input_ids[:, :longest], batch.attention_mask[:, :longest])
        # pad to 24 + extra; the padded positions hold <pad>, or any token when the mask is passed
        ids = torch.nn.functional.pad(batch.input_ids, (0, extra), value=PAD_ID)
        mask = torch.nn.functional.pad(batch.attention_mask, (0, extra), value=False)
        if junk:
            filler = torch.randint(len(VOCAB), ids.shape, generator=torch.Generator().manual_seed(seed))
            ids = torch.where(mask, ids, filler)
            longer = model(ids, mask)
        else:
            longer = model(ids)
        alone = torch.cat([model(batch.input_ids[i : i + 1, : int(batch.lengths[i])]) for i in range(6)])
    for other in (trimmed, longer, alone):
        torch.testing.assert_close(other, reference, rtol=1e-5, atol=1e-5)


def test_model_edge_cases_and_bad_input() -> None:
    model = load_model(TEXT_MODEL_NAME)
    empty = torch.full((2, 5), PAD_ID)
    with torch.no_grad():
        logits = model(empty)
        no_kept = model(encode("good film", length=5).unsqueeze(0), torch.zeros(1, 5, dtype=torch.bool))
    assert torch.isfinite(logits).all() and torch.equal(logits[0], model.classifier.bias.detach())
    assert torch.equal(no_kept[0], logits[0])
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(empty, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_length"):
        model(torch.ones(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="heads"):
        TextClassifier(dim=30, heads=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_text_model_runs_on_cuda_as_on_cpu() -> None:
    model = load_model(TEXT_MODEL_NAME)
    batch = make_sequences(64, seed=5)
    with torch.no_grad():
        cpu = model(batch.input_ids, batch.attention_mask)
        gpu = model.cuda()(batch.input_ids.cuda(), batch.attention_mask.cuda())
        empty = model(torch.full((2, 5), PAD_ID, device="cuda"))
    assert gpu.device.type == "cuda" and torch.isfinite(empty).all()
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
