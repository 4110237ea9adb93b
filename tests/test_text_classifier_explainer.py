"""ClassifierExplainer on a tiny BERT: float64 references, Captum's LayerIntegratedGradients, properties, errors."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerIntegratedGradients as CaptumLayerIG
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.methods.layer_integrated_gradients import LayerIntegratedGradients
from attrib.text.classifier import ClassifierExplainer
from attrib.text.model import HFModel
from attrib.text.tokens import TokenInputs, as_token_inputs, baseline_ids, token_feature_mask

from . import reference_text as ref
from .hf_models import CLS_ID, MASK_ID, PAD_ID, SEP_ID, WORDS, tiny_bert_classifier, tiny_tokenizer
from .test_differential import assert_close_rel

TEXTS = ["the cat sat on the mat .", "a good movie", "not bad , but not great !"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("bert")


@pytest.fixture(scope="module")
def bert64():
    return tiny_bert_classifier(1).double()


@pytest.fixture(scope="module")
def bert():
    return tiny_bert_classifier(2)


def _logits(model, ids, mask, token_type_ids=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=token_type_ids).logits


FIRSTS = ["the cat sat", "bad", "alice likes tea"]
SECONDS = ["a good movie", "not bad at all , very good", "she lives in paris"]


def _pair_bert(seed: int, dtype: torch.dtype = torch.float32):
    """A tiny BERT whose second segment embedding is far from the first: segments change the logits a lot."""
    model = tiny_bert_classifier(seed).to(dtype)
    with torch.no_grad():
        model.bert.embeddings.token_type_embeddings.weight[1] += 1.0
    return model


@pytest.fixture(scope="module")
def pair_bert64():
    return _pair_bert(1, torch.float64)


@pytest.fixture(scope="module")
def pairs(tok):
    return tok(FIRSTS, SECONDS, padding=True, return_tensors="pt", return_token_type_ids=True)


# --- references -------------------------------------------------------------------------


def test_integrated_gradients_matches_the_float64_loop_per_text(bert64, tok):
    inputs = TokenInputs.from_texts(tok, TEXTS)
    result = ClassifierExplainer(bert64, tokenizer=tok).attribute(inputs, target=1, n_steps=16, batch_size=7)
    wte = bert64.get_input_embeddings()
    for i in range(inputs.n):
        length = int(inputs.lengths[i])
        ids, mask = inputs.input_ids[i, :length], inputs.attention_mask[i, :length]
        base = baseline_ids(inputs, "pad", tok)[i, :length]
        expected = ref.ig_per_token(ref.classifier_score(bert64, mask, 1), wte(ids).detach(), wte(base).detach(), 16)
        assert_close_rel(result.scores[i, :length], expected, rtol=1e-9)
        assert bool((result.scores[i, length:] == 0).all())


def test_gradient_x_input_matches_the_float64_reference_and_zeroes_frozen_tokens(bert64, tok):
    inputs = TokenInputs.from_texts(tok, TEXTS[:2])
    result = ClassifierExplainer(bert64, "input_x_gradient", tokenizer=tok).attribute(inputs, target=0)
    wte = bert64.get_input_embeddings()
    for i in range(inputs.n):
        length = int(inputs.lengths[i])
        ids, mask = inputs.input_ids[i, :length], inputs.attention_mask[i, :length]
        expected = ref.gradient_x_input_per_token(ref.classifier_score(bert64, mask, 0), wte(ids).detach())
        expected[0] = expected[length - 1] = 0.0  # [CLS], [SEP]: kept out of the explanation
        assert_close_rel(result.scores[i, :length], expected, rtol=1e-9)


def test_feature_ablation_matches_the_loop_over_tokens(bert64, tok):
    inputs = TokenInputs.from_texts(tok, TEXTS)
    result = ClassifierExplainer(bert64, "feature_ablation", tokenizer=tok, baseline="mask").attribute(
        inputs, target=torch.tensor([0, 1, 1]), batch_size=5
    )
    baselines = baseline_ids(inputs, "mask", tok)
    for i, target in enumerate([0, 1, 1]):
        length = int(inputs.lengths[i])
        mask = inputs.attention_mask[i, :length]

        def score(ids, mask=mask, target=target):
            return float(_logits(bert64, ids.unsqueeze(0), mask.unsqueeze(0))[0, target])

        expected = ref.ablation_per_token(score, inputs.input_ids[i, :length], baselines[i, :length])
        assert_close_rel(result.scores[i, :length], expected, rtol=1e-9)


def test_word_granularity_switches_the_tokens_of_a_word_together(bert64, tok):
    inputs = TokenInputs.from_texts(tok, ["alice likes tea and coffee"])
    # Pretend "tea and" is one word: ids 0, 1, 2, 2, 3.
    word_ids = torch.tensor([[-1, 0, 1, 2, 2, 3, -1]])
    grouped = TokenInputs(inputs.input_ids, inputs.attention_mask, inputs.special_tokens_mask, word_ids)
    result = ClassifierExplainer(bert64, "feature_ablation", granularity="word").attribute(grouped, target=1)
    ids, mask = grouped.input_ids, grouped.attention_mask
    changed = ids.clone()
    changed[0, 3:5] = PAD_ID
    drop = _logits(bert64, ids, mask)[0, 1] - _logits(bert64, changed, mask)[0, 1]
    assert_close_rel(result.scores[0, 3:5], drop.expand(2), rtol=1e-9)
    assert result.scores[0, 0] == 0 and result.scores[0, 6] == 0
    ig_words = ClassifierExplainer(bert64, granularity="word").attribute(grouped, target=1, n_steps=8)
    ig_tokens = ClassifierExplainer(bert64).attribute(grouped, target=1, n_steps=8)
    assert_close_rel(ig_words.scores[0, 3:5], ig_tokens.scores[0, 3:5].sum().expand(2), rtol=1e-12)
    assert_close_rel(ig_words.scores[0, 1:3], ig_tokens.scores[0, 1:3], rtol=1e-12)


# --- Captum -----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["word_embeddings", "embeddings"])
def test_integrated_gradients_matches_captum_layer_integrated_gradients(bert, tok, layer):
    inputs = TokenInputs.from_texts(tok, TEXTS)
    module = bert.bert.embeddings.word_embeddings if layer == "word_embeddings" else bert.bert.embeddings
    base = baseline_ids(inputs, "pad", tok)
    target = torch.tensor([1, 0, 1])

    def forward(ids, mask):
        return bert(input_ids=ids, attention_mask=mask).logits

    theirs = CaptumLayerIG(forward, module).attribute(
        inputs.input_ids, base, target=target, additional_forward_args=(inputs.attention_mask,), n_steps=50
    )
    if layer == "word_embeddings":
        ours = ClassifierExplainer(bert, tokenizer=tok).attribute(inputs, target=target, n_steps=50).scores
        expected = theirs.sum(-1) * (~inputs.frozen())  # Captum gives special tokens exactly 0 too (a = a')
    else:  # the whole embedding block (positions included), through attrib's LayerIntegratedGradients on HFModel
        hf = HFModel(bert, embeddings="bert.embeddings")
        maps = LayerIntegratedGradients(hf, hf.embeddings).attribute(
            inputs.input_ids, target, baselines=base, additional_forward_args=(inputs.attention_mask,), n_steps=50
        )
        ours, expected = maps.sum(-1), theirs.sum(-1)
    assert_close_rel(ours, expected.detach(), rtol=1e-4)


# --- sentence pairs: token_type_ids travel with every row --------------------------------


def test_sentence_pairs_keep_their_token_type_ids(pairs, tok):
    inputs = TokenInputs.from_encoding(pairs, tok)
    assert torch.equal(inputs.extra_inputs["token_type_ids"], pairs["token_type_ids"])
    assert bool(inputs.extra_inputs["token_type_ids"].any())
    # A pair's second text numbers its words after the first's: "word" features never merge across texts.
    assert inputs.word_ids is not None
    assert inputs.word_ids[0].tolist() == [-1, 0, 1, 2, -1, 3, 4, 5, -1] + [-1] * (inputs.word_ids.shape[1] - 9)
    moved = inputs.to("cpu")
    assert torch.equal(moved.extra_inputs["token_type_ids"], pairs["token_type_ids"])
    assert torch.equal(inputs.columns(torch.tensor([0, 5])).extra_inputs["token_type_ids"][0], torch.tensor([0, 1]))


def test_integrated_gradients_on_sentence_pairs_is_complete_for_the_real_input(pair_bert64, pairs, tok):
    inputs = TokenInputs.from_encoding(pairs, tok)
    types, mask = pairs["token_type_ids"], pairs["attention_mask"]
    base = baseline_ids(inputs, "pad", tok)
    gap = _logits(pair_bert64, pairs["input_ids"], mask, types)[:, 1] - _logits(pair_bert64, base, mask, types)[:, 1]
    other = _logits(pair_bert64, pairs["input_ids"], mask)[:, 1] - _logits(pair_bert64, base, mask)[:, 1]
    assert (gap - other).abs().min() > 1e-2  # the segments matter: the wrong input has another gap
    result = ClassifierExplainer(pair_bert64, tokenizer=tok).attribute(pairs, target=1, n_steps=64, batch_size=9)
    torch.testing.assert_close(result.scores.sum(1), gap, rtol=1e-4, atol=1e-6)
    assert bool((result.scores[inputs.frozen()] == 0).all())
    wte = pair_bert64.get_input_embeddings()
    for i in range(inputs.n):  # and per token, the float64 loop on the real input
        length = int(inputs.lengths[i])
        ids, real = inputs.input_ids[i, :length], mask[i, :length]
        score = ref.classifier_score(pair_bert64, real, 1, types[i, :length])
        expected = ref.ig_per_token(score, wte(ids).detach(), wte(base[i, :length]).detach(), 64)
        expected = expected * ~inputs.frozen()[i, :length]
        assert_close_rel(result.scores[i, :length], expected, rtol=1e-9)


def test_integrated_gradients_on_sentence_pairs_matches_captum_with_token_type_ids_as_forward_args(pairs, tok):
    model = _pair_bert(2)
    inputs = TokenInputs.from_encoding(pairs, tok)
    base = baseline_ids(inputs, "pad", tok)
    target = torch.tensor([1, 0, 1])

    def forward(ids, mask, types):
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits

    theirs = CaptumLayerIG(forward, model.bert.embeddings.word_embeddings).attribute(
        inputs.input_ids,
        base,
        target=target,
        additional_forward_args=(inputs.attention_mask, pairs["token_type_ids"]),
        n_steps=50,
    )
    ours = ClassifierExplainer(model, tokenizer=tok).attribute(inputs, target=target, n_steps=50, batch_size=17)
    assert_close_rel(ours.scores, (theirs.sum(-1) * ~inputs.frozen()).detach(), rtol=1e-4)


def test_perturbation_methods_on_sentence_pairs_perturb_the_real_input(pair_bert64, pairs, tok):
    inputs = TokenInputs.from_encoding(pairs, tok)
    result = ClassifierExplainer(pair_bert64, "feature_ablation", tokenizer=tok).attribute(pairs, batch_size=4)
    predicted = _logits(pair_bert64, pairs["input_ids"], pairs["attention_mask"], pairs["token_type_ids"]).argmax(1)
    assert torch.equal(result.target, predicted)
    baselines = baseline_ids(inputs, "pad", tok)
    for i in range(inputs.n):
        length = int(inputs.lengths[i])
        mask, types = pairs["attention_mask"][i : i + 1, :length], pairs["token_type_ids"][i : i + 1, :length]

        def score(ids, mask=mask, types=types, target=int(predicted[i])):
            return float(_logits(pair_bert64, ids.unsqueeze(0), mask, types)[0, target])

        expected = ref.ablation_per_token(score, inputs.input_ids[i, :length], baselines[i, :length])
        assert_close_rel(result.scores[i, :length], expected, rtol=1e-9)
    shapley = ClassifierExplainer(pair_bert64, "shapley", tokenizer=tok).attribute(pairs, target=1, n_samples=2, seed=0)
    gap = (
        _logits(pair_bert64, pairs["input_ids"], pairs["attention_mask"], pairs["token_type_ids"])[:, 1]
        - _logits(pair_bert64, baselines, pairs["attention_mask"], pairs["token_type_ids"])[:, 1]
    )
    torch.testing.assert_close(shapley.scores.sum(1), gap, rtol=1e-9, atol=1e-12)


class _BagOfWords(nn.Module):
    """A classifier taking only ``input_ids`` and ``attention_mask`` (no segments)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(60, 4)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids, attention_mask):
        return self.head((self.embed(input_ids) * attention_mask.unsqueeze(-1)).sum(1))


def test_a_model_without_segments_gets_no_token_type_ids(tok):
    model = _BagOfWords()
    plain = tok(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=True)
    assert "token_type_ids" in plain and not bool(plain["token_type_ids"].any())
    result = ClassifierExplainer(model, "input_x_gradient", tokenizer=tok).attribute(plain, target=1)  # zeros: dropped
    hf, extra = HFModel(model).bind(TokenInputs.from_encoding(plain, tok).extra_inputs)
    assert extra == () and hf.extra_inputs == ()
    assert result.scores.shape == plain["input_ids"].shape
    pair = tok(FIRSTS, SECONDS, padding=True, return_tensors="pt", return_token_type_ids=True)
    with pytest.raises(ValueError, match="takes no token_type_ids"):
        ClassifierExplainer(model, tokenizer=tok).attribute(pair, target=1)
    with pytest.raises(ValueError, match="takes no token_type_ids"):
        HFModel(model, extra_inputs=("token_type_ids",))


def test_hf_model_passes_extra_inputs_by_keyword(pair_bert64, pairs):
    hf = HFModel(pair_bert64, extra_inputs=("token_type_ids",))
    ids, mask, types = pairs["input_ids"], pairs["attention_mask"], pairs["token_type_ids"]
    with torch.no_grad():
        assert torch.equal(hf(ids, mask, types), pair_bert64(**pairs).logits)
        assert torch.equal(HFModel(pair_bert64)(ids, mask), pair_bert64(input_ids=ids, attention_mask=mask).logits)
    assert hf.taking(("token_type_ids",)) is hf and hf.taking(()).extra_inputs == ()
    assert "extra_inputs=('token_type_ids',)" in repr(hf)
    with pytest.raises(TypeError, match="1 per-token tensors"):
        hf(ids, mask)
    with pytest.raises(ValueError, match="extra_inputs must name"):
        HFModel(pair_bert64, extra_inputs=("attention_mask",))
    with pytest.raises(TypeError, match="extra_inputs must be a sequence"):
        HFModel(pair_bert64, extra_inputs="token_type_ids")
    with pytest.raises(ValueError, match="extra_inputs\\['token_type_ids'\\] must have the shape"):
        TokenInputs(ids, mask, torch.zeros_like(ids, dtype=torch.bool), extra_inputs={"token_type_ids": types[:, :2]})
    with pytest.raises(ValueError, match="extra_inputs must be keyed"):
        TokenInputs(ids, mask, torch.zeros_like(ids, dtype=torch.bool), extra_inputs={"attention_mask": mask})


# --- properties -------------------------------------------------------------------------


def test_integrated_gradients_is_complete_over_tokens(bert64, tok):
    inputs = TokenInputs.from_texts(tok, TEXTS)
    result = ClassifierExplainer(bert64, tokenizer=tok).attribute(inputs, target=1, n_steps=64)
    gain = (
        _logits(bert64, inputs.input_ids, inputs.attention_mask)[:, 1]
        - _logits(bert64, baseline_ids(inputs, "pad", tok), inputs.attention_mask)[:, 1]
    )
    assert gain.abs().min() > 1e-3
    torch.testing.assert_close(result.scores.sum(1), gain, rtol=1e-4, atol=1e-6)


def test_shapley_sampling_is_efficient_for_every_text(bert64, tok):
    inputs = TokenInputs.from_texts(tok, TEXTS)
    result = ClassifierExplainer(bert64, "shapley", tokenizer=tok, baseline="unk").attribute(
        inputs, target=0, n_samples=3, seed=0
    )
    gain = (
        _logits(bert64, inputs.input_ids, inputs.attention_mask)[:, 0]
        - _logits(bert64, baseline_ids(inputs, "unk", tok), inputs.attention_mask)[:, 0]
    )
    torch.testing.assert_close(result.scores.sum(1), gain, rtol=1e-9, atol=1e-12)


METHODS_AND_OPTIONS = [
    ("integrated_gradients", {"n_steps": 8}),
    ("input_x_gradient", {}),
    ("saliency", {}),
    ("feature_ablation", {}),
    ("shapley", {"n_samples": 2, "seed": 3}),
    ("kernel_shap", {"n_samples": 40, "seed": 3}),
    ("lime", {"n_samples": 40, "seed": 3}),
]


@pytest.mark.parametrize(("method", "options"), METHODS_AND_OPTIONS)
def test_more_padding_gives_the_same_scores(bert, tok, method, options):
    tight = TokenInputs.from_texts(tok, TEXTS)
    loose = TokenInputs.from_texts(tok, TEXTS, padding="max_length", max_length=tight.input_ids.shape[1] + 5)
    explainer = ClassifierExplainer(bert, method, tokenizer=tok)
    a = explainer.attribute(tight, target=1, **options).scores
    b = explainer.attribute(loose, target=1, **options).scores
    width = a.shape[1]
    assert_close_rel(b[:, :width], a, rtol=1e-4)
    assert bool((b[:, width:] == 0).all())


# Deterministic methods only: the sampling methods draw orders/coalitions over the batch's features together.
@pytest.mark.parametrize(("method", "options"), METHODS_AND_OPTIONS[:4])
def test_each_text_scores_as_it_does_alone(bert, tok, method, options):
    explainer = ClassifierExplainer(bert, method, tokenizer=tok)
    together = explainer.attribute(TEXTS, target=[1, 0, 1], batch_size=4, **options)
    for i, (text, target) in enumerate(zip(TEXTS, [1, 0, 1])):
        alone = explainer.attribute([text], target=target, batch_size=4, **options)
        width = alone.scores.shape[1]
        assert_close_rel(together.scores[i, :width], alone.scores[0], rtol=1e-4)


@settings(max_examples=8)
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=9), n_steps=st.integers(2, 12))
def test_integrated_gradients_does_not_depend_on_batch_size(bert64, tok, words, n_steps):
    explainer = ClassifierExplainer(bert64, tokenizer=tok)
    texts = [" ".join(words), " ".join(words[::-1][:3])]
    full = explainer.attribute(texts, target=1, n_steps=n_steps, batch_size=None).scores
    blocks = explainer.attribute(texts, target=1, n_steps=n_steps, batch_size=3).scores
    assert_close_rel(blocks, full, rtol=1e-10)


def test_top1_target_is_the_predicted_class_and_multi_targets_add_a_dimension(bert, tok):
    inputs = TokenInputs.from_texts(tok, TEXTS)
    explainer = ClassifierExplainer(bert, "feature_ablation", tokenizer=tok)
    result = explainer.attribute(inputs)
    predicted = _logits(bert, inputs.input_ids, inputs.attention_mask).argmax(1)
    assert torch.equal(result.target, predicted)
    both = explainer.attribute(inputs, target=torch.tensor([[0, 1]] * 3))
    assert both.scores.shape == (3, 2, inputs.input_ids.shape[1])
    assert_close_rel(both.scores[torch.arange(3), predicted], result.scores, rtol=1e-6)


def test_memory_is_bounded_by_batch_size(bert, tok):
    seen: list[int] = []
    handle = bert.bert.embeddings.register_forward_hook(lambda module, args, output: seen.append(output.shape[0]))
    try:
        for method, options in METHODS_AND_OPTIONS[:5]:
            seen.clear()
            ClassifierExplainer(bert, method, tokenizer=tok).attribute(TEXTS, target=1, batch_size=5, **options)
            assert seen and max(seen) <= 5, method
    finally:
        handle.remove()


def test_state_is_restored_after_a_call_and_after_a_fault(tok):
    model = tiny_bert_classifier(3).train()
    model.classifier.weight.requires_grad_(True)
    model.bert.pooler.dense.weight.requires_grad_(False)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    flags = [(m.training) for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]

    def check() -> None:
        assert [m.training for m in model.modules()] == flags
        assert [p.requires_grad for p in model.parameters()] == grads
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
        assert not model.bert.embeddings.word_embeddings._forward_hooks

    ClassifierExplainer(model, tokenizer=tok).attribute(TEXTS, target=1, n_steps=4)
    check()
    calls = [0]

    def fail_on_third(module, args, output):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("injected fault")

    handle = model.bert.encoder.register_forward_hook(fail_on_third)
    try:
        with pytest.raises(RuntimeError, match="injected fault"):
            ClassifierExplainer(model, tokenizer=tok).attribute(TEXTS, target=1, n_steps=4, batch_size=2)
    finally:
        handle.remove()
    check()


def test_views_rank_and_draw_the_explained_tokens(bert, tok):
    result = ClassifierExplainer(bert, "feature_ablation", tokenizer=tok).attribute(TEXTS[:2], target=1)
    top = result.top(2)
    for i, row in enumerate(top):
        assert len(row) == 2 and row[0][2] >= row[1][2]
        assert all(tok.convert_ids_to_tokens(int(result.input_ids[i, p])) == t for p, t, _ in row)
        assert all(t not in ("[CLS]", "[SEP]", "[PAD]") for _, t, _ in row)
    assert "movie" in result.to_html() and "[PAD]" not in result.to_html()
    assert "movie" in result.to_ansi()


def test_feature_helpers_freeze_padding_and_special_tokens(tok):
    inputs = TokenInputs.from_texts(tok, ["a good movie", "bad"])
    assert torch.equal(inputs.special_tokens_mask[1], torch.tensor([True, False, True, False, False]))
    assert torch.equal(baseline_ids(inputs, "mask", tok)[1], torch.tensor([CLS_ID, MASK_ID, SEP_ID, PAD_ID, PAD_ID]))
    free = baseline_ids(inputs, MASK_ID, keep_special=False)
    assert torch.equal(free[1], torch.tensor([MASK_ID, MASK_ID, MASK_ID, PAD_ID, PAD_ID]))
    mask = token_feature_mask(inputs)
    assert torch.equal(mask[1], torch.tensor([1, 1, 1, 1, 1]))  # frozen positions join the first feature
    assert torch.equal(mask[0], torch.tensor([1, 1, 2, 3, 1]))
    assert torch.equal(token_feature_mask(inputs, "word")[0], torch.tensor([0, 0, 1, 2, 0]))
    assert torch.equal(token_feature_mask(inputs, keep_special=False)[1], torch.tensor([0, 1, 2, 0, 0]))
    assert torch.equal(token_feature_mask(inputs, "word", keep_special=False)[1], torch.tensor([5, 0, 7, 0, 0]))


def test_special_tokens_are_explained_when_not_kept(bert64, tok):
    inputs = TokenInputs.from_texts(tok, ["bad"])
    result = ClassifierExplainer(bert64, "feature_ablation", baseline=MASK_ID, keep_special=False).attribute(
        inputs, target=1
    )
    changed = inputs.input_ids.clone()
    changed[0, 0] = MASK_ID
    drop = _logits(bert64, inputs.input_ids, inputs.attention_mask) - _logits(bert64, changed, inputs.attention_mask)
    assert_close_rel(result.scores[0, 0], drop[0, 1], rtol=1e-9)
    assert result.scores[0, 2] != 0


# --- bad input --------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(bert, tok):
    with pytest.raises(ValueError, match="tokenizer"):
        ClassifierExplainer(bert).attribute(["a good movie"], target=1)
    with pytest.raises(ValueError, match="texts must be a non-empty list of strings"):
        ClassifierExplainer(bert, tokenizer=tok).attribute([], target=1)
    with pytest.raises(ValueError, match="texts must be a non-empty list of strings"):
        as_token_inputs((), tok)
    with pytest.raises(ValueError, match="texts must be a non-empty list of strings"):
        TokenInputs.from_texts(tok, [])
    no_mask = tiny_tokenizer("gpt2")
    with pytest.raises(ValueError, match="no cls token"):
        ClassifierExplainer(bert, tokenizer=no_mask, baseline="cls").attribute(["a good movie"], target=1)
    with pytest.raises(ValueError, match="method must be one of"):
        ClassifierExplainer(bert, "occlusion")
    with pytest.raises(TypeError, match="method must be one of"):
        ClassifierExplainer(bert, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="granularity"):
        ClassifierExplainer(bert, granularity="sentence")
    with pytest.raises(TypeError, match="baselines= is set by the explainer"):
        ClassifierExplainer(bert, tokenizer=tok).attribute(["a"], target=1, baselines=0)
    ids = TokenInputs.from_ids(torch.tensor([[CLS_ID, 20, SEP_ID]]))
    with pytest.raises(ValueError, match="word ids"):
        ClassifierExplainer(bert, "feature_ablation", granularity="word").attribute(ids, target=1)
    with pytest.raises(TypeError, match="inputs must be TokenInputs"):
        ClassifierExplainer(bert).attribute(3.5, target=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape of input_ids"):
        TokenInputs(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4), torch.zeros(2, 3, dtype=torch.bool))


def test_readme_examples_run():
    """The classifier and generation examples proposed for the README, verbatim."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    from attrib.text import ClassifierExplainer, GenerationExplainer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        words = "[PAD] [UNK] [MASK] the film was not bad good alice lives in paris".split()
        core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]"
        )

        config = BertConfig(
            vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
        bert = BertForSequenceClassification(config).eval()
        explainer = ClassifierExplainer(bert, "integrated_gradients", tokenizer=tokenizer, baseline="mask")
        result = explainer.attribute(["the film was not bad", "good film"], target=1, n_steps=32)
        assert result.scores.shape == (2, 5) and bool((result.scores[1, 2:] == 0).all())
        assert len(result.top(2)[1]) == 2 and "film" in result.to_ansi()

        config = GPT2Config(vocab_size=len(words), n_embd=32, n_layer=2, n_head=2, n_positions=32,
                            bos_token_id=None, eos_token_id=None)  # fmt: skip
        gpt2 = GPT2LMHeadModel(config).eval()
        generation = GenerationExplainer(gpt2, tokenizer, "feature_ablation", baseline="unk")
        scores = generation.attribute("alice lives in", max_new_tokens=3)
        assert len(scores.target_tokens) == 3 and scores.matrix.shape == (3, 3)
        torch.testing.assert_close(scores.total, scores.matrix.sum(0))
