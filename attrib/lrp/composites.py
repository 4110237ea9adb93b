r"""Composites: which LRP rule each linear and convolution module of a model gets.

A :class:`Composite` maps module names and module types to
:class:`~attrib.lrp.rules.LayerRule`\ s, with a special case for the first
layer. The named composites are zennit's:

=========================  ==================  ==========================  ===============
composite                  first layer         other convolutions          linear layers
=========================  ==================  ==========================  ===============
:class:`EpsilonPlus`       --                  :class:`ZPlus`              :class:`Epsilon`
:class:`EpsilonPlusFlat`   :class:`Flat`       :class:`ZPlus`              :class:`Epsilon`
:class:`EpsilonAlpha2Beta1`  --                :class:`AlphaBeta` (2, 1)   :class:`Epsilon`
:class:`EpsilonGammaBox`   :class:`ZBox`       :class:`Gamma`              :class:`Epsilon`
=========================  ==================  ==========================  ===============

(EpsilonPlusFlat's first layer is the first linear or convolution module,
EpsilonGammaBox's the first convolution.) The other operations get their
rule by kind (:mod:`attrib.core.lrp_nodes`): activations and BatchNorm pass
relevance on, sums and average pooling share it in proportion to their
terms, with the composite's ``stabilizer``.

Example:
    >>> lrp = attrib.LRP(model, composite=attrib.lrp.EpsilonGammaBox(low=-2.2, high=2.7))
    >>> mine = attrib.lrp.Composite(
    ...     [(nn.Conv2d, attrib.lrp.Gamma(0.25)), (nn.Linear, attrib.lrp.Epsilon(0.25))],
    ...     name_map={"classifier.6": attrib.lrp.Epsilon(1e-9)},
    ...     first_map=[(nn.Conv2d, attrib.lrp.Flat())],
    ... )
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ..core.lrp_nodes import CONVOLUTIONS, LINEARS, LayerRule, check_eps
from .rules import AlphaBeta, Epsilon, Flat, Gamma, ZBox, ZPlus

ModuleTypes = type[nn.Module] | tuple[type[nn.Module], ...]
RuleMap = Sequence[tuple[ModuleTypes, LayerRule]]
"""``[(module types, rule), ...]``: a module gets the rule of the first entry whose types it is an instance of."""


class Composite:
    r"""Assigns an LRP rule to every linear and convolution module of a model.

    For each ``nn.Linear`` / ``nn.Conv*`` / ``nn.ConvTranspose*`` module, in
    the order of ``model.named_modules()``, the rule is the first of:

    1. ``name_map[name]``;
    2. for the *first layer* (the first module that is an instance of a
       type in ``first_map``): the rule of the first matching ``first_map`` entry;
    3. the rule of the first matching ``layer_map`` entry.

    A module left without a rule makes :class:`attrib.LRP` raise
    :class:`attrib.UnsupportedModelError` if it lies on the explained path.
    ``(nn.Module, rule)`` matches every layer.

    Args:
        layer_map: ``[(types, rule), ...]``.
        name_map: module name (as in ``model.named_modules()``) -> rule.
        first_map: ``[(types, rule), ...]`` for the first layer.
        stabilizer: the :math:`\epsilon` of the rule for sums and average pooling.
    """

    def __init__(
        self,
        layer_map: RuleMap = (),
        *,
        name_map: Mapping[str, LayerRule] | None = None,
        first_map: RuleMap = (),
        stabilizer: float = 1e-6,
    ) -> None:
        self.layer_map = _checked_map(layer_map, "layer_map")
        self.first_map = _checked_map(first_map, "first_map")
        names = dict(name_map or {})
        for name, rule in names.items():
            if not isinstance(name, str):
                raise TypeError(f"name_map keys must be module names (str), got {name!r}")
            if not isinstance(rule, LayerRule):
                raise TypeError(f"name_map[{name!r}] must be an LRP rule (attrib.lrp.Epsilon, ...), got {rule!r}")
        self.name_map = names
        self.stabilizer = check_eps(stabilizer, "stabilizer")

    def assign(self, model: nn.Module) -> dict[nn.Module, LayerRule]:
        """The rule of each linear and convolution module of ``model`` that the composite gives one.

        Raises:
            ValueError: ``name_map`` names no linear or convolution module of ``model``.
        """
        layers = [(name, m) for name, m in model.named_modules() if isinstance(m, CONVOLUTIONS + LINEARS)]
        known = {name for name, _ in layers}
        missing = sorted(set(self.name_map) - known)
        if missing:
            raise ValueError(
                f"name_map names {missing}, which are not linear or convolution modules of the model "
                f"(those are: {sorted(known)[:8]}{' ...' if len(known) > 8 else ''})"
            )
        first = next((m for _, m in layers if _match(self.first_map, m) is not None), None)
        out: dict[nn.Module, LayerRule] = {}
        for name, module in layers:
            rule = self.name_map.get(name)
            if rule is None and module is first:
                rule = _match(self.first_map, module)
            if rule is None:
                rule = _match(self.layer_map, module)
            if rule is not None and module not in out:
                out[module] = rule
        return out

    def __repr__(self) -> str:
        parts = [f"layer_map={list(self.layer_map)!r}"]
        if self.first_map:
            parts.append(f"first_map={list(self.first_map)!r}")
        if self.name_map:
            parts.append(f"name_map={self.name_map!r}")
        return f"{type(self).__name__}({', '.join(parts)}, stabilizer={self.stabilizer!r})"


class EpsilonPlus(Composite):
    r""":class:`ZPlus` for convolutions, :class:`Epsilon` for linear layers (zennit's ``EpsilonPlus``).

    ``layer_map`` entries come before the composite's own; ``name_map`` as in :class:`Composite`.
    """

    def __init__(
        self,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        *,
        layer_map: RuleMap = (),
        name_map: Mapping[str, LayerRule] | None = None,
        zero_bias: bool = False,
    ) -> None:
        rules = _conv_then_linear(ZPlus(stabilizer, zero_bias=zero_bias), Epsilon(epsilon, zero_bias=zero_bias))
        super().__init__([*layer_map, *rules], name_map=name_map, stabilizer=stabilizer)


class EpsilonPlusFlat(Composite):
    r""":class:`Flat` for the first layer, then as :class:`EpsilonPlus` (zennit's ``EpsilonPlusFlat``).

    The first layer is the first linear or convolution module.
    """

    def __init__(
        self,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        *,
        layer_map: RuleMap = (),
        name_map: Mapping[str, LayerRule] | None = None,
        zero_bias: bool = False,
    ) -> None:
        rules = _conv_then_linear(ZPlus(stabilizer, zero_bias=zero_bias), Epsilon(epsilon, zero_bias=zero_bias))
        super().__init__(
            [*layer_map, *rules],
            name_map=name_map,
            first_map=[(CONVOLUTIONS + LINEARS, Flat(stabilizer))],
            stabilizer=stabilizer,
        )


class EpsilonAlpha2Beta1(Composite):
    r""":class:`AlphaBeta` (2, 1) for convolutions, :class:`Epsilon` for linear layers.

    zennit's ``EpsilonAlpha2Beta1``.
    """

    def __init__(
        self,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        *,
        layer_map: RuleMap = (),
        name_map: Mapping[str, LayerRule] | None = None,
        zero_bias: bool = False,
    ) -> None:
        rules = _conv_then_linear(
            AlphaBeta(2.0, 1.0, stabilizer, zero_bias=zero_bias), Epsilon(epsilon, zero_bias=zero_bias)
        )
        super().__init__([*layer_map, *rules], name_map=name_map, stabilizer=stabilizer)


class EpsilonGammaBox(Composite):
    r""":class:`ZBox` for the first convolution, :class:`Gamma` for the others, :class:`Epsilon` for linear layers.

    zennit's ``EpsilonGammaBox``. ``low`` and ``high`` bound the input values
    (floats, or tensors broadcasting to one example, e.g. ``(1, 3, 1, 1)``).
    """

    def __init__(
        self,
        low: float | Tensor,
        high: float | Tensor,
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        *,
        layer_map: RuleMap = (),
        name_map: Mapping[str, LayerRule] | None = None,
        zero_bias: bool = False,
    ) -> None:
        rules = _conv_then_linear(Gamma(gamma, stabilizer, zero_bias=zero_bias), Epsilon(epsilon, zero_bias=zero_bias))
        super().__init__(
            [*layer_map, *rules],
            name_map=name_map,
            first_map=[(CONVOLUTIONS, ZBox(low, high, stabilizer))],
            stabilizer=stabilizer,
        )


def _conv_then_linear(conv: LayerRule, linear: LayerRule) -> list[tuple[ModuleTypes, LayerRule]]:
    """The rule map every zennit composite shares: one rule for convolutions, another for linear layers."""
    return [(CONVOLUTIONS, conv), (LINEARS, linear)]


def _match(rule_map: RuleMap, module: nn.Module) -> LayerRule | None:
    return next((rule for types, rule in rule_map if isinstance(module, types)), None)


def _checked_map(rule_map: RuleMap, name: str) -> tuple[tuple[ModuleTypes, LayerRule], ...]:
    entries = tuple(rule_map)
    for i, entry in enumerate(entries):
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise TypeError(f"{name}[{i}] must be a (module types, rule) pair, got {entry!r}")
        types, rule = entry
        classes = types if isinstance(types, tuple) else (types,)
        if not classes or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
            raise TypeError(f"{name}[{i}] must start with an nn.Module subclass or a tuple of them, got {types!r}")
        if not isinstance(rule, LayerRule):
            raise TypeError(f"{name}[{i}] must end with an LRP rule (attrib.lrp.Epsilon, ...), got {rule!r}")
    return entries
