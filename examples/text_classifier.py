"""Explain the shipped text classifier token by token, and check the explanations against the known evidence.

    python examples/text_classifier.py                 # 64 sequences, 3 of them printed in full
    python examples/text_classifier.py --n 256 --show 0

The model (``attrib.data.load_model("text-classifier")``, trained by
``scripts/train_text_classifier.py``) reads padded synthetic reviews such
as "the plot was not bad and the cast ..." and says negative or positive.
The generator knows which tokens decide each label (the cue phrases that
agree with it, "not bad" here), so an explanation can be scored: for each
sequence, is the top-ranked token a deciding one, and what share of the top
``k`` tokens are (``k`` = the number of deciding tokens)?

Three methods explain the predicted class, each over token positions with
``<pad>`` as the reference and the attention mask passed through
``additional_forward_args`` (so the model still sees a token at each
position, with the zero ``<pad>`` embedding):

* FeatureAblation: the logit drop when one token becomes ``<pad>``;
* ShapleyValueSampling: the token's mean marginal contribution over random orders;
* LayerIntegratedGradients on ``model.embedding``: integrated gradients in
  embedding space from the ``<pad>`` embedding, summed over the embedding
  dimension to one score per token (complete: the scores add up to the
  logit gain over the all-``<pad>`` sequence).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor

import attrib
from attrib.data import LABELS, PAD_ID, VOCAB, load_model, make_sequences

Method = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(input_ids, attention_mask, target) -> (N, L)`` per-token scores."""


def methods(model: torch.nn.Module, *, n_samples: int, n_steps: int, batch_size: int) -> dict[str, Method]:
    """The three explainers, each returning one score per token ``(N, L)``."""
    ablation = attrib.FeatureAblation(model)
    shapley = attrib.ShapleyValueSampling(model)
    lig = attrib.LayerIntegratedGradients(model, "embedding")  # model.embedding: the token embedding

    def by_ablation(ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        out: Tensor = ablation.attribute(ids, target, baselines=PAD_ID, batch_size=batch_size,
                                         additional_forward_args=(mask,))
        return out  # feature_mask=None: every position is its own feature

    def by_shapley(ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        out: Tensor = shapley.attribute(ids, target, baselines=PAD_ID, n_samples=n_samples, seed=0,
                                        batch_size=batch_size, additional_forward_args=(mask,))
        return out

    def by_lig(ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        out: Tensor = lig.attribute(ids, target, baselines=PAD_ID, n_steps=n_steps, batch_size=batch_size,
                                    additional_forward_args=(mask,))
        return out.sum(-1)  # (N, L, D) -> (N, L)

    return {"ablation": by_ablation, "shapley": by_shapley, "lig": by_lig}


def agreement(scores: Tensor, mask: Tensor, deciding: Tensor) -> tuple[Tensor, Tensor]:
    """Per sequence: is the top-ranked real token deciding (``(N,)`` bool), and the share of deciding
    tokens among the top ``k`` real tokens, ``k`` = the number of deciding tokens (``(N,)`` float)."""
    ranked = scores.masked_fill(~mask, float("-inf")).argsort(1, descending=True)  # padding ranks last
    hits = deciding.gather(1, ranked)  # (N, L): is the r-th ranked token deciding
    k = deciding.sum(1)
    in_top_k = torch.arange(scores.shape[1], device=scores.device) < k.unsqueeze(1)
    return hits[:, 0], (hits & in_top_k).sum(1) / k.clamp(min=1)


def show(index: int, ids: Tensor, mask: Tensor, deciding: Tensor, label: int, predicted: int,
         scores: dict[str, Tensor]) -> None:
    print(f"\nsequence {index}: label {LABELS[label]}, predicted {LABELS[predicted]}  (* = deciding token)")
    print(f"  {'token':<12}" + "".join(f"{name:>10}" for name in scores))
    for t in range(int(mask.sum())):
        word = VOCAB[int(ids[t])] + (" *" if deciding[t] else "")
        print(f"  {word:<12}" + "".join(f"{float(s[t]):>10.3f}" for s in scores.values()))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the example; returns, per method, the top-1 hit rate and the mean top-k precision."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="sequences to explain (default 64)")
    parser.add_argument("--show", type=int, default=3, help="sequences to print token by token (default 3)")
    parser.add_argument("--seed", type=int, default=11, help="data seed (default 11; training used 2_000_000+)")
    parser.add_argument("--n-samples", type=int, default=25, help="Shapley orders (default 25)")
    parser.add_argument("--n-steps", type=int, default=64, help="integration steps (default 64)")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args(argv)

    model = load_model("text-classifier")
    data = make_sequences(args.n, seed=args.seed)
    ids, mask = data.input_ids, data.attention_mask
    with torch.no_grad():
        predicted = model(ids, mask).argmax(1)
    explainers = methods(model, n_samples=args.n_samples, n_steps=args.n_steps, batch_size=args.batch_size)
    scores = {name: explain(ids, mask, predicted) for name, explain in explainers.items()}

    for i in range(min(args.show, args.n)):
        show(i, ids[i], mask[i], data.deciding[i], int(data.labels[i]), int(predicted[i]),
             {name: s[i] for name, s in scores.items()})

    accuracy = float((predicted == data.labels).float().mean())
    print(f"\n{args.n} sequences (seed {args.seed}), model accuracy {accuracy:.3f}; explaining the predicted class")
    with torch.no_grad():  # completeness of LIG: its token scores add up to the gain over the all-<pad> sequence
        gain = (model(ids, mask) - model(torch.full_like(ids, PAD_ID), mask)).gather(1, predicted[:, None])[:, 0]
    gap = float((scores["lig"].sum(1) - gain).abs().max())
    print(f"  LayerIntegratedGradients: largest |sum of token scores - logit gain| {gap:.1e} "
          f"(logit gains {float(gain.min()):.1f} to {float(gain.max()):.1f})")
    print(f"  {'method':<10}{'top-1 is deciding':>20}{'top-k precision':>18}")
    report: dict[str, dict[str, float]] = {}
    for name, s in scores.items():
        top1, precision = agreement(s, mask, data.deciding)
        report[name] = {"top1": float(top1.float().mean()), "precision_at_k": float(precision.mean())}
        print(f"  {name:<10}{report[name]['top1']:>20.3f}{report[name]['precision_at_k']:>18.3f}")
    report["lig"]["completeness_gap"] = gap
    return report


if __name__ == "__main__":
    main()
