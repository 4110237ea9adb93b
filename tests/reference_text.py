"""Slow float64 references for token attribution, written from the formulas (loops over steps, tokens, rows).

They call the HuggingFace models through ``inputs_embeds`` (the token
embeddings, positions added inside the model), so they use neither attrib's
hooks nor its batching.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

ScoreOfEmbeddings = Callable[[Tensor], Tensor]
"""``(L, D)`` token embeddings of one sequence -> the scalar score."""


def gauss_legendre(n_steps: int) -> tuple[list[float], list[float]]:
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return [float((a + 1) / 2) for a in nodes], [float(w / 2) for w in weights]


def ig_per_token(score: ScoreOfEmbeddings, embeds: Tensor, base: Tensor, n_steps: int) -> Tensor:
    r"""``(L,)``: :math:`s_l = \sum_d (e - e')_{l,d} \sum_k w_k\, \partial_{e_{l,d}} S(e' + \alpha_k (e - e'))`."""
    alphas, weights = gauss_legendre(n_steps)
    total = torch.zeros_like(embeds)
    for alpha, weight in zip(alphas, weights):
        point = (base + alpha * (embeds - base)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(point), point)
        total += weight * grad
    return ((embeds - base) * total).sum(-1)


def gradient_x_input_per_token(score: ScoreOfEmbeddings, embeds: Tensor) -> Tensor:
    point = embeds.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(point), point)
    return (embeds * grad).sum(-1)


def classifier_score(
    model: nn.Module, mask: Tensor, target: int, token_type_ids: Tensor | None = None
) -> ScoreOfEmbeddings:
    """One text's class logit as a function of its token embeddings ``(L, D)`` (segment ids ``(L,)`` if given)."""
    types = None if token_type_ids is None else token_type_ids.unsqueeze(0)

    def score(e: Tensor) -> Tensor:
        logits = model(inputs_embeds=e.unsqueeze(0), attention_mask=mask.unsqueeze(0), token_type_ids=types).logits
        return logits[0, target]  # type: ignore[no-any-return]

    return score


def ablation_per_token(score_of_ids: Callable[[Tensor], float], ids: Tensor, baseline: Tensor) -> Tensor:
    """``S(x) - S(x with token l set to its baseline)`` for every position ``l`` (0 where the baseline is the token)."""
    clean = score_of_ids(ids)
    out = torch.zeros(ids.shape[0], dtype=torch.float64)
    for position in range(ids.shape[0]):
        if baseline[position] == ids[position]:
            continue
        changed = ids.clone()
        changed[position] = baseline[position]
        out[position] = clean - score_of_ids(changed)
    return out


PerToken = dict[str, Tensor]
"""Further per-token inputs of one prompt, ``(P,)`` each: ``token_type_ids``, ``position_ids``."""


def next_token_log_prob(model: nn.Module, embeds: Tensor, token: int, extra: PerToken | None = None) -> Tensor:
    """``log p(token | sequence)`` from the logits at the last position of one sequence's embeddings ``(L, D)``."""
    kwargs = {name: value.unsqueeze(0) for name, value in (extra or {}).items()}
    logits = model(inputs_embeds=embeds.unsqueeze(0), use_cache=False, **kwargs).logits[0, -1]
    return logits.log_softmax(-1)[token]


def _prefix(extra: PerToken | None, t: int) -> PerToken:
    """The per-token inputs of ``x + y_<t``: the prompt's, then for each target token its last segment
    (as ``generate`` extends ``token_type_ids``) and the next position."""
    out = {}
    for name, value in (extra or {}).items():
        if name == "token_type_ids":
            out[name] = torch.cat([value, value[-1:].repeat(t)])
        elif name == "position_ids":
            out[name] = torch.cat([value, value[-1] + 1 + torch.arange(t)])
        else:
            raise ValueError(name)
    return out


def generation_ig_matrix(
    model: nn.Module,
    prompt: Tensor,
    target: Tensor,
    baseline: Tensor,
    n_steps: int,
    extra: PerToken | None = None,
) -> Tensor:
    """Row ``t``: IG of ``log p(y_t | x, y_<t)`` over the prompt embeddings, from the run on ``x + y_<t`` alone."""
    wte = model.get_input_embeddings()
    rows = []
    for t in range(target.shape[0]):
        sequence = torch.cat([prompt, target[:t]])
        start = torch.cat([baseline, target[:t]])
        embeds, base = wte(sequence).detach(), wte(start).detach()
        token, inputs = int(target[t]), _prefix(extra, t)

        def score(e: Tensor, token: int = token, inputs: PerToken = inputs) -> Tensor:
            return next_token_log_prob(model, e, token, inputs)

        rows.append(ig_per_token(score, embeds, base, n_steps)[: prompt.shape[0]])
    return torch.stack(rows)


def generation_log_probs(model: nn.Module, prompt: Tensor, target: Tensor, extra: PerToken | None = None) -> Tensor:
    """``(T,)``: ``log p(y_t | x, y_<t)``, one forward per prefix (as generation runs)."""
    wte = model.get_input_embeddings()
    return torch.stack(
        [
            next_token_log_prob(model, wte(torch.cat([prompt, target[:t]])), int(target[t]), _prefix(extra, t)).detach()
            for t in range(target.shape[0])
        ]
    )


def generation_ablation_matrix(
    model: nn.Module, prompt: Tensor, target: Tensor, baseline: Tensor, extra: PerToken | None = None
) -> Tensor:
    """``[t, p]``: the drop of ``log p(y_t | x, y_<t)`` when prompt token ``p`` becomes its baseline."""
    with torch.no_grad():
        clean = generation_log_probs(model, prompt, target, extra)
        out = torch.zeros(target.shape[0], prompt.shape[0], dtype=torch.float64)
        for p in range(prompt.shape[0]):
            if baseline[p] == prompt[p]:
                continue
            changed = prompt.clone()
            changed[p] = baseline[p]
            out[:, p] = clean - generation_log_probs(model, changed, target, extra)
    return out
