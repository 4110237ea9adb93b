"""Extremal perturbation (Fong, Patrick & Vedaldi, 2019)."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.batching import BatchSize, check_batch_size
from ..core.forward import run_model
from ..core.inputs import ForwardArgs, InputsLike, as_forward_args, as_input_batch
from ..core.randomness import make_generator
from ..perturb.mask_generator import MaskGenerator
from ..perturb.pyramid import Perturbation, PerturbationLike
from ..perturb.rewards import REWARDS, VARIANTS, Reward, area_penalty, area_thresholds
from ..perturbation_attribution import PerturbationAttribution
from ..targets import Target, TargetLike, class_scores

RowScorer = Callable[[Tensor, tuple[Any, ...], Tensor], Tensor]


class ExtremalPerturbation(PerturbationAttribution):
    r"""Extremal perturbation: the smooth mask of a given area that best preserves (or deletes) the target's evidence.

    For each image :math:`x`, target and area :math:`a` it finds parameters
    :math:`\bar m \in [0, 1]` of a smooth mask :math:`m = G(\bar m)`
    (:class:`attrib.perturb.MaskGenerator`) maximising

    .. math::
        E_t(\bar m) = \rho\big(\Phi(x \otimes m)\big) - \lambda_t\, R_a(m)

    where :math:`x \otimes m` blends the image with its perturbed copies
    (:class:`attrib.perturb.Perturbation`; 1 keeps the image), :math:`\rho` is
    the reward of the variant (``preserve``: :math:`\rho(x \otimes m)`;
    ``delete``: :math:`-\rho(x \otimes (1-m))`; ``dual``: both, see
    :mod:`attrib.perturb.rewards`), and :math:`R_a`
    (:func:`attrib.perturb.rewards.area_penalty`) is the area regulariser:

    .. math::
        R_a(m) = \frac{1}{P + Q}\Big(\big\lVert \mathrm{sort}(m_{\text{image}}) - r_a \big\rVert^2
        + \lVert m_{\text{margin}} \rVert^2\Big)

    It pulls the sorted values of the mask on the :math:`P = HW` image pixels
    towards a step with a fraction :math:`a` of ones, and the mask's :math:`Q`
    values in a margin around the image (``sigma`` pixels beyond the first and
    the last parameter on each side) towards 0. The margin term makes a
    parameter at the border pay for all the pixels it turns on, as one inside
    does; measured on the image alone, the border is cheaper and the masks
    drift into the corners (an object at the centre is then missed). The area
    counts image pixels only, so masks have the area asked for (TorchRay counts
    the margins in the area and its masks come out larger). Equal mask values
    share the regulariser's pull (see :func:`~attrib.perturb.rewards.area_penalty`),
    so the first steps, where all parameters are equal, favour no pixel.

    The weight grows geometrically, :math:`\lambda_t = \lambda_0 \gamma^t`
    (``regul_weight`` 300, ``regul_growth`` 1.0035), so the area constraint
    tightens as the optimisation proceeds. Parameters start at 1 (the whole
    image kept) and follow SGD with momentum (``learning_rate`` 0.01,
    ``momentum`` 0.9, dampening = momentum) on :math:`-E`, clipped to
    :math:`[0, 1]` after every step, for ``max_iter`` steps.

    What it converges to: a local maximum of :math:`E` reached from the
    all-ones mask. Early on the regulariser dominates and every value drops;
    the pixels whose keeping raises the reward most drop least, rise to the
    top of the sorted vector and are then pulled to 1, while the rest go to 0.
    As :math:`\lambda_t` grows the mask becomes nearly binary: about
    :math:`aHW` pixels near 1 on the image (the smooth parametrisation rounds
    its edges), 0 elsewhere and in the margins, placed where keeping them
    (deleting them, for ``delete``) moves the reward most. For a model whose
    score is the mean of a square of area :math:`a`, that is the square
    (tested with the fade for squares and rectangles anywhere in the image).
    It is not a global optimum: when the reward's gradient is weak beside the
    regulariser's, the first steps can settle on another region. With
    ``jitter`` each mask's perturbed image is flipped horizontally
    at random (probability 1/2 per step, drawn from ``seed``/``generator``).
    The flips of a step are drawn for all masks of the call at once, so with
    jitter a mask depends on the seed *and* on the other images and areas of
    the call (not on ``batch_size``); ``jitter=False`` makes each mask depend
    on its own image, target and area alone.

    All images, targets, areas and variant copies of a call are optimised
    together: every step evaluates the ``N x K x len(areas) x copies`` rows
    ``batch_size`` rows at a time (one forward and one backward pass per
    block), so memory is bounded by ``batch_size``.

    Differences from TorchRay's ``extremal_perturbation``: the area is a
    fraction of the image's pixels, with the margins pulled to 0 rather than
    counted in the area (TorchRay's masks are larger than asked), and the
    margins reach as far beyond the last parameter as before the first
    (TorchRay's bottom and right margins can be narrower, or absent); equal
    values share the regulariser's pull rather than being ordered by pixel
    index; jitter is random rather than a flip on every other step; many images
    and targets per call; model state restored.

    Returns masks ``(N, len(areas), H, W)`` (``(N, K, len(areas), H, W)`` for
    an ``(N, K)`` target): the masks evaluated at the last step (those
    whose energy is the history's last entry, as TorchRay's). With
    ``return_history=True`` also the history ``(N, [K,] len(areas), 2,
    max_iter)`` of the reward (index 0) and the regulariser term
    :math:`-\lambda_t R_a(m)` (index 1) of each mask at each step.

    Example:
        >>> ep = attrib.ExtremalPerturbation(model)
        >>> masks = ep.attribute(images, target=labels, areas=[0.05, 0.1], seed=0)   # (N, 2, H, W)
    """

    def attribute(
        self,
        inputs: InputsLike,
        target: TargetLike = None,
        *,
        areas: float | Sequence[float] = (0.1,),
        variant: str = "preserve",
        perturbation: PerturbationLike = "blur",
        max_iter: int = 800,
        num_levels: int = 8,
        step: int = 7,
        sigma: float = 21,
        jitter: bool = True,
        reward: str | Reward = "simple",
        max_blur: float = 20,
        regul_weight: float = 300.0,
        regul_growth: float = 1.0035,
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        pooling: str = "softmax",
        return_history: bool = False,
        progress: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: BatchSize = None,
        additional_forward_args: Any = None,
    ) -> Any:
        """Extremal masks of ``target`` for images ``inputs`` ``(N, C, H, W)``, one per area (see the class).

        ``reward`` is ``"simple"`` (the target's score, default; any target
        kind), ``"contrastive"`` (its margin over the best other class) or a
        callable ``(output, classes) -> (R,)`` (both need class-index targets).
        ``perturbation`` is ``"blur"``, ``"fade"``, a baseline tensor or a
        callable (see :class:`attrib.perturb.Perturbation`).
        """
        batch = as_input_batch(inputs)
        if len(batch.tensors) != 1 or batch.tensors[0].dim() != 4:
            raise ValueError("ExtremalPerturbation needs one tensor of images (N, C, H, W), got "
                             + ", ".join(str(tuple(t.shape)) for t in batch.tensors))
        x = batch.tensors[0]
        n, height, width, device = x.shape[0], x.shape[2], x.shape[3], x.device
        area_list = _areas(areas)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
        _positive_int(max_iter, "max_iter")
        for name, value in (("regul_weight", regul_weight), ("learning_rate", learning_rate)):
            _non_negative(value, name)
        _non_negative(regul_growth, "regul_growth")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if not (reward in REWARDS or (callable(reward) and not isinstance(reward, str))):
            raise ValueError(f"reward must be one of {', '.join(REWARDS)} or a callable (output, classes) -> (R,), "
                             f"got {reward!r}")
        batch_size = check_batch_size(batch_size)
        args = as_forward_args(additional_forward_args, n)
        rng = make_generator(seed, generator, device) if jitter else None
        pyramid = Perturbation(x, num_levels=num_levels, max_blur=max_blur, kind=perturbation).to(device)
        masks = MaskGenerator((height, width), step, sigma, pooling=pooling, device=device).to(x.dtype)

        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            per_image = _targets_per_image(resolved)
            game = _Game(
                method=self, pyramid=pyramid, masks=masks, args=args, variant=variant, n_areas=len(area_list),
                per_image=per_image, score=_row_scorer(self, resolved, reward, len(area_list)),
                zeros=area_thresholds(area_list, self._area_pixels(masks)), max_iter=max_iter,
            )
            optimizer = torch.optim.SGD([game.params], lr=learning_rate, momentum=momentum, dampening=momentum)
            weight = float(regul_weight)
            for t in tqdm(range(max_iter), disable=True if not progress else None, desc="extremal perturbation"):
                flips = torch.rand(game.n_masks, generator=rng, device=device) < 0.5 if rng is not None else None
                optimizer.zero_grad(set_to_none=True)
                self._backward_blocks(game.n_rows, game.energy(t, weight, flips), batch_size)
                optimizer.step()
                with torch.no_grad():
                    game.params.clamp_(0, 1)
                weight *= regul_growth

        lead = (n, per_image) if resolved.indices is not None and resolved.indices.dim() == 2 else (n,)
        result = game.final.view(*lead, len(area_list), height, width)
        if return_history:
            return result, game.history.view(*lead, len(area_list), 2, max_iter)
        return result

    # Hooks ----------------------------------------------------------------------------

    def _area_pixels(self, masks: MaskGenerator) -> int:
        """The number of pixels the area is a fraction of: the image's ``H * W``."""
        return masks.shape[0] * masks.shape[1]

    def _area_penalty(
        self, masks: MaskGenerator, params: Tensor, region: Tensor, mask: Tensor, zeros: Tensor, margin: Tensor
    ) -> Tensor:
        """The ``(R,)`` area penalties of masks ``params``: ``mask`` on the image, ``region`` with its margins.

        The image's values are sorted and the margins' (flat indices
        ``margin`` of ``region``) pulled to 0 (see
        :func:`attrib.perturb.rewards.area_penalty`).
        """
        return area_penalty(mask.flatten(1), zeros, region.flatten(1).index_select(1, margin))


def _balanced_pads(masks: MaskGenerator) -> tuple[int, int, int, int]:
    """Margins ``(top, bottom, left, right)`` that reach ``margin`` beyond the first and the last parameter alike.

    Parameter ``j`` sits at image pixel ``c_j = margin - round(margin) + step * j``; the region runs from
    ``c_0 - margin`` to ``c_last + margin`` (and at least over the image), so the parameters at both ends
    reach as many margin pixels.
    """
    crop = round(masks.margin)
    after = [
        min(crop, max(0, round(masks.step * (n - 1) + 2 * masks.margin - crop) - (z - 1)))
        for n, z in zip(masks.shape_in, masks.shape)
    ]
    return crop, after[0], crop, after[1]


def _margin_index(shape: tuple[int, int], pads: tuple[int, int, int, int], device: torch.device) -> Tensor:
    """Flat indices of the margin pixels of an image of ``shape`` grown by ``pads`` (top, bottom, left, right)."""
    top, bottom, left, right = pads
    rows = torch.arange(shape[0] + top + bottom, device=device).view(-1, 1)
    cols = torch.arange(shape[1] + left + right, device=device).view(1, -1)
    off = (rows < top) | (rows >= top + shape[0]) | (cols < left) | (cols >= left + shape[1])
    return off.flatten().nonzero().squeeze(1)


class _Game:
    """One call's masks and the energy of any block of its rows.

    Mask ``m = (image * K + k) * A + area`` has parameters ``params[m]``; it
    makes one copy per entry of the variant (``preserve``/``delete``: one,
    ``dual``: two), and copy row ``r = copy * M + m`` evaluates it. The rows
    of copy 0 come first, so each block holds them as a prefix: they carry
    their mask's area term, once.
    """

    def __init__(
        self, *, method: ExtremalPerturbation, pyramid: Perturbation, masks: MaskGenerator, args: ForwardArgs,
        variant: str, n_areas: int, per_image: int, score: RowScorer, zeros: list[int], max_iter: int,
    ) -> None:
        x = pyramid.input
        n, device = x.shape[0], x.device
        self.method, self.pyramid, self.masks, self.args, self.score = method, pyramid, masks, args, score
        copies = VARIANTS[variant]
        self.complement = torch.tensor([c for c, _ in copies], device=device)
        self.sign = torch.tensor([s for _, s in copies], device=device, dtype=x.dtype)
        self.n_masks = n * per_image * n_areas
        self.n_rows = len(copies) * self.n_masks
        mask_id = torch.arange(self.n_masks, device=device)
        self.image_of = torch.div(mask_id, per_image * n_areas, rounding_mode="floor")
        self.zeros_of = torch.tensor(zeros, device=device)[mask_id % n_areas]
        self.params = torch.ones(self.n_masks, 1, *masks.shape_in, device=device, dtype=x.dtype, requires_grad=True)
        self.history = torch.zeros(self.n_masks, 2, max_iter, device=device, dtype=x.dtype)
        self.final = torch.zeros(self.n_masks, *x.shape[2:], device=device, dtype=x.dtype)
        self.max_iter = max_iter
        self.pads = _balanced_pads(masks)
        top, bottom, left, right = self.pads
        self.inside = (slice(None), slice(None), slice(top, top + masks.shape[0]), slice(left, left + masks.shape[1]))
        self.margin = _margin_index(masks.shape, self.pads, device)

    def energy(self, t: int, weight: float, flips: Tensor | None) -> Callable[[int, int], Tensor]:
        """The energy of rows ``start..stop-1`` at step ``t`` (recorded in the history; masks kept at the last)."""

        def block(start: int, stop: int) -> Tensor:
            rows = torch.arange(start, stop, device=self.params.device)
            m, copy = rows % self.n_masks, torch.div(rows, self.n_masks, rounding_mode="floor")
            params = self.params.index_select(0, m)
            region = self.masks.generate_region(params, self.pads)
            mask = region[self.inside]
            blend = torch.where(self.complement[copy].view(-1, 1, 1, 1), 1 - mask, mask)
            images = self.pyramid.apply_rows(blend, self.image_of[m])
            if flips is not None:
                images = torch.where(flips[m].view(-1, 1, 1, 1), images.flip(3), images)
            rewards = self.sign[copy] * self.score(images, self.args.rows(self.image_of[m]), m)
            first = max(0, min(stop, self.n_masks) - start)
            penalty = self.method._area_penalty(
                self.masks, params[:first], region[:first], mask[:first], self.zeros_of[m[:first]], self.margin
            )
            regul = -weight * penalty
            with torch.no_grad():
                self.history[:, 0, t].index_add_(0, m, rewards.detach())
                self.history[:, 1, t].index_add_(0, m[:first], regul.detach())
                if t == self.max_iter - 1:
                    self.final[m[:first]] = mask[:first, 0].detach()
            return torch.cat([rewards[:first] + regul, rewards[first:]])

        return block


def _targets_per_image(target: Target) -> int:
    """``K`` for an ``(N, K)`` index target, else 1."""
    if target.kind == "index" and target.indices is not None and target.indices.dim() == 2:
        return int(target.indices.shape[1])
    return 1


def _row_scorer(method: PerturbationAttribution, target: Target, reward: str | Reward, n_areas: int) -> RowScorer:
    """``(images, args, mask_rows) -> (R,)``: the reward of each perturbed row for its mask's target."""
    if reward == "simple" and target.kind != "index":

        def by_target(images: Tensor, args: tuple[Any, ...], mask_rows: Tensor) -> Tensor:
            scores = method._copy_scores((images,), args, target, mask_rows)
            if scores.dim() != 1:
                raise ValueError(
                    f"ExtremalPerturbation needs one score per row from the target, got shape {tuple(scores.shape)}"
                )
            return scores

        return by_target
    if target.kind != "index" or target.indices is None:
        raise ValueError(f"reward={reward!r} needs class-index targets (None, an int, one per example or (N, K))")
    fn = REWARDS[reward] if isinstance(reward, str) else reward
    classes = target.indices.reshape(-1)  # the class of mask group (image, k), image-major

    def by_class(images: Tensor, args: tuple[Any, ...], mask_rows: Tensor) -> Tensor:
        group = torch.div(mask_rows, n_areas, rounding_mode="floor")
        output = run_model(method.model, (images,), args)
        if not target._checked and isinstance(output, Tensor):  # once per call: the target's class-range check
            target._check_range(class_scores(output).shape[1])
        scores = fn(output, classes[group.to(classes.device)])
        if not isinstance(scores, Tensor) or scores.shape != (images.shape[0],):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"reward must return one score per row, shape ({images.shape[0]},), got {got}")
        return scores

    return by_class


def _areas(areas: object) -> list[float]:
    values: list[object] = [areas] if isinstance(areas, numbers.Real) else list(areas) if isinstance(
        areas, (Sequence, Tensor)) else []
    good = [float(a) for a in values if isinstance(a, (int, float, Tensor)) and not isinstance(a, bool)]
    if not values or len(good) != len(values) or not all(0 < a < 1 for a in good):
        raise ValueError(f"areas must be a number or a non-empty list of numbers in (0, 1), got {areas!r}")
    return good


def _positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _non_negative(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
