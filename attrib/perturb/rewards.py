r"""The energy extremal perturbation maximises: a reward per perturbed copy and an area regulariser per mask.

A *reward* scores the model output of perturbed copies: any callable
``reward(output (R, C, ...), classes (R,)) -> (R,)``. The *variant* (the game)
says which copies a mask makes and with which sign their rewards count:

* ``"preserve"``: keep the mask, perturb the rest; maximise :math:`\rho(x \otimes m)`.
* ``"delete"``: perturb the mask, keep the rest; maximise :math:`-\rho(x \otimes (1 - m))`.
* ``"dual"``: both at once; maximise :math:`\rho(x \otimes m) - \rho(x \otimes (1 - m))`.

The area regulariser :math:`\lVert \mathrm{sort}(m) - r_a \rVert^2 / P` pulls the
sorted mask values towards the step :math:`r_a` that is 0 on the lowest
:math:`\lfloor P(1-a) \rfloor` of the :math:`P` pixels and 1 above: a mask of area
:math:`a` whatever its shape.
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


def area_thresholds(areas: Sequence[float], pixels: int) -> list[int]:
    r"""Per area :math:`a`, the number :math:`\lfloor P(1-a) \rfloor` of pixels the regulariser pulls to 0."""
    return [int(pixels * (1 - a)) for a in areas]


def area_penalty(values: Tensor, zeros: Tensor) -> Tensor:
    r""":math:`\frac1P \sum_i (\mathrm{sort}(m)_i - [i \ge z])^2` per row.

    Args:
        values: ``(R, P)`` mask values of each row.
        zeros: ``(R,)`` integer tensor, how many of the lowest values should be 0.

    Returns:
        ``(R,)`` penalties, differentiable in ``values``.

    Example:
        >>> area_penalty(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), torch.tensor([2]))
        tensor([0.])
    """
    ordered = values.sort(dim=1).values
    positions = torch.arange(values.shape[1], device=values.device)
    reference = (positions[None, :] >= zeros.view(-1, 1).to(values.device)).to(values.dtype)
    return (ordered - reference).square().mean(1)
