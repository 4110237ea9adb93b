"""AttnLRP: against a float64 reference of the paper's rules, against lxt 2.1, conservation and properties."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrib.core.attn_lrp_nodes import is_unit
from attrib.lrp.composites import Composite
from attrib.lrp.rules import Epsilon
from attrib.methods.attn_lrp import AttnLRP
from attrib.rules import UnsupportedModelError
from attrib.text.model import HFModel
from tests.hf_models import tiny_bert_classifier, tiny_gpt2, tiny_tokenizer, tiny_vit
from tests.lxt_oracle import lxt_patched
from tests.reference_attention import TinyBlock, attn_lrp_reference

TEXTS = ["the cat sat on the mat", "a good movie", "alice lives in paris and bob works at a bank"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_float64_reference_on_a_transformer_block(seed: int) -> None:
    block = TinyBlock(seed=seed)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=_gen(seed))
    mask = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    mask[1, ..., 3:] = torch.finfo(torch.float64).min  # the second example has two padded keys
    ours = AttnLRP(block, epsilon=1e-9).attribute(x, target=1, additional_forward_args=(mask,))
    for e in range(2):
        ref, ledger, score = attn_lrp_reference(block, x[e], 1, mask[e, 0], eps=1e-9)
        torch.testing.assert_close(ours[e], ref.detach(), rtol=1e-6, atol=1e-7 * float(ref.abs().max()))
        # The ledger: what reaches the input plus what each rule's bias (and epsilon) absorbed is the score.
        assert abs(float(ref.sum()) + sum(ledger.values()) - score) < 1e-9
        assert abs(ledger["sum"]) < 1e-6 and abs(ledger["matmul"]) < 1e-6  # sums and products conserve


def test_conserves_the_score_without_biases_and_softmax() -> None:
    """LN (no shift), linear layers without bias, GELU, a gate (uniform rule), residual sums: sum R_x = S."""

    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = _gen(3)
            self.norm = nn.LayerNorm(6, elementwise_affine=False)
            self.up, self.gate, self.down = (nn.Linear(6, 6, bias=False) for _ in range(3))
            self.out = nn.Linear(6, 2, bias=False)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))
            self.double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x + self.down(self.up(self.norm(x)) * F.silu(self.gate(x)))
            return self.out(h).sum(1)

    model = Gated()
    x = torch.randn(4, 3, 6, dtype=torch.float64, generator=_gen(4))
    relevance = AttnLRP(model, epsilon=1e-12).attribute(x, target=0)
    torch.testing.assert_close(relevance.sum((1, 2)), model(x)[:, 0].detach(), rtol=1e-8, atol=1e-10)


def _lxt_text(model: Any, family: str, ids: torch.Tensor, mask: torch.Tensor, score: Any) -> torch.Tensor:
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    extra = {"use_cache": False} if family == "gpt2" else {}
    with lxt_patched(family):
        out = model(inputs_embeds=embeds, attention_mask=mask, **extra)
        (grad,) = torch.autograd.grad(score(out.logits).sum(), embeds)
    return (embeds * grad).sum(-1).detach()


def _restored_after_lxt() -> None:
    assert nn.LayerNorm.forward.__module__ == "torch.nn.modules.normalization"


def test_matches_lxt_on_bert() -> None:
    bert = tiny_bert_classifier(0).double()
    enc = tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ref = _lxt_text(bert, "bert", ids, mask, lambda logits: logits[:, 1])
    _restored_after_lxt()
    ours = AttnLRP(HFModel(bert), epsilon=1e-12).attribute(ids, target=1, additional_forward_args=(mask,))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)
    assert bool((ours[mask == 0] == 0).all())


def test_matches_lxt_on_gpt2_with_its_tanh_gelu() -> None:
    gpt2 = tiny_gpt2(1).double()
    assert any(type(m).__name__ == "NewGELUActivation" and is_unit(m) for m in gpt2.modules())
    enc = tiny_tokenizer("gpt2")(TEXTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    last = mask.sum(1) - 1
    rows = torch.arange(3)

    def score(logits: torch.Tensor) -> torch.Tensor:
        return logits[rows[: logits.shape[0]], last[: logits.shape[0]], 9]

    ref = _lxt_text(gpt2, "gpt2", ids, mask, score)
    ours = AttnLRP(HFModel(gpt2), epsilon=1e-12).attribute(ids, target=score, additional_forward_args=(mask,))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)


def test_matches_lxt_on_vit_pixels() -> None:
    vit = tiny_vit(0).double()
    for p in vit.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=_gen(5))
    leaf = x.clone().requires_grad_(True)
    with lxt_patched("vit"):
        (grad,) = torch.autograd.grad(vit(leaf).logits[:, 3].sum(), leaf)
    for p in vit.parameters():
        p.requires_grad_(True)
    ours = AttnLRP(vit, epsilon=1e-12).attribute(x, target=lambda out: out.logits[:, 3])
    expected = (leaf * grad).detach()
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7 * float(expected.abs().max()))
    tokens = AttnLRP(vit, "vit.embeddings", epsilon=1e-12).attribute(x, target=lambda out: out.logits[:, 3])
    assert tokens.shape == (2, 17)


def test_k_targets_batch_size_and_batch_invariance() -> None:
    bert = HFModel(tiny_bert_classifier(2))
    enc = tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lrp = AttnLRP(bert)
    both = lrp.attribute(ids, target=torch.tensor([[0, 1]] * 3), additional_forward_args=(mask,))
    assert both.shape == (3, 2, ids.shape[1])
    for k in range(2):
        single = lrp.attribute(ids, target=k, additional_forward_args=(mask,), batch_size=2)
        torch.testing.assert_close(both[:, k], single, rtol=1e-5, atol=1e-7)
    alone = lrp.attribute(ids[2:], target=1, additional_forward_args=(mask[2:],))
    torch.testing.assert_close(alone, both[2:, 1], rtol=1e-5, atol=1e-7)
    top1 = lrp.attribute(ids, additional_forward_args=(mask,))
    predicted = bert(ids, mask).argmax(1)
    torch.testing.assert_close(top1, both[torch.arange(3), predicted], rtol=1e-5, atol=1e-7)


def test_padding_does_not_change_the_real_tokens() -> None:
    bert = HFModel(tiny_bert_classifier(0))
    tok = tiny_tokenizer()
    short = tok(["a good movie"], return_tensors="pt")
    long = tok(["a good movie"], padding="max_length", max_length=9, return_tensors="pt")
    lrp = AttnLRP(bert)
    a = lrp.attribute(short["input_ids"], target=1, additional_forward_args=(short["attention_mask"],))
    b = lrp.attribute(long["input_ids"], target=1, additional_forward_args=(long["attention_mask"],))
    torch.testing.assert_close(b[:, : a.shape[1]], a, rtol=1e-4, atol=1e-6)
    assert bool((b[:, a.shape[1] :] == 0).all())


def test_torchvision_vit_runs_with_its_attention_recomputed() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
        nn.init.normal_(model.heads.head.weight)
    model = model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=_gen(6))
    relevance = AttnLRP(model, epsilon=1e-12).attribute(x, target=3)
    assert relevance.shape == x.shape and bool(relevance.abs().sum() > 0)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def _state(model: nn.Module) -> tuple[Any, ...]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return hooks, [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def test_state_restored_also_after_a_fault() -> None:
    model = HFModel(tiny_bert_classifier(0))
    model.train()
    before = _state(model)
    enc = tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    AttnLRP(model).attribute(ids, target=1, additional_forward_args=(mask,))
    assert _state(model) == before

    def broken(out: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        AttnLRP(model).attribute(ids, target=broken, additional_forward_args=(mask,))
    assert _state(model) == before
    model.eval()


def test_refusals_and_bad_inputs() -> None:
    enc = tiny_tokenizer()(TEXTS[:2], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    fused = tiny_bert_classifier(0)
    fused.config._attn_implementation = "sdpa"
    with pytest.raises(UnsupportedModelError, match="attn_implementation='eager'"):
        AttnLRP(HFModel(fused)).attribute(ids, target=0, additional_forward_args=(mask,))
    bert = HFModel(tiny_bert_classifier(0))
    with pytest.raises(TypeError, match="composite"):
        AttnLRP(bert, composite=Epsilon())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon"):
        AttnLRP(bert, epsilon=-1.0)
    with pytest.raises(ValueError, match="no layer named"):
        AttnLRP(bert, "encoder.nope")
    with pytest.raises(TypeError, match="nn.Module"):
        AttnLRP(lambda x: x)  # type: ignore[arg-type]
    # Relevance at an inner layer: the query projection of the first layer (the keys are then constant).
    query = AttnLRP(bert, "model.bert.encoder.layer.0.attention.self.query").attribute(
        ids, target=0, additional_forward_args=(mask,)
    )
    assert query.shape == ids.shape

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.layer(x))

    with pytest.raises(ValueError, match="ran 2 times"):
        AttnLRP(Twice(), "layer").attribute(torch.randn(2, 3), target=0)

    class Divides(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / x.norm(dim=1, keepdim=True)

    with pytest.raises(UnsupportedModelError):
        AttnLRP(Divides()).attribute(torch.randn(2, 3), target=0)
    # A composite with a rule for every linear layer is accepted and used.
    custom = Composite([(nn.Linear, Epsilon(0.1))], stabilizer=1e-6)
    a = AttnLRP(bert, composite=custom).attribute(ids, target=0, additional_forward_args=(mask,))
    b = AttnLRP(bert).attribute(ids, target=0, additional_forward_args=(mask,))
    assert a.shape == b.shape and not torch.allclose(a, b)
