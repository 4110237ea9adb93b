"""Float64 loops written from the definition of the token deletion / insertion curves (tests only)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def token_curve_reference(
    score_of: Callable[[Tensor, Tensor], float],
    input_ids: Tensor,
    attention_mask: Tensor,
    scores: Tensor,
    *,
    deletable: Tensor,
    replacement: int,
    inserts: bool = False,
    steps: int | None = None,
) -> list[tuple[list[float], list[float], float]]:
    """Per sequence: fractions, model scores and the trapezoid AUC, one model call per point.

    ``score_of(ids (L,), mask (L,))`` is the target's score of one sequence whose removed tokens have
    id ``replacement`` and mask 0. Removable tokens are ranked by decreasing score, ties by position.
    """
    out = []
    for n in range(input_ids.shape[0]):
        positions = [p for p in range(input_ids.shape[1]) if bool(deletable[n, p])]
        order = sorted(positions, key=lambda p: (-float(scores[n, p]), p))
        t = len(order)
        s_n = t if steps is None else steps
        fractions, values = [], []
        for s in range(s_n + 1):
            k = (s * t) // s_n
            removed = set(order[:k]) if not inserts else set(order[k:])
            ids = input_ids[n].clone()
            mask = attention_mask[n].clone()
            for p in removed:
                ids[p] = replacement
                mask[p] = 0
            fractions.append(k / t)
            values.append(float(score_of(ids, mask)))
        auc = sum((fractions[i] - fractions[i - 1]) * (values[i] + values[i - 1]) / 2 for i in range(1, len(values)))
        out.append((fractions, values, auc))
    return out
