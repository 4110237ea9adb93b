r"""The LRP rules of the literature for linear and convolution layers.

Each rule says how a layer :math:`z = f(x; W, b)` (a linear layer
:math:`z_j = \sum_i x_i w_{ji} + b_j`, or a convolution) passes the relevance
:math:`R` of its outputs to its inputs. With :math:`f^{*}(W, g)` the
layer's transpose, :math:`x^{\pm}, W^{\pm}, b^{\pm}` the positive and
negative parts, and :math:`\mathrm{stab}(z) = z + \epsilon\,\mathrm{sign}(z)`
(:math:`\mathrm{sign}(0) = 1`):

==================  ==========================================================================================
rule                input relevance :math:`R_x`
==================  ==========================================================================================
:class:`Epsilon`    :math:`x \odot f^{*}(W, R / \mathrm{stab}(z))`, :math:`z = f(x; W, b)`
:class:`ZPlus`      :math:`x^+ \odot f^{*}(W^+, s) + x^- \odot f^{*}(W^-, s)`,
                    :math:`s = R / \mathrm{stab}(f(x^+; W^+, b^+) + f(x^-; W^-, 0))`
:class:`AlphaBeta`  :math:`\alpha\,[x^+ f^{*}(W^+, s^+) + x^- f^{*}(W^-, s^+)]
                    - \beta\,[x^+ f^{*}(W^-, s^-) + x^- f^{*}(W^+, s^-)]`, with
                    :math:`s^+ = R / \mathrm{stab}(f(x^+; W^+, b^+) + f(x^-; W^-, 0))`,
                    :math:`s^- = R / \mathrm{stab}(f(x^+; W^-, b^-) + f(x^-; W^+, 0))`
:class:`Gamma`      the same sums with :math:`W + \gamma W^{\pm}` and :math:`b + \gamma b^{\pm}` in place of
                    :math:`W^{\pm}, b^{\pm}`, the positive part taking the units with :math:`z > 0` and the
                    negative part those with :math:`z < 0` (the generalised gamma rule)
:class:`Flat`       :math:`f^{*}(1, R / \mathrm{stab}(f(1; 1, 0)))`: spread evenly over the receptive field
:class:`WSquare`    :math:`f^{*}(W^2, R / \mathrm{stab}(f(1; W^2, 0)))`
:class:`ZBox`       :math:`x \odot f^{*}(W, s) - l \odot f^{*}(W^+, s) - h \odot f^{*}(W^-, s)`,
                    :math:`s = R / \mathrm{stab}(f(x; W, 0) - f(l; W^+, 0) - f(h; W^-, 0))`
==================  ==========================================================================================

They are zennit's definitions (Epsilon, ZPlus, AlphaBeta, Gamma, Flat, ZBox
agree with zennit 0.5 to rounding; WSquare is the paper's rule, without the
:math:`b^2` zennit adds to its denominator). Rules only read the layer's
parameters; BatchNorm after a layer is folded into :math:`W, b` for the call.
``zero_bias=True`` computes as if the layer had no bias.

Example:
    >>> composite = attrib.lrp.Composite([(nn.Conv2d, attrib.lrp.Gamma(0.5)), (nn.Linear, attrib.lrp.Epsilon(0.01))])
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.affine import Affine
from ..core.lrp_nodes import LayerRule, Memo, check_eps, stabilize

__all__ = ["AlphaBeta", "Epsilon", "Flat", "Gamma", "LayerRule", "WSquare", "ZBox", "ZPlus"]


def _positive(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


class Epsilon(LayerRule):
    r"""LRP-:math:`\epsilon` (Bach et al., 2015): :math:`R_x = x \odot f^{*}(W, R / \mathrm{stab}(f(x; W, b)))`.

    ``epsilon=0`` is LRP-0 (the denominator of a unit with :math:`z = 0` is
    then 0 and its relevance infinite or NaN). The bias absorbs
    :math:`R_j\, b_j / z_j`; with zero biases the layer conserves relevance
    up to :math:`\epsilon`.
    """

    def __init__(self, epsilon: float = 1e-6, *, zero_bias: bool = False) -> None:
        super().__init__(zero_bias=zero_bias)
        self.epsilon = check_eps(epsilon, "epsilon")

    def relevance(self, layer: Affine, x: Tensor, r: Tensor, memo: Memo) -> Tensor:
        w = layer.weight
        z = memo("z", lambda: stabilize(layer.forward(x, w, self.bias(layer)), self.epsilon))
        return x * layer.transpose(r / z, w, x)


class AlphaBeta(LayerRule):
    r"""LRP-:math:`\alpha\beta` (Bach et al., 2015): positive and negative contributions weighted apart.

    See the table in :mod:`attrib.lrp.rules`. ``alpha - beta`` must be 1
    (so that the layer conserves relevance); ``(2, 1)`` and ``(1, 0)``
    (:class:`ZPlus`) are the common choices.
    """

    def __init__(
        self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, *, zero_bias: bool = False
    ) -> None:
        super().__init__(zero_bias=zero_bias)
        alpha, beta = float(alpha), float(beta)
        if not (alpha >= 0 and beta >= 0) or alpha - beta != 1:
            raise ValueError(f"alpha and beta must be non-negative with alpha - beta = 1, got {alpha} and {beta}")
        self.alpha, self.beta = alpha, beta
        self.stabilizer = check_eps(stabilizer, "stabilizer")

    def relevance(self, layer: Affine, x: Tensor, r: Tensor, memo: Memo) -> Tensor:
        w, b = layer.weight, self.bias(layer)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        # After a ReLU the terms of x- are 0: half the work (the result is the same).
        xp, xn = (x, None) if layer.nonnegative_input else (x.clamp(min=0), x.clamp(max=0))

        def contribution(x_part: Tensor | None, weight: Tensor, bias: Tensor | None = None) -> Tensor | int:
            return 0 if x_part is None else layer.forward(x_part, weight, bias)

        def carried(s: Tensor, w_pos: Tensor, w_neg: Tensor) -> Tensor:
            out = xp * layer.transpose(s, w_pos, x)
            return out if xn is None else out + xn * layer.transpose(s, w_neg, x)

        def scale(weight: float, sign: int) -> Tensor:
            if sign > 0:
                z = layer.forward(xp, wp, _positive(b)) + contribution(xn, wn)
            else:
                z = layer.forward(xp, wn, _negative(b)) + contribution(xn, wp)
            return stabilize(z, self.stabilizer).reciprocal_().mul_(weight)

        out = carried(r * memo("1/z+", lambda: scale(self.alpha, 1)), wp, wn)
        if self.beta == 0:
            return out
        return out - carried(r * memo("1/z-", lambda: scale(self.beta, -1)), wn, wp)


class ZPlus(AlphaBeta):
    r"""LRP-:math:`z^+` (Montavon et al., 2017): :class:`AlphaBeta` with :math:`\alpha = 1, \beta = 0`.

    Negative inputs are allowed (they are paired with :math:`W^-`), as in zennit.
    """

    def __init__(self, stabilizer: float = 1e-6, *, zero_bias: bool = False) -> None:
        super().__init__(1.0, 0.0, stabilizer, zero_bias=zero_bias)

    def __repr__(self) -> str:
        return f"ZPlus(stabilizer={self.stabilizer!r}, zero_bias={self.zero_bias!r})"


class Gamma(LayerRule):
    r"""LRP-:math:`\gamma` (Montavon et al., 2019), generalised to signed inputs and outputs (Andéol et al., 2021).

    With :math:`W_{\pm} = W + \gamma W^{\pm}` and :math:`b_{\pm} = b + \gamma b^{\pm}`:

    .. math::
        R_x = x^+ \odot [f^{*}(W_+, s^+) + f^{*}(W_-, s^-)] + x^- \odot [f^{*}(W_-, s^+) + f^{*}(W_+, s^-)]

    where :math:`s^+ = [z > 0]\, R / \mathrm{stab}(f(x^+; W_+, b_+) + f(x^-; W_-, 0))`,
    :math:`s^- = [z < 0]\, R / \mathrm{stab}(f(x^+; W_-, b_-) + f(x^-; W_+, 0))`
    and :math:`z = f(x; W, b)`. For non-negative inputs and outputs this is
    :math:`R_x = x \odot f^{*}(W_+, R / \mathrm{stab}(f(x; W_+, b_+)))`; large
    :math:`\gamma` tends to :class:`ZPlus`.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, *, zero_bias: bool = False) -> None:
        super().__init__(zero_bias=zero_bias)
        self.gamma = check_eps(gamma, "gamma")
        self.stabilizer = check_eps(stabilizer, "stabilizer")

    def relevance(self, layer: Affine, x: Tensor, r: Tensor, memo: Memo) -> Tensor:
        w, b, g = layer.weight, self.bias(layer), self.gamma
        wp, wn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        # After a ReLU the terms of x- are 0: half the work (the result is the same).
        xp, xn = (x, None) if layer.nonnegative_input else (x.clamp(min=0), x.clamp(max=0))

        def scales() -> Tensor:
            """``[z > 0] / stab(z_+)`` and ``[z < 0] / stab(z_-)`` per output unit, stacked."""
            z = layer.forward(x, w, b)
            out = []
            for sign, w_main, w_other in ((1, wp, wn), (-1, wn, wp)):
                bias = None if b is None else b + g * (b.clamp(min=0) if sign > 0 else b.clamp(max=0))
                part = layer.forward(xp, w_main, bias)
                if xn is not None:
                    part = part + layer.forward(xn, w_other)
                mask = z > 0 if sign > 0 else z < 0
                out.append(mask.to(z.dtype) / stabilize(part, self.stabilizer))
            return torch.stack(out)

        sp, sn = r * memo("s", scales)
        out = xp * (layer.transpose(sp, wp, x) + layer.transpose(sn, wn, x))
        if xn is None:
            return out
        return out + xn * (layer.transpose(sp, wn, x) + layer.transpose(sn, wp, x))


class Flat(LayerRule):
    r"""LRP-flat (Lapuschkin et al., 2019): relevance spread evenly over each unit's receptive field.

    .. math:: R_x = f^{*}(1, R / \mathrm{stab}(f(1; 1, 0)))

    (every weight 1, no bias, every input 1: a unit's relevance is shared
    equally among the inputs it reads). Usually the first layer's rule.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(zero_bias=True)
        self.stabilizer = check_eps(stabilizer, "stabilizer")

    def relevance(self, layer: Affine, x: Tensor, r: Tensor, memo: Memo) -> Tensor:
        ones = layer.weight.new_ones(layer.weight.shape)
        z = memo("z", lambda: stabilize(layer.forward(x.new_ones((1, *x.shape[1:])), ones), self.stabilizer))
        return layer.transpose(r / z, ones, x)

    def __repr__(self) -> str:
        return f"Flat(stabilizer={self.stabilizer!r})"


class WSquare(LayerRule):
    r"""LRP-:math:`w^2` (Montavon et al., 2017): :math:`R_x = f^{*}(W^2, R / \mathrm{stab}(f(1; W^2, 0)))`.

    Relevance shared in proportion to the squared weights, whatever the
    input; for a first layer on unbounded inputs. (zennit's ``WSquare`` also
    adds :math:`b^2` to the denominator; its ``zero_params=["bias"]`` form is this rule.)
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(zero_bias=True)
        self.stabilizer = check_eps(stabilizer, "stabilizer")

    def relevance(self, layer: Affine, x: Tensor, r: Tensor, memo: Memo) -> Tensor:
        w2 = layer.weight.square()
        z = memo("z", lambda: stabilize(layer.forward(x.new_ones((1, *x.shape[1:])), w2), self.stabilizer))
        return layer.transpose(r / z, w2, x)

    def __repr__(self) -> str:
        return f"WSquare(stabilizer={self.stabilizer!r})"


class ZBox(LayerRule):
    r"""LRP-:math:`z^{\mathcal{B}}` (Montavon et al., 2017): for a first layer whose inputs lie in :math:`[l, h]`.

    .. math::
        R_x = x \odot f^{*}(W, s) - l \odot f^{*}(W^+, s) - h \odot f^{*}(W^-, s), \quad
        s = R / \mathrm{stab}(f(x; W, 0) - f(l; W^+, 0) - f(h; W^-, 0))

    Args:
        low, high: the lowest and highest input values: floats, or tensors
            broadcasting to one example's shape (e.g. ``(1, 3, 1, 1)`` per
            channel for normalised images).
        stabilizer: the :math:`\epsilon` of :math:`\mathrm{stab}`.
    """

    def __init__(self, low: float | Tensor, high: float | Tensor, stabilizer: float = 1e-6) -> None:
        super().__init__(zero_bias=True)
        self.low = _bound(low, "low")
        self.high = _bound(high, "high")
        self.stabilizer = check_eps(stabilizer, "stabilizer")

    def relevance(self, layer: Affine, x: Tensor, r: Tensor, memo: Memo) -> Tensor:
        low, high = _expanded(self.low, x, "low"), _expanded(self.high, x, "high")
        w = layer.weight
        wp, wn = w.clamp(min=0), w.clamp(max=0)

        def denominator() -> Tensor:
            z = layer.forward(x, w) - layer.forward(low, wp) - layer.forward(high, wn)
            return stabilize(z, self.stabilizer)

        s = r / memo("z", denominator)
        return x * layer.transpose(s, w, x) - low * layer.transpose(s, wp, x) - high * layer.transpose(s, wn, x)

    def __repr__(self) -> str:
        return f"ZBox(low={self.low!r}, high={self.high!r}, stabilizer={self.stabilizer!r})"


def _bound(value: float | Tensor, name: str) -> float | Tensor:
    if isinstance(value, Tensor):
        if not value.is_floating_point() or not bool(value.isfinite().all()):
            raise ValueError(f"ZBox {name} must be a finite float or a finite floating-point Tensor")
        return value.detach()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise ValueError(f"ZBox {name} must be a finite float or a finite floating-point Tensor, got {value!r}")
    return float(value)


def _expanded(bound: float | Tensor, x: Tensor, name: str) -> Tensor:
    """``bound`` as a tensor shaped as ``x``; a ValueError if it does not fit one example's shape."""
    t = bound.to(x) if isinstance(bound, Tensor) else x.new_tensor(bound)
    example = (1, *x.shape[1:])
    if t.dim() > x.dim() or (t.dim() == x.dim() and t.shape[0] != 1):
        raise ValueError(
            f"ZBox {name} must broadcast to one example's shape {tuple(x.shape[1:])} of the layer's input "
            f"(e.g. (1, C, 1, 1)), got shape {tuple(t.shape)}"
        )
    padded = (1,) * (x.dim() - t.dim()) + tuple(t.shape)
    if any(have not in (1, want) for have, want in zip(padded, example)):
        raise ValueError(
            f"ZBox {name} of shape {tuple(t.shape)} does not broadcast to the layer's input {tuple(x.shape[1:])}"
        )
    return t.expand_as(x)
