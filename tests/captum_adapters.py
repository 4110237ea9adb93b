"""Thin adapters: Captum's constructors and ``attribute(...)`` arguments mapped onto attrib's keyword API.

``ADAPTERS[name](model, *init_args, **init_kwargs)`` returns a callable
``attribute(inputs, **captum_kwargs)`` that runs the attrib method Captum's
class ``name`` corresponds to. The translation is the whole difference
between the two APIs where their definitions agree:

* Captum's positional ``baselines``/``target`` order becomes attrib's keywords;
* ``perturbations_per_eval`` (perturbed copies per forward pass, each of the
  ``N`` examples) becomes ``batch_size = perturbations_per_eval * N`` rows;
  ``internal_batch_size`` (rows) is ``batch_size``;
* ``stdevs``/``nt_samples``/``nt_type`` become ``stdev``/``n_samples``/``kind``;
* a 0-d tensor target is an int; a tuple target (an index into a
  multi-dimensional output) is a callable target; ``target=None`` on an
  ``(N, K)`` output of a perturbation method means "every output" in Captum,
  which is attrib's ``(N, K)`` target ``[[0, ..., K-1]] * N``;
* ``NeuronGradient(model, layer).attribute(x, neuron_selector)`` is
  ``Saliency(model).attribute(x, target=Neuron(layer, selector), abs=False)``.

An argument with no attrib counterpart raises ``NotImplementedError`` so a
case can never pass by silently dropping it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import attrib
from attrib.core.forward import run_model
from attrib.core.inputs import as_forward_args, as_input_batch

AttributeFn = Callable[..., Any]
Adapter = Callable[..., AttributeFn]

_DROPPED = ("show_progress",)  # presentation only


def _n(inputs: Any) -> int:
    return int((inputs[0] if isinstance(inputs, tuple) else inputs).shape[0])


def target_of(target: Any) -> Any:
    """Captum's ``target`` as attrib's (see the module docstring; ``None`` unchanged)."""
    if isinstance(target, Tensor) and target.dim() == 0:
        return int(target)
    if isinstance(target, tuple):
        index = target
        return lambda out: out[(slice(None), *index)]
    return target


def baseline_of(baselines: Any, inputs: Any = None) -> Any:
    """Captum's ``baselines``: a callable is called (with the inputs if it takes any); a bool is a 0-d tensor."""
    if callable(baselines) and not isinstance(baselines, Tensor):
        import inspect

        baselines = baselines(inputs) if inspect.signature(baselines).parameters else baselines()
    if isinstance(baselines, bool):
        return torch.tensor(baselines)
    if isinstance(baselines, tuple):
        return tuple(torch.tensor(b) if isinstance(b, bool) else b for b in baselines)
    return baselines


def every_output(model: Any, inputs: Any, args: Any) -> Any:
    """Captum's ``target=None`` for a perturbation method: all ``K`` outputs of an ``(N, K)`` model, else None."""
    batch = as_input_batch(inputs, floating=False)
    with torch.no_grad():
        out = run_model(model, batch.tensors, as_forward_args(args, batch.n).rows(torch.arange(batch.n)))
    if out.dim() == 2 and out.shape[1] > 1:
        return torch.arange(out.shape[1]).expand(batch.n, -1)
    return None


def _common(kwargs: dict[str, Any], inputs: Any, **renames: str) -> dict[str, Any]:
    """Drop presentation options, rename Captum's options, refuse what attrib has no counterpart for."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _DROPPED:
            continue
        if key == "perturbations_per_eval":
            out["batch_size"] = int(value) * _n(inputs)
        elif key == "internal_batch_size":
            out["batch_size"] = value
        elif key == "target":
            out["target"] = target_of(value)
        elif key in renames:
            out[renames[key]] = value
        elif key in {
            "baselines",
            "additional_forward_args",
            "return_convergence_delta",
            "feature_mask",
            "n_samples",
            "n_steps",
            "method",
            "attribute_to_layer_input",
            "abs",
        }:
            out[key] = value
        else:
            raise NotImplementedError(f"no attrib counterpart for Captum's {key}={value!r}")
    return out


def _gradient(cls: type[attrib.Attribution], *, takes_multiply: bool = False, layer: bool = False) -> Adapter:
    """Gradient-based classes: same options, renamed."""

    def build(model: Any, *init: Any, multiply_by_inputs: bool = True) -> AttributeFn:
        extra = {"multiply_by_inputs": multiply_by_inputs} if takes_multiply else {}
        method = cls(model, *init, **extra) if layer else cls(model, **extra)  # type: ignore[call-arg]

        def attribute(inputs: Any, baselines: Any = None, target: Any = None, **kwargs: Any) -> Any:
            custom = kwargs.pop("custom_attribution_func", None)
            if custom is not None:
                shap = cls is attrib.DeepLiftShap
                return _custom_deeplift(model, custom, inputs, baseline_of(baselines, inputs), target, kwargs, shap)
            options = _common(kwargs, inputs)
            if baselines is not None:
                options["baselines"] = baseline_of(baselines, inputs)
            return method.attribute(inputs, target=target_of(target), **options)

        return attribute

    return build


def _custom_deeplift(
    model: Any, func: Callable[..., Any], inputs: Any, baselines: Any, target: Any, kwargs: Any, shap: bool
) -> Any:
    """Captum's ``custom_attribution_func(multipliers, inputs, baselines)`` on attrib's multipliers.

    For a reference set (DeepLiftShap) Captum applies the function to every
    (example, reference) pair and averages over the references; so does this,
    one reference at a time.
    """
    multipliers = attrib.DeepLift(model, multiply_by_inputs=False)
    xs = inputs if isinstance(inputs, tuple) else (inputs,)
    refs = baselines if isinstance(baselines, tuple) else (baselines,)
    b = refs[0].shape[0] if shap else 1
    options = _common(kwargs, inputs)
    maps = []
    for j in range(b):
        ref = tuple(r[j : j + 1].expand_as(x) if shap else r for r, x in zip(refs, xs))
        m = multipliers.attribute(xs, target=target_of(target), baselines=ref, **options)
        maps.append(func(m, xs, ref))
    mean = tuple(torch.stack(parts).mean(0) for parts in zip(*maps))
    return mean if isinstance(inputs, tuple) else mean[0]


def _plain(cls: type[attrib.Attribution]) -> Adapter:
    """Saliency and InputXGradient: no baselines."""

    def build(model: Any) -> AttributeFn:
        method = cls(model)

        def attribute(inputs: Any, target: Any = None, **kwargs: Any) -> Any:
            return method.attribute(inputs, target=target_of(target), **_common(kwargs, inputs))

        return attribute

    return build


def _perturbation(cls: type[attrib.Attribution], *, seeded: bool = False) -> Adapter:
    """Perturbation classes; ``target=None`` means every output, as in Captum."""

    def build(model: Any) -> AttributeFn:
        method = cls(model)

        def attribute(inputs: Any, baselines: Any = None, target: Any = None, seed: int = 0, **kwargs: Any) -> Any:
            options = _common(kwargs, inputs)
            if baselines is not None:
                options["baselines"] = baseline_of(baselines)
            if seeded:
                options["seed"] = seed
            if target is None:
                target = every_output(model, inputs, kwargs.get("additional_forward_args"))
            return method.attribute(inputs, target=target_of(target), **options)

        return attribute

    return build


def _feature_permutation(model: Any) -> AttributeFn:
    method = attrib.FeaturePermutation(model)

    def attribute(inputs: Any, target: Any = None, seed: int = 0, **kwargs: Any) -> Any:
        if target is None:
            target = every_output(model, inputs, kwargs.get("additional_forward_args"))
        return method.attribute(inputs, target=target_of(target), seed=seed, **_common(kwargs, inputs))

    return attribute


def _gradient_shap(model: Any, multiply_by_inputs: bool = True) -> AttributeFn:
    method = attrib.GradientShap(model, multiply_by_inputs=multiply_by_inputs)

    def attribute(inputs: Any, baselines: Any, target: Any = None, seed: int = 0, **kwargs: Any) -> Any:
        options = _common(kwargs, inputs, stdevs="stdev")
        return method.attribute(
            inputs, target=target_of(target), baselines=baseline_of(baselines, inputs), seed=seed, **options
        )

    return attribute


def _noise_tunnel(inner: AttributeFn | attrib.Attribution) -> AttributeFn:
    if not isinstance(inner, attrib.Attribution):
        raise NotImplementedError("wrap the attrib method itself in the NoiseTunnel adapter")
    method = attrib.NoiseTunnel(inner)

    def attribute(inputs: Any, target: Any = None, seed: int = 0, **kwargs: Any) -> Any:
        options = _common(kwargs, inputs, nt_samples="n_samples", stdevs="stdev", nt_type="kind")
        options.setdefault("stdev_mode", "absolute")  # Captum's stdevs are absolute
        return method.attribute(inputs, target=target_of(target), seed=seed, **options)

    return attribute


def _neuron_gradient(model: Any, layer: nn.Module) -> AttributeFn:
    method = attrib.Saliency(model)

    def attribute(inputs: Any, neuron_selector: Any, additional_forward_args: Any = None, **kwargs: Any) -> Any:
        if kwargs.pop("attribute_to_neuron_input", False):
            raise NotImplementedError("a Neuron target reads a layer's output; name the layer producing the input")
        target = attrib.Neuron(layer, neuron_selector)
        options = _common(kwargs, inputs)
        return method.attribute(
            inputs, target=target, abs=False, additional_forward_args=additional_forward_args, **options
        )

    return attribute


def _occlusion(model: Any) -> AttributeFn:
    method = attrib.Occlusion(model)

    def attribute(
        inputs: Any,
        sliding_window_shapes: Any,
        strides: Any = 1,
        baselines: Any = None,
        target: Any = None,
        **kwargs: Any,
    ) -> Any:
        options = _common(kwargs, inputs)
        if baselines is not None:
            options["baselines"] = baselines
        if target is None:
            target = every_output(model, inputs, kwargs.get("additional_forward_args"))
        return method.attribute(
            inputs, target=target_of(target), window=sliding_window_shapes, stride=strides, **options
        )

    return attribute


def _layer(module: str, name: str, *, takes_multiply: bool = False) -> Adapter:
    """Layer classes written elsewhere: imported when first used."""

    def build(model: Any, layer: Any, **init: Any) -> AttributeFn:
        import importlib

        cls = getattr(importlib.import_module(module), name)
        if isinstance(layer, (list, tuple)):
            raise NotImplementedError("attrib's layer methods take one layer; run one call per layer")
        extra = {"multiply_by_inputs": init.pop("multiply_by_inputs", True)} if takes_multiply else {}
        if init:
            raise NotImplementedError(f"no attrib counterpart for {sorted(init)}")
        method = cls(model, layer, **extra)

        def attribute(inputs: Any, baselines: Any = None, target: Any = None, **kwargs: Any) -> Any:
            options = _common(kwargs, inputs)
            if baselines is not None:
                options["baselines"] = baselines
            return method.attribute(inputs, target=target_of(target), **options)

        return attribute

    return build


ADAPTERS: dict[str, Adapter] = {
    "DeepLift": _gradient(attrib.DeepLift, takes_multiply=True),
    "DeepLiftShap": _gradient(attrib.DeepLiftShap, takes_multiply=True),
    "IntegratedGradients": _gradient(attrib.IntegratedGradients, takes_multiply=True),
    "Saliency": _plain(attrib.Saliency),
    "InputXGradient": _plain(attrib.InputXGradient),
    "GradientShap": _gradient_shap,
    "NoiseTunnel": _noise_tunnel,
    "FeatureAblation": _perturbation(attrib.FeatureAblation),
    "ShapleyValueSampling": _perturbation(attrib.ShapleyValueSampling, seeded=True),
    "FeaturePermutation": _feature_permutation,
    "Occlusion": _occlusion,
    "NeuronGradient": _neuron_gradient,
    "LayerIntegratedGradients": _layer(
        "attrib.methods.layer_integrated_gradients", "LayerIntegratedGradients", takes_multiply=True
    ),
    "LayerConductance": _layer("attrib.methods.layer_integrated_gradients", "LayerConductance"),
    "LayerActivation": _layer("attrib.methods.layer_activation", "LayerActivation"),
    "LayerGradientXActivation": _layer(
        "attrib.methods.layer_activation", "LayerGradientXActivation", takes_multiply=True
    ),
}
