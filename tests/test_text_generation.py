"""GenerationExplainer on a tiny GPT-2: float64 references, Captum's LLM attribution, templates, properties, errors."""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation
from captum.attr import LayerIntegratedGradients as CaptumLayerIG
from captum.attr import LLMAttribution, LLMGradientAttribution, ShapleyValues, TextTemplateInput, TextTokenInput
from captum.attr import ShapleyValueSampling as CaptumShapleyValueSampling

from attrib.core.randomness import make_generator
from attrib.methods.layer_integrated_gradients import LayerIntegratedGradients
from attrib.methods.shapley import feature_orders
from attrib.text.generation import GenerationExplainer, greedy
from attrib.text.model import HFModel, TargetLogProbs
from attrib.text.template import TemplateInput
from attrib.text.tokens import TokenInputs

from . import reference_text as ref
from .hf_models import BOS_ID, UNK_ID, tiny_gpt2, tiny_tokenizer
from .test_differential import assert_close_rel

PROMPT = "alice lives in paris and"
TARGET = "works at a bank ."


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("gpt2")


@pytest.fixture(scope="module")
def gpt64():
    return tiny_gpt2(1).double()


@pytest.fixture(scope="module")
def gpt():
    return tiny_gpt2(2)


def _ids(tok, text):
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"])


# --- references -------------------------------------------------------------------------


def test_integrated_gradients_matrix_matches_the_row_by_row_float64_loop(gpt64, tok):
    prompt, target = _ids(tok, PROMPT), _ids(tok, TARGET)
    result = GenerationExplainer(gpt64, tok).attribute(PROMPT, TARGET, n_steps=12, batch_size=5)
    expected = ref.generation_ig_matrix(gpt64, prompt, target, torch.full_like(prompt, UNK_ID), 12)
    assert result.matrix.shape == (target.shape[0], prompt.shape[0])
    assert_close_rel(result.matrix, expected, rtol=1e-9)
    assert_close_rel(result.log_probs, ref.generation_log_probs(gpt64, prompt, target), rtol=1e-10)
    assert result.prompt_tokens == tok.convert_ids_to_tokens(prompt.tolist())
    assert result.target_tokens == tok.convert_ids_to_tokens(target.tolist())


def test_feature_ablation_matrix_matches_the_loop_over_prompt_tokens(gpt64, tok):
    prompt, target = _ids(tok, PROMPT), _ids(tok, TARGET)
    result = GenerationExplainer(gpt64, tok, "feature_ablation").attribute(PROMPT, TARGET, batch_size=4)
    expected = ref.generation_ablation_matrix(gpt64, prompt, target, torch.full_like(prompt, UNK_ID))
    assert_close_rel(result.matrix, expected, rtol=1e-9)
    assert_close_rel(result.total, expected.sum(0), rtol=1e-9)


# --- Captum -----------------------------------------------------------------------------


@pytest.mark.parametrize("with_bos", [False, True])
def test_integrated_gradients_matches_captum_llm_gradient_attribution(gpt, tok, with_bos):
    prompt = ("<bos> " if with_bos else "") + PROMPT
    captum = LLMGradientAttribution(CaptumLayerIG(gpt, gpt.transformer.wte), tok)
    skip = ["<bos>"] if with_bos else None
    theirs = captum.attribute(
        TextTokenInput(prompt, tok, baselines=UNK_ID, skip_tokens=skip), target=TARGET, n_steps=50
    )
    ours = GenerationExplainer(gpt, tok).attribute(prompt, TARGET, n_steps=50)
    if with_bos:
        assert ours.prompt_ids[0] == BOS_ID and bool((ours.matrix[:, 0] == 0).all())
    keep = slice(1, None) if with_bos else slice(None)
    assert_close_rel(ours.matrix[:, keep], theirs.token_attr, rtol=1e-4)
    assert_close_rel(ours.total[keep], theirs.seq_attr, rtol=1e-4)


# Captum's default token-by-token pass with its KV cache (use_cached_outputs=True) disagrees with its own
# uncached passes under transformers 5 from the second target token on; both uncached passes agree with ours
# and with the float64 prefix-by-prefix reference above.
@pytest.mark.parametrize("forward_in_tokens", [False, True])
def test_feature_ablation_matches_captum_llm_attribution(gpt, tok, forward_in_tokens):
    captum = LLMAttribution(CaptumFeatureAblation(gpt), tok)
    theirs = captum.attribute(
        TextTokenInput(PROMPT, tok, baselines=UNK_ID),
        target=TARGET,
        forward_in_tokens=forward_in_tokens,
        use_cached_outputs=False,
    )
    ours = GenerationExplainer(gpt, tok, "feature_ablation").attribute(PROMPT, TARGET)
    assert_close_rel(ours.matrix, theirs.token_attr, rtol=1e-4)
    assert_close_rel(ours.total, theirs.seq_attr, rtol=1e-4)


def test_shapley_sampling_matches_captum_with_the_same_orders(gpt, tok):
    prompt = _ids(tok, PROMPT)
    orders = feature_orders(3, prompt.shape[0], make_generator(7, None, torch.device("cpu")))
    sampler = CaptumShapleyValueSampling(gpt)
    sampler.permutation_generator = lambda features, n_samples: iter(orders.tolist())
    theirs = LLMAttribution(sampler, tok).attribute(
        TextTokenInput(PROMPT, tok, baselines=UNK_ID), target=TARGET, n_samples=3, forward_in_tokens=False
    )
    ours = GenerationExplainer(gpt, tok, "shapley").attribute(PROMPT, TARGET, n_samples=3, seed=7)
    assert_close_rel(ours.matrix, theirs.token_attr, rtol=1e-4)
    assert_close_rel(ours.total, theirs.seq_attr, rtol=1e-4)


def test_enumerated_kernel_shap_matches_captum_exact_shapley_values(gpt, tok):
    prompt = "alice lives in rome"
    theirs = LLMAttribution(ShapleyValues(gpt), tok).attribute(
        TextTokenInput(prompt, tok, baselines=UNK_ID), target=TARGET, forward_in_tokens=False
    )
    ours = GenerationExplainer(gpt, tok, "kernel_shap").attribute(prompt, TARGET, n_samples=16)
    assert_close_rel(ours.matrix, theirs.token_attr, rtol=1e-4)
    assert_close_rel(ours.total, theirs.seq_attr, rtol=1e-4)


TEMPLATE = ("{} lives in {} and works at a {}", ["alice", "paris", "bank"], ["bob", "london", "school"])


def test_template_input_matches_captum_text_template_input(gpt, tok):
    template, values, baselines = TEMPLATE
    ours_input = TemplateInput(template, values, baselines)
    captum_input = TextTemplateInput(template, values, baselines)
    for bits in range(8):
        present = [bool(bits >> j & 1) for j in range(3)]
        assert ours_input.text(present) == captum_input.to_model_input(torch.tensor([present]))
    ablation = LLMAttribution(CaptumFeatureAblation(gpt), tok).attribute(
        captum_input, target="and sat .", use_cached_outputs=False
    )
    ours = GenerationExplainer(gpt, tok, "feature_ablation").attribute(ours_input, "and sat .")
    assert ours.prompt_tokens == values and ours.prompt_ids is None
    assert_close_rel(ours.matrix, ablation.token_attr, rtol=1e-4)
    assert_close_rel(ours.total, ablation.seq_attr, rtol=1e-4)
    exact = LLMAttribution(ShapleyValues(gpt), tok).attribute(captum_input, target="and sat .", forward_in_tokens=False)
    shap = GenerationExplainer(gpt, tok, "kernel_shap").attribute(ours_input, "and sat .", n_samples=8)
    assert_close_rel(shap.matrix, exact.token_attr, rtol=1e-4)


def test_template_fields_grouped_by_mask_and_keyword_fields(gpt, tok):
    grouped = TemplateInput("{a} lives in {b} and works at a {c}", {"a": "alice", "b": "paris", "c": "bank"},
                            {"a": "bob", "b": "london", "c": "school"}, mask={"a": 0, "b": 1, "c": 1})  # fmt: skip
    keys = grouped.keys or []
    captum_input = TextTemplateInput(
        grouped.template, dict(zip(keys, grouped.values)), dict(zip(keys, grouped.baselines)), {"a": 0, "b": 1, "c": 1}
    )
    theirs = LLMAttribution(CaptumFeatureAblation(gpt), tok).attribute(
        captum_input, target="and sat .", forward_in_tokens=False
    )
    ours = GenerationExplainer(gpt, tok, "feature_ablation").attribute(grouped, "and sat .")
    assert_close_rel(ours.matrix, theirs.token_attr, rtol=1e-4)
    assert torch.equal(ours.matrix[:, 1], ours.matrix[:, 2])


# --- per-token inputs beyond the mask (token_type_ids, position_ids) ---------------------


def _with(tok, name, values, text=PROMPT):
    """One prompt with a further per-token input ``name`` (its ``(P,)`` values)."""
    ids = _ids(tok, text).unsqueeze(0)
    return TokenInputs(
        ids,
        torch.ones_like(ids),
        torch.zeros_like(ids, dtype=torch.bool),
        extra_inputs={name: torch.as_tensor(values).unsqueeze(0)},
    )


def _with_segments(tok):
    return _with(tok, "token_type_ids", [0, 0, 0, 1, 1])


def test_prompt_segments_reach_the_model_and_continue_over_the_target(gpt64, tok):
    prompt, target = _ids(tok, PROMPT), _ids(tok, TARGET)
    inputs = _with_segments(tok)
    segments = {"token_type_ids": inputs.extra_inputs["token_type_ids"][0]}
    unk = torch.full_like(prompt, UNK_ID)
    log_probs = ref.generation_log_probs(gpt64, prompt, target, segments)
    assert (log_probs - ref.generation_log_probs(gpt64, prompt, target)).abs().max() > 1e-2  # segments matter
    ablation = GenerationExplainer(gpt64, tok, "feature_ablation").attribute(inputs, target, batch_size=4)
    assert_close_rel(ablation.log_probs, log_probs, rtol=1e-10)
    assert_close_rel(ablation.matrix, ref.generation_ablation_matrix(gpt64, prompt, target, unk, segments), rtol=1e-9)
    shapley = GenerationExplainer(gpt64, tok, "shapley").attribute(inputs, target, n_samples=2, seed=0)
    gap = log_probs - ref.generation_log_probs(gpt64, unk, target, segments)
    assert_close_rel(shapley.matrix.sum(1), gap, rtol=1e-9)
    # GPT-2 embeds token_type_ids with its token embeddings (wte runs twice): embedding methods cannot run.
    with pytest.raises(ValueError, match="runs 2 times per forward pass"):
        GenerationExplainer(gpt64, tok).attribute(inputs, target)


def test_prompt_positions_reach_the_model_and_count_on_over_the_target(gpt64, tok):
    prompt, target = _ids(tok, PROMPT), _ids(tok, TARGET)
    positions = torch.arange(7, 7 + prompt.shape[0])
    inputs = _with(tok, "position_ids", positions)
    extra = {"position_ids": positions}
    unk = torch.full_like(prompt, UNK_ID)
    log_probs = ref.generation_log_probs(gpt64, prompt, target, extra)
    assert (log_probs - ref.generation_log_probs(gpt64, prompt, target)).abs().max() > 1e-2  # positions matter
    sequence = torch.cat([prompt, target]).unsqueeze(0)
    with torch.no_grad():  # one pass over prompt + target with positions 7, 8, ... gives the same
        logits = gpt64(input_ids=sequence, position_ids=torch.arange(7, 7 + sequence.shape[1]).unsqueeze(0)).logits
    direct = logits[0, prompt.shape[0] - 1 : -1].log_softmax(-1).gather(1, target.unsqueeze(1)).squeeze(1)
    assert_close_rel(log_probs, direct, rtol=1e-10)
    ig = GenerationExplainer(gpt64, tok).attribute(inputs, target, n_steps=12, batch_size=5)
    assert_close_rel(ig.log_probs, log_probs, rtol=1e-10)
    assert_close_rel(ig.matrix, ref.generation_ig_matrix(gpt64, prompt, target, unk, 12, extra), rtol=1e-9)
    fine = GenerationExplainer(gpt64, tok).attribute(inputs, target, n_steps=64)
    gap = log_probs - ref.generation_log_probs(gpt64, unk, target, extra)
    torch.testing.assert_close(fine.matrix.sum(1), gap, rtol=1e-5, atol=1e-7)  # completeness on the real input
    ablation = GenerationExplainer(gpt64, tok, "feature_ablation").attribute(inputs, target, batch_size=3)
    assert_close_rel(ablation.matrix, ref.generation_ablation_matrix(gpt64, prompt, target, unk, extra), rtol=1e-9)


def test_greedy_target_with_segments_is_what_generate_gives(gpt, tok):
    inputs = _with_segments(tok)
    ours = GenerationExplainer(gpt, tok, "feature_ablation").attribute(inputs, max_new_tokens=6)
    with torch.no_grad():
        generated = gpt.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            token_type_ids=inputs.extra_inputs["token_type_ids"],
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )[0, inputs.input_ids.shape[1] :]
        plain = gpt.generate(input_ids=inputs.input_ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.target_ids, generated)
    assert not torch.equal(generated, plain[0, inputs.input_ids.shape[1] :])  # the segments change the text


def test_template_prompts_keep_the_tokenizers_segments(gpt64):
    segmented = tiny_tokenizer("gpt2")
    segmented.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    template = TemplateInput(*TEMPLATE)
    target = _ids(segmented, "and sat .")
    ours = GenerationExplainer(gpt64, segmented, "feature_ablation").attribute(template, target)

    def total(present):
        prompt = torch.tensor(segmented(template.text(present))["input_ids"])
        return ref.generation_log_probs(gpt64, prompt, target, {"token_type_ids": torch.zeros_like(prompt)}).sum()

    clean = total([True] * 3)
    expected = torch.stack([clean - total([j != k for j in range(3)]) for k in range(3)])
    assert_close_rel(ours.total, expected, rtol=1e-9)
    plain = GenerationExplainer(gpt64, tiny_tokenizer("gpt2"), "feature_ablation").attribute(template, target)
    assert (plain.total - ours.total).abs().max() > 1e-3  # GPT-2 adds the embedding of segment 0: not the same input


def test_a_per_token_input_without_a_continuation_is_refused(gpt, tok):
    ids = _ids(tok, PROMPT).unsqueeze(0)
    odd = TokenInputs(
        ids,
        torch.ones_like(ids),
        torch.zeros_like(ids, dtype=torch.bool),
        extra_inputs={"encoder_attention_mask": torch.ones_like(ids)},
    )
    with pytest.raises(ValueError, match="cannot be continued over the target"):
        GenerationExplainer(gpt, tok, "feature_ablation").attribute(odd, "bank")
    with pytest.raises(ValueError, match="extra_inputs must hold"):
        greedy(HFModel(gpt, extra_inputs=("token_type_ids",)), ids, 2)


def test_template_input_repr():
    template = TemplateInput(*TEMPLATE)
    assert repr(template) == (
        "TemplateInput('{} lives in {} and works at a {}', values=['alice', 'paris', 'bank'], "
        "baselines=['bob', 'london', 'school'])"
    )
    keyed = TemplateInput("{a} in {b}", {"a": "alice", "b": "rome"}, mask={"a": 0, "b": 0})
    assert repr(keyed) == (
        "TemplateInput('{a} in {b}', values={'a': 'alice', 'b': 'rome'}, baselines={'a': '', 'b': ''}, "
        "mask={'a': 0, 'b': 0})"
    )

    def sentence(name: str) -> str:
        return f"{name} sat"

    assert repr(TemplateInput(sentence, ["alice"])).startswith("TemplateInput('sentence', values=['alice']")


# --- properties -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "options"), [("integrated_gradients", {"n_steps": 10}), ("feature_ablation", {})])
def test_each_row_is_the_single_target_token_explanation(gpt64, tok, method, options):
    prompt, target = _ids(tok, PROMPT), _ids(tok, TARGET)
    explainer = GenerationExplainer(gpt64, tok, method)
    full = explainer.attribute(PROMPT, target, **options)
    for t in range(target.shape[0]):
        ids = torch.cat([prompt, target[:t]]).unsqueeze(0)
        frozen_prefix = torch.arange(ids.shape[1]) >= prompt.shape[0]  # the earlier target tokens stay put
        single = TokenInputs(ids, torch.ones_like(ids), frozen_prefix.unsqueeze(0))
        row = explainer.attribute(single, target[t : t + 1], **options)
        assert_close_rel(full.matrix[t], row.matrix[0, : prompt.shape[0]], rtol=1e-9)
        assert bool((row.matrix[0, prompt.shape[0] :] == 0).all())


def test_total_is_the_attribution_of_the_summed_log_probability(gpt64, tok):
    prompt, target = _ids(tok, PROMPT), _ids(tok, TARGET)
    result = GenerationExplainer(gpt64, tok).attribute(PROMPT, target, n_steps=10)
    scorer = TargetLogProbs(HFModel(gpt64), target, with_total=True)
    direct = LayerIntegratedGradients(scorer, gpt64.transformer.wte).attribute(
        prompt.unsqueeze(0), target.shape[0], baselines=torch.full_like(prompt, UNK_ID).unsqueeze(0), n_steps=10
    )
    assert_close_rel(result.total, direct.sum(-1)[0, : prompt.shape[0]], rtol=1e-9)
    assert_close_rel(result.total, result.matrix.sum(0), rtol=1e-12)
    lime = GenerationExplainer(gpt64, tok, "lime").attribute(PROMPT, target, n_samples=30, seed=0)
    assert lime.total.shape == (prompt.shape[0],) and lime.matrix.shape == (target.shape[0], prompt.shape[0])


def test_a_method_class_gets_its_total_as_its_own_score(gpt64, tok):
    from attrib.methods.shapley import ShapleyValueSampling

    by_class = GenerationExplainer(gpt64, tok, ShapleyValueSampling).attribute(PROMPT, TARGET, n_samples=2, seed=4)
    by_name = GenerationExplainer(gpt64, tok, "shapley").attribute(PROMPT, TARGET, n_samples=2, seed=4)
    assert_close_rel(by_class.matrix, by_name.matrix, rtol=1e-12)
    assert_close_rel(by_class.total, by_class.matrix.sum(0), rtol=1e-9)  # computed from its own column


def test_greedy_target_is_what_generate_gives_and_config_is_untouched(gpt, tok):
    gpt.config.use_cache = True
    ours = GenerationExplainer(gpt, tok, "feature_ablation").attribute(PROMPT, max_new_tokens=6)
    inputs = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        generated = gpt.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)[
            0, inputs["input_ids"].shape[1] :
        ]
    assert torch.equal(ours.target_ids, generated)
    assert gpt.config.use_cache is True


@pytest.mark.parametrize(
    ("method", "options"), [("integrated_gradients", {"n_steps": 7}), ("shapley", {"n_samples": 2, "seed": 1})]
)
def test_memory_is_bounded_by_batch_size_and_results_do_not_depend_on_it(gpt64, tok, method, options):
    seen: list[int] = []
    handle = gpt64.transformer.wte.register_forward_hook(lambda module, args, output: seen.append(output.shape[0]))
    explainer = GenerationExplainer(gpt64, tok, method)
    try:
        small = explainer.attribute(PROMPT, TARGET, batch_size=3, **options)
        assert seen and max(seen) <= 3
        seen.clear()
        whole = explainer.attribute(PROMPT, TARGET, batch_size=None, **options)
        assert max(seen) > 3
    finally:
        handle.remove()
    assert_close_rel(small.matrix, whole.matrix, rtol=1e-10)


def test_state_is_restored_after_a_fault_mid_generation(tok):
    model = tiny_gpt2(4).train()
    model.config.use_cache = True
    model.lm_head.weight.requires_grad_(True)
    model.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    before = {name: p.clone() for name, p in model.state_dict().items()}
    calls = [0]

    def fail_on_third(module, args, output):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("injected fault")

    handle = model.transformer.register_forward_hook(fail_on_third)
    try:
        with pytest.raises(RuntimeError, match="injected fault"):
            GenerationExplainer(model, tok).attribute(PROMPT, max_new_tokens=5)
        assert calls[0] == 3  # it failed in the middle of the greedy generation
        calls[0] = -10
        GenerationExplainer(model, tok, "feature_ablation").attribute(PROMPT, max_new_tokens=3)
    finally:
        handle.remove()
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert model.config.use_cache is True


def test_heatmap_and_html_views(gpt, tok, tmp_path):
    import matplotlib  # noqa: F401  (a dev dependency: the picture needs it)
    result = GenerationExplainer(gpt, tok, "feature_ablation").attribute(PROMPT, TARGET)
    path = result.heatmap(tmp_path / "matrix.png")
    assert path.stat().st_size > 0
    assert "paris" in result.to_html() and "alice" in result.to_ansi()


# --- bad input --------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(gpt, tok):
    with pytest.raises(ValueError, match="need a tokenizer"):
        GenerationExplainer(gpt).attribute(PROMPT, torch.tensor([7]))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        GenerationExplainer(gpt).attribute(torch.tensor([20, 21]), "bank")
    with pytest.raises(ValueError, match="exceed the model's 64 positions"):
        GenerationExplainer(gpt, tok).attribute(PROMPT, torch.full((60,), 7))
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationExplainer(gpt, tok).attribute(PROMPT, max_new_tokens=100)
    with pytest.raises(ValueError, match="no cls token"):
        GenerationExplainer(gpt, tok, baseline="cls").attribute(PROMPT, "bank")
    with pytest.raises(ValueError, match="at least one token"):
        GenerationExplainer(gpt, tok).attribute(PROMPT, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="vocabulary"):
        GenerationExplainer(gpt, tok).attribute(PROMPT, torch.tensor([10_000]))
    with pytest.raises(ValueError, match="one example"):
        GenerationExplainer(gpt, tok).attribute(TokenInputs.from_texts(tok, ["a", "b"]), "bank")
    with pytest.raises(ValueError, match="perturbation method"):
        GenerationExplainer(gpt, tok).attribute(TemplateInput(*TEMPLATE), "bank")
    with pytest.raises(ValueError, match="method must be one of"):
        GenerationExplainer(gpt, tok, "saliency")
    with pytest.raises(ValueError, match="baselines must have one entry per field"):
        TemplateInput("{} {}", ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="does not take"):
        TemplateInput("{} {} {}", ["a", "b"])
