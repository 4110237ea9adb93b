"""Token-deletion faithfulness on the shipped text classifier: which method ranks the deciding tokens first, how fast.

    python benchmarks/bench_text_faithfulness.py                       # 256 sequences, CPU
    python benchmarks/bench_text_faithfulness.py --n 1024 --device cuda --batch-size 4096

The model is ``attrib.data.load_model("text-classifier")`` (a two-layer
transformer trained by ``scripts/train_text_classifier.py``) on
``make_sequences(--n, seed=--seed)``: synthetic reviews whose deciding tokens
(the cue phrases that agree with the label, e.g. "not bad") are known. Every
method explains the predicted class with ``<pad>`` as the reference token and
the attention mask passed, so a replaced position stays in the sequence with
the zero ``<pad>`` embedding (as in ``examples/text_classifier.py``):

* gradient methods at the token embedding ``model.embedding``, one score per
  token: Integrated Gradients (LayerIntegratedGradients from ``<pad>``,
  ``--n-steps``, summed over the embedding), Input x Gradient (summed) and
  Saliency (the L2 norm of the embedding gradient, unsigned);
* perturbation methods over token positions (padding frozen: it joins the
  sequence's first token's feature, and replacing ``<pad>`` by ``<pad>``
  changes nothing): FeatureAblation, ShapleyValueSampling (``--shapley-orders``),
  KernelShap and Lime (``--coalitions`` coalitions each, seeded);
* attention rollout (Abnar & Zuidema 2020, ``attrib.methods.attention``,
  heads averaged, residual 0.5): the shipped model mean-pools its tokens
  (no class token), so a token's score is its column of the rollout matrix
  averaged over the real positions' rows (one rollout call per position);
  class-agnostic;
* AttnLRP (``attrib.methods.attn_lrp``) when it supports the model: its
  relevance at the embedding summed over the hidden dimension; otherwise
  the reason it is left out is printed;
* two reference rankings: random (seeded) and the deciding tokens themselves.

Columns:

* ``deletion``: :class:`attrib.metrics.token_deletion.TokenDeletion` AUC of
  the predicted class's probability as tokens are deleted in the method's
  order, one point per token (the ids become ``<pad>`` and no attention
  mask is passed, which the shipped model reads as deletion). Lower is more
  faithful. ``insertion``: the mirror (tokens come back in order into an
  empty sequence); higher is better.
* ``top-1``: share of sequences whose highest-scored token is deciding;
  ``top-k``: mean share of deciding tokens among the ``k`` highest-scored
  real tokens, ``k`` the sequence's number of deciding tokens.
* ``ms / seq``: median over ``--repeats`` interleaved runs of the whole
  batch (``benchmarks/timing.py``), divided by ``--n``; every method scores
  ``--batch-size`` rows per forward pass. Scores and times come from the
  same run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import timed
from torch import Tensor

from attrib.data import PAD_ID, load_model, make_sequences
from attrib.methods.attention import AttentionRollout
from attrib.methods.attn_lrp import AttnLRP
from attrib.methods.feature_ablation import FeatureAblation
from attrib.methods.kernel_shap import KernelShap
from attrib.methods.layer_activation import LayerGradientXActivation
from attrib.methods.layer_integrated_gradients import LayerIntegratedGradients
from attrib.methods.lime import Lime
from attrib.methods.shapley import ShapleyValueSampling
from attrib.metrics.token_deletion import TokenDeletion, TokenInsertion

Explain = Callable[[], Tensor]


def agreement(scores: Tensor, mask: Tensor, deciding: Tensor) -> tuple[Tensor, Tensor]:
    """Per sequence: is the top-ranked real token deciding ``(N,)``, and the top-k precision ``(N,)``."""
    ranked = scores.masked_fill(~mask, float("-inf")).argsort(dim=1, descending=True, stable=True)
    hits = deciding.gather(1, ranked)
    k = deciding.sum(1)
    in_top_k = torch.arange(scores.shape[1], device=scores.device) < k.unsqueeze(1)
    return hits[:, 0], (hits & in_top_k).sum(1) / k.clamp(min=1)


def explainers(model: torch.nn.Module, ids: Tensor, mask: Tensor, target: Tensor, deciding: Tensor,
               args: argparse.Namespace) -> dict[str, Explain]:
    """Each method as a closure returning ``(N, L)`` token scores of ``target`` (padding: 0)."""
    forward_args = (mask,)
    batch = args.batch_size
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    features = torch.where(mask, positions, 0)  # padding joins feature 0 (a real token): it never moves
    lig = LayerIntegratedGradients(model, "embedding")
    gxa = LayerGradientXActivation(model, "embedding")
    grad = LayerGradientXActivation(model, "embedding", multiply_by_inputs=False)
    ablation, shapley = FeatureAblation(model), ShapleyValueSampling(model)
    kernel_shap, lime = KernelShap(model), Lime(model)
    perturbation = {"baselines": PAD_ID, "feature_mask": features, "batch_size": batch,
                    "additional_forward_args": forward_args}
    rollout = AttentionRollout(model)

    def mean_rollout() -> Tensor:
        # one row of the rollout matrix per call: position t's row for every sequence, averaged over real rows
        rows = torch.stack([rollout.attribute(ids, target, token=t, batch_size=batch,
                                              additional_forward_args=forward_args) for t in range(ids.shape[1])], 1)
        weights = mask.to(rows.dtype)
        return (rows * weights.unsqueeze(2)).sum(1) / weights.sum(1, keepdim=True)

    def zero_padding(scores: Tensor) -> Tensor:
        return scores.masked_fill(~mask, 0.0)

    def rows(out: Tensor) -> Tensor:
        return zero_padding(out.to(torch.float32))

    methods: dict[str, Explain] = {
        "Integrated Gradients (embedding)": lambda: rows(lig.attribute(
            ids, target, baselines=PAD_ID, n_steps=args.n_steps, batch_size=batch,
            additional_forward_args=forward_args).sum(-1)),
        "Input x Gradient (embedding)": lambda: rows(gxa.attribute(
            ids, target, additional_forward_args=forward_args).sum(-1)),
        "Saliency (embedding, L2)": lambda: rows(grad.attribute(
            ids, target, additional_forward_args=forward_args).norm(dim=-1)),
        "FeatureAblation": lambda: rows(ablation.attribute(ids, target, **perturbation)),
        "ShapleyValueSampling": lambda: rows(shapley.attribute(
            ids, target, n_samples=args.shapley_orders, seed=0, **perturbation)),
        "KernelShap": lambda: rows(kernel_shap.attribute(
            ids, target, n_samples=args.coalitions, seed=0, **perturbation)),
        "Lime": lambda: rows(lime.attribute(ids, target, n_samples=args.coalitions, seed=0, **perturbation)),
        "Attention rollout (mean row)": lambda: rows(mean_rollout()),
        "random ranking": lambda: zero_padding(torch.rand(ids.shape, generator=torch.Generator(
            ids.device).manual_seed(0), device=ids.device)),
        "deciding tokens (oracle)": lambda: deciding.to(torch.float32),
    }
    try:  # AttnLRP, where its rules cover the model
        attn_lrp = AttnLRP(model, "embedding")
        attn_lrp.attribute(ids[:1], target[:1], additional_forward_args=(mask[:1],))
    except (ValueError, TypeError, RuntimeError) as error:
        print(f"AttnLRP left out: {' '.join(str(error).split())[:160]}")
    else:
        methods["AttnLRP (embedding)"] = lambda: rows(attn_lrp.attribute(
            ids, target, batch_size=batch, additional_forward_args=forward_args))
    references = ("random ranking", "deciding tokens (oracle)")
    return {**{k: v for k, v in methods.items() if k not in references}, **{k: methods[k] for k in references}}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="sequences (default 256)")
    parser.add_argument("--seed", type=int, default=11, help="data seed (default 11; training used 2_000_000+)")
    parser.add_argument("--n-steps", type=int, default=32, help="integration steps (default 32)")
    parser.add_argument("--shapley-orders", type=int, default=25, help="Shapley permutations (default 25)")
    parser.add_argument("--coalitions", type=int, default=200, help="KernelShap / Lime coalitions (default 200)")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per forward pass (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    model = load_model("text-classifier").to(device)
    data = make_sequences(args.n, seed=args.seed)
    ids, mask, deciding = data.input_ids.to(device), data.attention_mask.to(device), data.deciding.to(device)
    with torch.no_grad():
        predicted = model(ids, mask).argmax(1)
    methods = explainers(model, ids, mask, predicted, deciding, args)
    results: dict[str, Tensor] = {}

    def keep(name: str, fn: Explain) -> Callable[[], object]:
        def run() -> object:
            results[name] = fn()
            return results[name]
        return run

    seconds = timed({name: keep(name, fn) for name, fn in methods.items()}, args.repeats, device)
    deletion = TokenDeletion(model, ids, predicted, attention_mask=mask, replacement=PAD_ID,
                             batch_size=args.batch_size)
    insertion = TokenInsertion(model, ids, predicted, attention_mask=mask, replacement=PAD_ID,
                               batch_size=args.batch_size)
    accuracy = float((predicted.cpu() == data.labels).float().mean())
    print(f"text-classifier on make_sequences({args.n}, seed={args.seed}), {device}, accuracy {accuracy:.3f}; "
          f"explaining the predicted class; IG n_steps={args.n_steps}, Shapley {args.shapley_orders} orders, "
          f"KernelShap/Lime {args.coalitions} coalitions, batch_size={args.batch_size}, "
          f"median of {args.repeats} runs")
    header = ["method", "deletion AUC (lower)", "insertion AUC (higher)", "top-1 deciding", "top-k precision",
              "ms / seq"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    report: dict[str, dict[str, float]] = {}
    for name, scores in results.items():
        top1, precision = agreement(scores, mask, deciding)
        row = {
            "deletion": float(deletion(scores).mean()),
            "insertion": float(insertion(scores).mean()),
            "top1": float(top1.float().mean()),
            "precision_at_k": float(precision.mean()),
            "ms_per_sequence": 1000 * seconds[name] / args.n,
        }
        report[name] = row
        time = "-" if "oracle" in name or "random" in name else f"{row['ms_per_sequence']:.2f}"
        print(f"| {name} | {row['deletion']:.3f} | {row['insertion']:.3f} | {row['top1']:.3f} | "
              f"{row['precision_at_k']:.3f} | {time} |")
    return report


if __name__ == "__main__":
    main()
