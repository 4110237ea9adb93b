"""AttentionRollout and GradientWeightedRollout (Chefer et al. 2021): float64 references and properties."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from attrib.core.attention import AttentionRecorder, _eager_mha, eager_multihead_attention, token_map
from attrib.methods.attention import AttentionRollout, GradientWeightedRollout
from attrib.targets import Target
from attrib.text.model import HFModel
from tests.hf_models import tiny_bert_classifier, tiny_gpt2, tiny_tokenizer, tiny_vit
from tests.reference_attention import chefer_reference, rollout_reference

TEXTS = ["the cat sat on the mat", "a good movie", "alice lives in paris and bob works at a bank"]


@pytest.fixture(scope="module")
def bert() -> Any:
    return tiny_bert_classifier(0)


@pytest.fixture(scope="module")
def encoded() -> Any:
    return tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt")


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


class Logits(nn.Module):
    """An image classifier returning its ``.logits`` tensor (so class-index targets apply)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits  # type: ignore[no-any-return]


def _hf_attentions(model: Any, **inputs: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return [a.double() for a in model(**inputs, output_attentions=True).attentions]


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [0.5, 0.2])
def test_rollout_matches_reference_on_padded_bert(bert: Any, encoded: Any, fusion: str, residual: float) -> None:
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    ours = AttentionRollout(HFModel(bert)).attribute(
        ids, token=0, head_fusion=fusion, residual=residual, additional_forward_args=(mask,)
    )
    ref = rollout_reference(_hf_attentions(bert, input_ids=ids, attention_mask=mask), 0, fusion, residual)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-7)
    assert bool((ours[mask == 0] == 0).all())  # padded keys get no attention


def test_rollout_matches_reference_on_gpt2_last_token() -> None:
    gpt2 = tiny_gpt2(0)
    ids = tiny_tokenizer("gpt2")(["the cat sat on the mat"], return_tensors="pt")["input_ids"].repeat(2, 1)
    ours = AttentionRollout(HFModel(gpt2)).attribute(ids, token=-1)
    ref = rollout_reference(_hf_attentions(gpt2, input_ids=ids, use_cache=False), ids.shape[1] - 1, "mean", 0.5)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-7)


def test_rollout_on_vit_is_a_patch_map_matching_the_reference() -> None:
    vit = tiny_vit(0)
    x = _images()
    ours = AttentionRollout(vit).attribute(x)
    assert ours.shape == (3, 1, 4, 4)
    ref = rollout_reference(_hf_attentions(vit, pixel_values=x), 0, "mean", 0.5)[:, 1:].reshape(3, 1, 4, 4)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-7)


def test_chefer_matches_reference_on_bert(bert: Any, encoded: Any) -> None:
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    ours = GradientWeightedRollout(HFModel(bert)).attribute(ids, target=1, additional_forward_args=(mask,))
    # The reference reaches the attention through the embeddings (a leaf there), attrib through a leaf at layer 1.
    embeds = bert.get_input_embeddings()(ids).detach().requires_grad_(True)
    ref = chefer_reference(bert, lambda out: out.logits[:, 1], 0, inputs_embeds=embeds, attention_mask=mask)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-7)
    assert bool((ours[mask == 0] == 0).all())
    assert not torch.equal(ours, torch.nn.functional.one_hot(torch.zeros(3, dtype=torch.long), ids.shape[1]).float())


def test_chefer_matches_reference_on_vit_and_k_targets_match_single() -> None:
    vit = tiny_vit(0)
    x = _images()
    chefer = GradientWeightedRollout(Logits(vit))
    labels = torch.tensor([[1, 4], [0, 2], [3, 3]])
    both = chefer.attribute(x, target=labels)
    assert both.shape == (3, 2, 1, 4, 4)
    for k in range(2):
        single = chefer.attribute(x, target=labels[:, k])
        torch.testing.assert_close(both[:, k], single)
        leaf = x.clone().requires_grad_(True)
        column = labels[:, k : k + 1]
        ref = chefer_reference(vit, lambda out, c=column: out.logits.gather(1, c).squeeze(1), 0, pixel_values=leaf)
        torch.testing.assert_close(single.double(), ref[:, 1:].reshape(3, 1, 4, 4), rtol=1e-5, atol=1e-7)


def test_torchvision_vit_attention_recomputed_step_by_step() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
        nn.init.normal_(model.heads.head.weight)
    model.eval()
    x = _images(2)
    attention = model.encoder.layers[0].self_attention
    tokens = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, weights = attention(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
        ours, our_weights = _eager_mha(
            attention, (tokens, tokens, tokens), {"need_weights": True, "average_attn_weights": False}
        )
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_weights, weights, rtol=1e-5, atol=1e-6)
    # The recorder sees each layer once, even with need_weights=True in the module's own forward.
    recorder = AttentionRecorder(2)
    with torch.no_grad(), recorder, eager_multihead_attention(model, recorder):
        model(x)
    assert len(recorder.maps) == 2 and recorder.maps[0].shape == (2, 2, 17, 17)
    assert AttentionRollout(model).attribute(x).shape == (2, 1, 4, 4)
    chefer = GradientWeightedRollout(model).attribute(x, target=3)
    assert chefer.shape == (2, 1, 4, 4) and bool((chefer > 0).any())


def test_independent_of_batch_size_and_rows_do_not_interact(bert: Any, encoded: Any) -> None:
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    for method, options in (
        (AttentionRollout(HFModel(bert)), {}),
        (GradientWeightedRollout(HFModel(bert)), {"target": 0}),
    ):
        whole = method.attribute(ids, additional_forward_args=(mask,), **options)
        split = method.attribute(ids, additional_forward_args=(mask,), batch_size=1, **options)
        torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-7)
        alone = method.attribute(ids[1:2], additional_forward_args=(mask[1:2],), **options)
        torch.testing.assert_close(alone, whole[1:2], rtol=1e-5, atol=1e-7)


def test_padding_does_not_change_the_real_tokens(bert: Any) -> None:
    tok = tiny_tokenizer()
    short = tok(["a good movie"], return_tensors="pt")
    long = tok(["a good movie"], padding="max_length", max_length=9, return_tensors="pt")
    model = HFModel(bert)
    for method, options in ((AttentionRollout(model), {}), (GradientWeightedRollout(model), {"target": 1})):
        a = method.attribute(short["input_ids"], additional_forward_args=(short["attention_mask"],), **options)
        b = method.attribute(long["input_ids"], additional_forward_args=(long["attention_mask"],), **options)
        torch.testing.assert_close(b[:, : a.shape[1]], a, rtol=1e-5, atol=1e-6)
        assert bool((b[:, a.shape[1] :] == 0).all())


def test_per_example_token_positions(encoded: Any, bert: Any) -> None:
    gpt2 = HFModel(tiny_gpt2(0))
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    last = mask.sum(1) - 1
    per_row = AttentionRollout(gpt2).attribute(ids, token=last, additional_forward_args=(mask,))
    for i in range(3):
        alone = AttentionRollout(gpt2).attribute(
            ids[i : i + 1], token=int(last[i]), additional_forward_args=(mask[i : i + 1],)
        )
        torch.testing.assert_close(per_row[i : i + 1], alone, rtol=1e-5, atol=1e-7)


def test_last_token_of_a_right_padded_batch_is_each_examples_last_real_token() -> None:
    gpt2 = HFModel(tiny_gpt2(0))
    encoded = tiny_tokenizer("gpt2")(TEXTS, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert bool((mask[:, -1] == 0).any())  # right padding: position -1 is padding for the short texts
    lengths = mask.sum(1)
    for chefer in (False, True):
        method = GradientWeightedRollout(gpt2) if chefer else AttentionRollout(gpt2)
        options = {"target": _next_token_logit(lengths)} if chefer else {}
        batch = method.attribute(ids, token=-1, additional_forward_args=(mask,), batch_size=2, **options)
        explicit = method.attribute(ids, token=lengths - 1, additional_forward_args=(mask,), **options)
        torch.testing.assert_close(batch, explicit, rtol=1e-6, atol=1e-8)
        second = method.attribute(ids, token=-2, additional_forward_args=(mask,), **options)
        torch.testing.assert_close(
            second, method.attribute(ids, token=lengths - 2, additional_forward_args=(mask,), **options)
        )
        for i in range(len(TEXTS)):  # each text alone, unpadded, explained at its last token
            n = int(lengths[i])
            single = {"target": _next_token_logit(lengths[i : i + 1])} if chefer else {}
            alone = method.attribute(
                ids[i : i + 1, :n], token=-1, additional_forward_args=(mask[i : i + 1, :n],), **single
            )
            torch.testing.assert_close(batch[i : i + 1, :n], alone, rtol=1e-5, atol=1e-7)
            assert bool((batch[i, n:] == 0).all())
    # Without a mask there is no padding to skip: -1 is position L - 1, as before.
    without = AttentionRollout(gpt2).attribute(ids, token=-1)
    torch.testing.assert_close(without, AttentionRollout(gpt2).attribute(ids, token=ids.shape[1] - 1))
    # Left padding: the last real token is position L - 1 for every example.
    left = mask.flip(1)
    torch.testing.assert_close(
        AttentionRollout(gpt2).attribute(ids, token=-1, additional_forward_args=(left,)),
        AttentionRollout(gpt2).attribute(ids, token=ids.shape[1] - 1, additional_forward_args=(left,)),
    )
    with pytest.raises(ValueError, match="has 3 real tokens"):
        AttentionRollout(gpt2).attribute(ids, token=-4, additional_forward_args=(mask,))


def _next_token_logit(lengths: torch.Tensor) -> Target:
    """Each example's logit of token 7 at its last real position (``(R, L, V)`` outputs)."""

    def score(out: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
        return out[torch.arange(out.shape[0]), lengths[example] - 1, 7]

    return Target.of_rows(score, lengths.shape[0])


def _state(model: nn.Module) -> tuple[Any, ...]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return hooks, [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def test_state_restored_also_after_a_fault(bert: Any, encoded: Any) -> None:
    model = HFModel(bert)
    model.train()
    before = _state(model)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    GradientWeightedRollout(model).attribute(ids, target=1, additional_forward_args=(mask,))
    AttentionRollout(model).attribute(ids, additional_forward_args=(mask,))
    assert _state(model) == before

    def broken(out: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        GradientWeightedRollout(model).attribute(ids, target=broken, additional_forward_args=(mask,))
    assert _state(model) == before
    model.eval()


def test_bad_inputs(bert: Any, encoded: Any) -> None:
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    rollout = AttentionRollout(HFModel(bert))
    with pytest.raises(ValueError, match="head_fusion"):
        rollout.attribute(ids, head_fusion="median", additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="residual"):
        rollout.attribute(ids, residual=1.5, additional_forward_args=(mask,))
    with pytest.raises(TypeError, match="token"):
        rollout.attribute(ids, token=0.5, additional_forward_args=(mask,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token positions"):
        rollout.attribute(ids, token=40, additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="token"):
        rollout.attribute(ids, token=torch.tensor([0, 1]), additional_forward_args=(mask,))
    fused = tiny_bert_classifier(0)
    fused.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="eager"):
        AttentionRollout(HFModel(fused)).attribute(ids, additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="eager"):
        GradientWeightedRollout(HFModel(fused)).attribute(ids, target=0, additional_forward_args=(mask,))


def test_token_map_reads_class_and_distillation_tokens() -> None:
    scores = torch.arange(2 * 18, dtype=torch.float32).view(2, 18)
    deit = token_map(scores, (2, 3, 32, 32))  # DeiT: class + distillation + 16 patches
    assert deit.shape == (2, 1, 4, 4) and torch.equal(deit.flatten(1), scores[:, 2:])
    vit = token_map(scores[:, 1:], (2, 3, 32, 32))
    assert torch.equal(vit.flatten(1), scores[:, 2:])
    assert token_map(scores, (2, 18)) is scores
