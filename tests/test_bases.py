"""The LayerAttribution and PerturbationAttribution bases, through minimal subclasses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attrib
from attrib.core.batching import check_batch_size
from attrib.core.inputs import as_forward_args, as_input_batch
from attrib.targets import resolve_target

from .models import ResidualBNNet, SmoothNet, inputs_for


class ActivationTimesGradient(attrib.LayerAttribution):
    """A * dS/dA at the layer: the smallest real layer method."""

    def attribute(self, inputs, target=None, *, additional_forward_args=None):
        batch = as_input_batch(inputs)
        args = as_forward_args(additional_forward_args, batch.n)
        resolved = resolve_target(target, batch.n)
        with self._guard():
            example = torch.arange(batch.n)
            act, grad = self._layer_gradients(batch.tensors, args.args, resolved, example)
        return act.unsqueeze(1) * grad if grad.dim() == act.dim() + 1 else act * grad


class SingleFeatureOcclusion(attrib.PerturbationAttribution):
    """S(x) - S(x with feature i set to 0), feature by feature: the smallest real perturbation method."""

    def attribute(self, inputs, target=None, *, batch_size=None):
        batch = as_input_batch(inputs)
        args = as_forward_args(None, batch.n)
        batch_size = check_batch_size(batch_size)
        with self._guard():
            resolved = self._resolved_target(target, batch, args, batch_size)
            x = batch.tensors[0]
            features = x[0].numel()

            def perturb(example, copy):
                rows = x.index_select(0, example).flatten(1).clone()
                rows[torch.arange(len(copy)), copy] = 0.0
                return (rows.view(-1, *x.shape[1:]),)

            scores = self._perturbed_scores(batch.n, features, perturb, args, resolved, batch_size, x.device)
            clean = self._scores(batch.tensors, args, resolved, batch_size)
        return (clean.unsqueeze(0) - scores).T.reshape(x.shape)


def test_layer_gradients_match_a_manual_computation():
    model = ResidualBNNet(seed=0)
    x = inputs_for((3, 6, 6), 2, 0)
    ours = ActivationTimesGradient(model, "conv2").attribute(x, target=[1, 2])
    captured = {}
    handle = model.conv2.register_forward_hook(lambda m, a, out: captured.setdefault("a", out))
    model.eval()
    out = model(x)
    handle.remove()
    act = captured["a"]
    (grad,) = torch.autograd.grad(out[0, 1] + out[1, 2], act)
    torch.testing.assert_close(ours, act.detach() * grad)
    assert not model.conv2._forward_hooks


def test_layer_multi_target_and_module_form():
    model = ResidualBNNet(seed=1)
    x = inputs_for((3, 6, 6), 2, 1)
    by_module = ActivationTimesGradient(model, model.stem[0])
    targets = torch.tensor([[0, 1], [2, 3]])
    multi = by_module.attribute(x, target=targets)
    for k in range(2):
        torch.testing.assert_close(
            multi[:, k], ActivationTimesGradient(model, "stem.0").attribute(x, target=targets[:, k])
        )


def test_unknown_layer_lists_close_matches():
    model = ResidualBNNet()
    with pytest.raises(ValueError, match="close matches: .*stem.0"):
        ActivationTimesGradient(model, "stem.O")
    with pytest.raises(ValueError, match="available layers include"):
        ActivationTimesGradient(model, "zzzzzz")
    with pytest.raises(ValueError, match="not a sub-module"):
        ActivationTimesGradient(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="nn.Module"):
        ActivationTimesGradient(lambda x: x, "a")
    with pytest.raises(TypeError, match="dotted module name"):
        ActivationTimesGradient(model, 3)


def test_layer_running_twice_is_refused_and_hooks_removed():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x))

    model = Twice()
    with pytest.raises(ValueError, match="ran 2 times"):
        ActivationTimesGradient(model, "lin").attribute(torch.zeros(1, 4), target=0)
    assert not model.lin._forward_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_perturbation_base_scores_every_copy_within_batch_size():
    model = SmoothNet(seed=2)
    x = inputs_for((6,), 3, 2)
    rows_seen = []
    model.l1.register_forward_pre_hook(lambda m, a: rows_seen.append(a[0].shape[0]))
    ours = SingleFeatureOcclusion(model).attribute(x, target=1, batch_size=4)
    assert max(rows_seen) <= 4
    expected = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(6):
            occluded = x.clone()
            occluded[:, i] = 0
            expected[:, i] = model(x)[:, 1] - model(occluded)[:, 1]
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(SingleFeatureOcclusion(model).attribute(x, target=1), expected)


def test_in_place_op_after_the_layer_does_not_corrupt_the_capture():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 2))
    x = inputs_for((4,), 3, 0)
    ours = ActivationTimesGradient(model, "0").attribute(x, target=1)
    pre = model[0](x)
    (grad,) = torch.autograd.grad(model[2](torch.relu(pre))[:, 1].sum(), pre)
    torch.testing.assert_close(ours, pre.detach() * grad)
    assert model[1].inplace
