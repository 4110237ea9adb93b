"""Several threads attributing at once give exactly the serial results, and leave shared models as they were.

Each thread explains different inputs, so any cross-talk (a hook of one call catching another
thread's forward pass, a state guard restoring too early, shared RNG) changes a map and is caught.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import attrib
from attrib.methods.cam import GradCAM
from attrib.methods.eigen_cam import EigenCAM
from attrib.methods.excitation import ContrastiveExcitationBackprop, ExcitationBackprop
from attrib.methods.gradient import InputXGradient, Saliency
from attrib.methods.guided_grad_cam import GuidedGradCAM
from attrib.methods.integrated_gradients import IntegratedGradients
from attrib.methods.modified_backprop import Deconvnet, GuidedBackprop
from attrib.methods.noise_tunnel import NoiseTunnel
from attrib.methods.occlusion import Occlusion
from attrib.methods.rise import RISE
from attrib.methods.score_cam import ScoreCAM

from .models import ResidualBNNet, inputs_for
from .test_state import assert_same, snapshot, untidy

Factory = Callable[[nn.Module], attrib.Attribution]

METHODS: dict[str, tuple[Factory, dict[str, Any]]] = {
    "saliency": (Saliency, {}),
    "input_x_gradient": (InputXGradient, {}),
    "guided_backprop": (GuidedBackprop, {}),
    "deconvnet": (Deconvnet, {}),
    "integrated_gradients": (IntegratedGradients, {"n_steps": 6, "batch_size": 5}),
    "noise_tunnel": (lambda m: NoiseTunnel(GuidedBackprop(m)), {"n_samples": 4, "seed": 2, "batch_size": 3}),
    "grad_cam": (lambda m: GradCAM(m, "conv2"), {}),
    "guided_times_saliency": (lambda m: GuidedBackprop(m) * Saliency(m), {}),
    "guided_grad_cam": (lambda m: GuidedGradCAM(m, "conv2"), {}),
    "score_cam": (lambda m: ScoreCAM(m, "conv2"), {"batch_size": 3}),
    "eigen_cam": (lambda m: EigenCAM(m, "conv2"), {}),
    "excitation_backprop": (lambda m: ExcitationBackprop(m, "conv2"), {}),
    "contrastive_excitation_backprop": (lambda m: ContrastiveExcitationBackprop(m, "conv2", "pool"), {}),
    "occlusion": (Occlusion, {"window": (3, 3, 3), "stride": (3, 2, 2), "batch_size": 4}),
    "rise": (RISE, {"num_masks": 24, "seed": 1, "batch_size": 8}),
}

THREADS = 4
ROUNDS = 2


def _run_in_threads(work: Callable[[int], torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """Run ``work(i)`` ROUNDS times in each of THREADS threads started together; re-raise any error."""
    barrier = threading.Barrier(THREADS)
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(THREADS)}
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(ROUNDS):
                results[i].append(work(i))
        except BaseException as err:  # reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


SHARED = sorted(METHODS)


@pytest.mark.parametrize("name", SHARED)
def test_one_method_on_one_shared_model_from_several_threads(name):
    factory, options = METHODS[name]
    model = ResidualBNNet(seed=4)
    untidy(model, 4)
    inputs = [inputs_for((3, 8, 8), 2, 10 + i) for i in range(THREADS)]
    targets = [i % 5 for i in range(THREADS)]
    before = snapshot(model, tuple(inputs))
    serial = [factory(model).attribute(x, target=t, **options) for x, t in zip(inputs, targets)]
    assert_same(before, snapshot(model, tuple(inputs)))

    method = factory(model)  # one method object shared by every thread
    results = _run_in_threads(lambda i: method.attribute(inputs[i], target=targets[i], **options))
    for i, maps in results.items():
        for m in maps:
            assert torch.equal(m, serial[i]), (name, i)
    assert_same(before, snapshot(model, tuple(inputs)))


def test_different_methods_on_different_models_at_once():
    names = sorted(METHODS)
    models = {name: ResidualBNNet(seed=20 + k) for k, name in enumerate(names)}
    x = inputs_for((3, 8, 8), 3, 5)
    serial = {name: METHODS[name][0](models[name]).attribute(x, target=1, **METHODS[name][1]) for name in names}
    barrier = threading.Barrier(len(names))
    got: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def body(name: str) -> None:
        try:
            barrier.wait()
            factory, options = METHODS[name]
            got[name] = factory(models[name]).attribute(x, target=1, **options)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=body, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for name in names:
        assert torch.equal(got[name], serial[name]), name


def test_mixed_methods_on_one_shared_model_with_a_failing_thread():
    """A thread whose call fails does not disturb the others, and the shared model ends as it began."""
    model = ResidualBNNet(seed=8)
    untidy(model, 8)
    x = inputs_for((3, 8, 8), 2, 8)
    before = snapshot(model, (x,))
    expected = {name: METHODS[name][0](model).attribute(x, target=3, **METHODS[name][1]) for name in METHODS}
    names = sorted(METHODS)

    def work(i: int) -> torch.Tensor:
        if i == 0:
            with pytest.raises(ValueError, match="target class indices"):
                Saliency(model).attribute(x, target=17)
            return torch.zeros(())
        name = names[i % len(names)]
        factory, options = METHODS[name]
        result = factory(model).attribute(x, target=3, **options)
        assert torch.equal(result, expected[name]), name
        return result

    _run_in_threads(work)
    assert_same(before, snapshot(model, (x,)))
