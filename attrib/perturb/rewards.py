r"""The energy extremal perturbation maximises: a reward per perturbed copy and an area regulariser per mask.

A *reward* scores the model output of perturbed copies: any callable
``reward(output (R, C, ...), classes (R,)) -> (R,)``. The *variant* (the game)
says which copies a mask makes and with which sign their rewards count:

* ``"preserve"``: keep the mask, perturb the rest; maximise :math:`\rho(x \otimes m)`.
* ``"delete"``: perturb the mask, keep the rest; maximise :math:`-\rho(x \otimes (1 - m))`.
* ``"dual"``: both at once; maximise :math:`\rho(x \otimes m) - \rho(x \otimes (1 - m))`.

The area regulariser pulls the sorted mask values on the image towards the
step :math:`r_a` that is 0 on the lowest :math:`\lfloor P(1-a) \rfloor` of the
:math:`P` image pixels and 1 above (a mask of area :math:`a` whatever its
shape), and the mask's values off the image (its margins, :math:`Q` pixels)
towards 0:

.. math::
    R_a(m) = \frac{1}{P + Q}\Big(\big\lVert \mathrm{sort}(m_{\text{image}}) - r_a \big\rVert^2
    + \lVert m_{\text{margin}} \rVert^2\Big)

The margin term makes a parameter at the image border pay for every pixel it
turns on, as one inside does (without it the border is cheaper to keep, and
masks drift into the corners); the area counts image pixels only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..targets import class_scores

Reward = Callable[[Tensor, Tensor], Tensor]
"""``(output (R, C, ...), classes (R,) long) -> (R,)``: how good each perturbed copy is for its class."""

VARIANTS: dict[str, tuple[tuple[bool, float], ...]] = {
    "preserve": ((False, 1.0),),
    "delete": ((True, -1.0),),
    "dual": ((False, 1.0), (True, -1.0)),
}
"""Per variant, the copies a mask makes: (perturb where the mask is 1, i.e. use ``1 - m``; sign of the reward)."""


def simple_reward(output: Tensor, classes: Tensor) -> Tensor:
    r"""The target class's score :math:`y_c` (summed over any trailing dimensions, as :mod:`attrib.targets`).

    Example:
        >>> simple_reward(torch.tensor([[1.0, 3.0]]), torch.tensor([1]))
        tensor([3.])
    """
    return class_scores(output).gather(1, classes.view(-1, 1).to(output.device)).squeeze(1)


def contrastive_reward(output: Tensor, classes: Tensor) -> Tensor:
    r"""The target's margin over the best other class: :math:`y_c - \max_{c' \ne c} y_{c'}`.

    (TorchRay writes -100 in place of :math:`y_c` before the maximum; here it
    is excluded exactly, so very negative scores are handled too.)

    Example:
        >>> contrastive_reward(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([1]))
        tensor([1.])
    """
    scores = class_scores(output)
    index = classes.view(-1, 1).to(scores.device)
    others = scores.scatter(1, index, float("-inf")).amax(1)
    return scores.gather(1, index).squeeze(1) - others


REWARDS: dict[str, Reward] = {"simple": simple_reward, "contrastive": contrastive_reward}


TIE = 1e-6
"""Mask values closer than this are equal for the area regulariser's gradient (float32 rounding is ~1e-7)."""


def area_thresholds(areas: Sequence[float], pixels: int) -> list[int]:
    r"""Per area :math:`a`, the number :math:`\lfloor P(1-a) \rfloor` of pixels the regulariser pulls to 0."""
    return [int(pixels * (1 - a)) for a in areas]


def area_penalty(values: Tensor, zeros: Tensor, outside: Tensor | None = None) -> Tensor:
    r""":math:`\frac{1}{P + Q}\big(\sum_i (\mathrm{sort}(m)_i - [i \ge z])^2 + \sum_j o_j^2\big)` per row.

    Equal values (sorted neighbours within :data:`TIE` of each other) have no
    order of their own, so the gradient treats them alike: a pixel among equal
    values is pulled towards the mean of the step over their positions in the
    sorted vector (the average over their orders), not towards the 0 or 1 that
    the sort's tie-break (memory order, or rounding noise) would give it. This
    matters where all parameters start equal: otherwise the first steps push
    down the first pixels in memory order (the top of the image) and let the
    last ones (the bottom right) grow. The value is unchanged.

    Args:
        values: ``(R, P)`` mask values of each row on the image.
        zeros: ``(R,)`` integer tensor, how many of the lowest values should be 0.
        outside: ``(R, Q)`` mask values that should all be 0 (the margins off the image), or None (:math:`Q = 0`).

    Returns:
        ``(R,)`` penalties, differentiable in ``values`` and ``outside``.

    Example:
        >>> area_penalty(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), torch.tensor([2]))
        tensor([0.])
        >>> area_penalty(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), torch.tensor([[0.5, 0.0]]))
        tensor([0.0625])
    """
    rows, count = values.shape
    ordered = values.sort(dim=1).values
    positions = torch.arange(count, device=values.device)
    step = (positions[None, :] >= zeros.view(-1, 1).to(values.device)).to(values.dtype)
    with torch.no_grad():  # the step averaged over each run of equal values of the sorted row
        starts = torch.ones_like(ordered, dtype=torch.bool)
        starts[:, 1:] = ordered[:, 1:] - ordered[:, :-1] > TIE
        run = (starts.long().cumsum(1) - 1 + torch.arange(rows, device=values.device)[:, None] * count).flatten()
        sums = torch.zeros(rows * count, device=values.device, dtype=values.dtype).index_add_(0, run, step.flatten())
        sizes = torch.zeros(rows * count, device=values.device, dtype=values.dtype).index_add_(
            0, run, torch.ones_like(step).flatten()
        )
        mean = (sums / sizes.clamp_min(1)).gather(0, run).view(rows, count)
        constant = (step.square() - mean.square()).sum(1)  # sum (v - r)^2 = sum (v - mean)^2 + this, per run
    total = (ordered - mean).square().sum(1) + constant
    if outside is not None:
        total = total + outside.square().sum(1)
        count += outside.shape[1]
    return total / count
