"""AttnLRP against lxt, and attention rollout / Chefer et al.'s relevance, side by side in one run.

Times, interleaved (``benchmarks/timing.py``), on a small randomly initialised
GPT-2 and BERT built from configs (``--width``, ``--layers``, ``--heads``;
``--batch`` sequences of ``--length`` tokens, eager attention):

* attrib's ``AttnLRP`` (one forward pass, one rule-modified backward pass);
* lxt 2.1's AttnLRP rules, applied by hand as its model maps do (``tests/lxt_oracle.py``:
  ``lxt.efficient.monkey_patch`` itself does not run on transformers 5.x), as Gradient x Input
  at the token embeddings;
* the floor: one plain forward and backward (the gradient at the embeddings);
* attrib's ``AttentionRollout`` (no gradients) and ``GradientWeightedRollout`` (Chefer et al.).

Prints a markdown table; the ratio column is the method's time / attrib's AttnLRP time.

    python benchmarks/bench_attention.py                      # CPU, width 128, 4 layers, 8 x 64 tokens
    python benchmarks/bench_attention.py --device cuda --batch 32 --length 256
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attrib.methods.attention import AttentionRollout, GradientWeightedRollout  # noqa: E402
from attrib.methods.attn_lrp import AttnLRP  # noqa: E402
from attrib.text.model import HFModel  # noqa: E402
from tests.lxt_oracle import lxt_patched  # noqa: E402


def build(family: str, width: int, layers: int, heads: int, length: int, device: str) -> Any:
    import transformers

    if family == "gpt2":
        config: Any = transformers.GPT2Config(
            vocab_size=1000, n_positions=max(length, 64), n_embd=width, n_layer=layers, n_head=heads
        )
        cls: Any = transformers.GPT2LMHeadModel
    else:
        config = transformers.BertConfig(
            vocab_size=1000,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=max(length, 64),
            num_labels=2,
        )
        cls = transformers.BertForSequenceClassification
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(config)
    return model.to(device).eval()


def runners(family: str, model: Any, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Callable[[], object]]:
    def score(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 7] if family == "gpt2" else logits[:, 1]

    extra = {"use_cache": False} if family == "gpt2" else {}
    wrapped = HFModel(model)
    lrp = AttnLRP(wrapped)

    def embeds() -> torch.Tensor:
        with torch.no_grad():
            return model.get_input_embeddings()(ids).detach().requires_grad_(True)  # type: ignore[no-any-return]

    def lxt() -> torch.Tensor:
        x = embeds()
        with lxt_patched(family):
            (grad,) = torch.autograd.grad(score(model(inputs_embeds=x, attention_mask=mask, **extra).logits).sum(), x)
        return (x * grad).sum(-1)

    def floor() -> torch.Tensor:
        x = embeds()
        (grad,) = torch.autograd.grad(score(model(inputs_embeds=x, attention_mask=mask, **extra).logits).sum(), x)
        return grad

    token = -1 if family == "gpt2" else 0
    return {
        "attrib AttnLRP": lambda: lrp.attribute(ids, target=score, additional_forward_args=(mask,)),
        "lxt AttnLRP (rules by hand)": lxt,
        "plain forward + backward": floor,
        "attrib AttentionRollout": lambda: AttentionRollout(wrapped).attribute(
            ids, token=token, additional_forward_args=(mask,)
        ),
        "attrib GradientWeightedRollout": lambda: GradientWeightedRollout(wrapped).attribute(
            ids, target=score, token=token, additional_forward_args=(mask,)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"| model | method | ms | / attrib AttnLRP |  (batch {args.batch} x {args.length} tokens, {args.device})")
    print("|---|---|---|---|")
    for family in ("gpt2", "bert"):
        model = build(family, args.width, args.layers, args.heads, args.length, args.device)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(10, 1000, (args.batch, args.length), generator=g).to(args.device)
        mask = torch.ones_like(ids)
        times = timed(runners(family, model, ids, mask), args.repeats, args.device)
        base = times["attrib AttnLRP"]
        for name, seconds in times.items():
            print(f"| {family} | {name} | {seconds * 1e3:.1f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
