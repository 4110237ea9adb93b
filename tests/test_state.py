"""The model and the inputs come back bit-exact, on success and on error, across threads."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules import module as module_globals

import attrib

from .models import ResidualBNNet, SmoothNet, build, inputs_for, specs


class Tripwire(nn.Module):
    """Identity that raises on its ``fail_at``-th call (0: never)."""

    def __init__(self, fail_at: int = 0) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        return x


METHODS = {
    "saliency": lambda m: (attrib.Saliency(m), {}),
    "input_x_gradient": lambda m: (attrib.InputXGradient(m), {}),
    "guided_backprop": lambda m: (attrib.GuidedBackprop(m), {}),
    "deconvnet": lambda m: (attrib.Deconvnet(m), {}),
    "integrated_gradients": lambda m: (attrib.IntegratedGradients(m), {"n_steps": 3, "batch_size": 2}),
    "noise_tunnel": lambda m: (
        attrib.NoiseTunnel(attrib.GuidedBackprop(m)),
        {"n_samples": 3, "seed": 0, "batch_size": 2},
    ),
    "pipeline": lambda m: (attrib.Saliency(m).then(attrib.ReduceChannels("l2")), {}),
    "product": lambda m: (attrib.GuidedBackprop(m) * attrib.InputXGradient(m), {}),
}


def _global_hook_counts() -> tuple[int, ...]:
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return tuple(len(getattr(module_globals, name, {})) for name in names)


def snapshot(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
        "global_hooks": _global_hook_counts(),
        "inputs": [(x.clone(), x.requires_grad, x.grad, x._version, x.grad_fn) for x in inputs],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), key
    for key in ("training", "requires_grad", "inplace", "hooks", "global_hooks"):
        assert before[key] == after[key], key
    for g0, g1 in zip(before["grad"], after["grad"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for (x0, rg0, grad0, v0, fn0), (x1, rg1, grad1, v1, fn1) in zip(before["inputs"], after["inputs"]):
        assert torch.equal(x0, x1) and rg0 == rg1 and grad0 is None and grad1 is None and v0 == v1 and fn0 is fn1


def untidy(model: nn.Module, seed: int) -> None:
    """Give the model state worth restoring: mixed modes, frozen params, existing grads."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    for i, m in enumerate(model.modules()):
        if i % 3 == 2:
            m.eval()
    for i, p in enumerate(model.parameters()):
        if i % 4 == 1:
            p.requires_grad_(False)
        elif i % 4 == 2:
            p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("name", sorted(METHODS))
@given(spec=specs(), fail_at=st.integers(0, 3), n=st.integers(1, 3))
def test_state_restored_after_success_and_injected_failure(name, spec, fail_at, n):
    inner = build(spec)
    model = nn.Sequential(inner[0], Tripwire(fail_at), *list(inner)[1:])
    untidy(model, spec.seed)
    x = inputs_for(spec.input_shape, n, spec.seed).requires_grad_(spec.seed % 2 == 0)
    before = snapshot(model, (x,))
    method, options = METHODS[name](model)
    try:
        method.attribute(x, target=0, **options)
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(model, (x,)))


def test_model_is_in_eval_mode_during_the_call_and_train_mode_after():
    seen = []
    model = ResidualBNNet()
    model.stem.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    model.train()
    attrib.Saliency(model).attribute(inputs_for((3, 6, 6), 2, 0), target=1)
    assert seen == [False] and model.training and all(m.training for m in model.modules())


def test_opting_out_of_eval_mode_keeps_train_mode_and_restores_running_stats():
    seen = []
    model = ResidualBNNet()
    model.stem.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    model.train()
    before = snapshot(model, ())
    attrib.IntegratedGradients(model, eval_mode=False).attribute(inputs_for((3, 6, 6), 2, 0), target=1, n_steps=3)
    assert seen == [True]
    assert_same(before, snapshot(model, ()))


def test_error_in_target_callable_restores_state():
    model = ResidualBNNet()
    untidy(model, 0)
    x = inputs_for((3, 6, 6), 2, 0)
    before = snapshot(model, (x,))

    def bad_target(output):
        raise KeyError("in target")

    with pytest.raises(KeyError):
        attrib.GuidedBackprop(model).attribute(x, target=bad_target)
    assert_same(before, snapshot(model, (x,)))


def test_works_under_no_grad_and_inference_mode():
    model = SmoothNet(seed=1)
    x = inputs_for((6,), 2, 1)
    expected = attrib.Saliency(model).attribute(x, target=0)
    with torch.no_grad():
        torch.testing.assert_close(attrib.Saliency(model).attribute(x, target=0), expected)
    with torch.inference_mode():
        x_inference = x.clone()
        got = attrib.IntegratedGradients(model).attribute(x_inference, target=0, n_steps=4)
    torch.testing.assert_close(got, attrib.IntegratedGradients(model).attribute(x, target=0, n_steps=4))


def test_threads_share_a_model_safely():
    model = ResidualBNNet(seed=1)
    untidy(model, 1)
    x = inputs_for((3, 6, 6), 3, 1)
    before = snapshot(model, (x,))
    expected_gbp = attrib.GuidedBackprop(model).attribute(x, target=2)
    expected_sal = attrib.Saliency(model).attribute(x, target=2)
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                method = attrib.GuidedBackprop(model) if i % 2 else attrib.Saliency(model)
                results[i] = method.attribute(x, target=2)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, r in results.items():
        torch.testing.assert_close(r, expected_gbp if i % 2 else expected_sal)
    assert_same(before, snapshot(model, (x,)))
