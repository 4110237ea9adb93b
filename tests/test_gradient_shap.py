"""GradientShap: Captum with identical draws, a float64 reference, seeds, batching, bad input, state.

Captum draws its references and alphas from numpy's global RNG and its noise
from torch's; the fair comparison replays those very draws into attrib
(through :meth:`GradientShap.sample_draws`, the documented override point):
the test seeds both global generators around Captum's call (restoring them
after), reproduces the same draws in the same order, checks that Captum's
model saw exactly the points rebuilt from them, and compares maps and deltas.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import GradientShap as CaptumGradientShap
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from attrib.methods.gradient_shap import GradientShap

from . import reference_deeplift as ref
from .models import ResidualBNNet, SmoothNet, Spec, TwoInputNet, build, inputs_for, specs
from .test_deeplift import close_rel
from .test_state import Tripwire, assert_same, snapshot, untidy


class ReplayShap(GradientShap):
    """GradientShap fed given draws: ``index``/``alpha`` ``(N, S)``, ``noise`` ``(N, S, ...)`` per input."""

    def __init__(self, model: nn.Module, index: torch.Tensor, alpha: torch.Tensor, noise: tuple[torch.Tensor, ...]):
        super().__init__(model)
        self.index, self.alpha, self.noise = index, alpha, noise
        self.copy = 0

    def sample_draws(self, inputs, baselines, stdevs, generator):
        s = self.copy
        self.copy += 1
        return (*(z[:, s] for z in self.noise), self.alpha[:, s], self.index[:, s])


class RecordingShap(GradientShap):
    """GradientShap with its own draws, recorded in the layout of :class:`ReplayShap`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.draws: list[tuple[torch.Tensor, ...]] = []

    def sample_draws(self, inputs, baselines, stdevs, generator):
        draws = super().sample_draws(inputs, baselines, stdevs, generator)
        self.draws.append(draws)
        return draws

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        *noise, alpha, index = (torch.stack(parts, 1) for parts in zip(*self.draws))
        return index, alpha, tuple(noise)


def captum_with_draws(model, x, references, targets, n_samples, stdev, seed):
    """Captum's maps and deltas, the draws it made (example-major, as (N, S)), and the points its model saw."""
    n, b = x.shape[0], references.shape[0]
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.random.seed(seed)
            torch.manual_seed(seed)
            maps, delta = CaptumGradientShap(model).attribute(
                x.clone(), references, n_samples=n_samples, stdevs=stdev, target=targets, return_convergence_delta=True
            )
            np.random.seed(seed)
            torch.manual_seed(seed)
            index = torch.as_tensor(np.random.choice(b, n_samples * n)).view(n, n_samples)
            noise = torch.normal(0, torch.tensor(stdev).repeat((n * n_samples, *x.shape[1:])))
            alpha = torch.tensor(np.random.uniform(0.0, 1.0, n * n_samples), dtype=x.dtype).view(n, n_samples)
    finally:
        np.random.set_state(state)
        hook.remove()
    return maps, delta, (index, alpha, noise.view(n, n_samples, *x.shape[1:])), seen[0]


MODELS = {
    "cnn": lambda seed: build(Spec(2, 6, (3, 4), (True, False), (5,), 4, ("module",) * 4, seed)),
    "residual_bn": lambda seed: ResidualBNNet(channels=2, seed=seed),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 3),
    b=st.integers(1, 4),
    n_samples=st.integers(1, 6),
    stdev=st.sampled_from((0.0, 0.2)),
    batch_size=st.sampled_from((None, 1, 4)),
)
def test_matches_captum_with_identical_draws(name, seed, n, b, n_samples, stdev, batch_size):
    model = MODELS[name](seed % 7)
    x, references = inputs_for((2, 6, 6), n, seed), inputs_for((2, 6, 6), b, seed + 1)
    targets = torch.arange(n) % 4
    theirs, their_delta, (index, alpha, noise), points = captum_with_draws(
        model, x, references, targets, n_samples, stdev, seed
    )
    a = alpha.reshape(-1, 1, 1, 1)
    rebuilt = a * (x.repeat_interleave(n_samples, 0) + noise.flatten(0, 1)) + (1 - a) * references[index.flatten()]
    torch.testing.assert_close(points, rebuilt, rtol=0, atol=0)  # the replayed draws are Captum's
    ours, delta = ReplayShap(model, index, alpha, (noise,)).attribute(
        x, targets, baselines=references, n_samples=n_samples, batch_size=batch_size, return_convergence_delta=True
    )
    close_rel(ours, theirs, 1e-4)
    assert delta.shape == their_delta.shape == (n * n_samples,)
    close_rel(delta, their_delta, 1e-4)


@given(spec=specs(), n=st.integers(1, 3), b=st.integers(1, 3), n_samples=st.integers(1, 4), seed=st.integers(0, 99))
def test_matches_the_float64_reference_on_its_own_draws(spec, n, b, n_samples, seed):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, seed).double()
    references = inputs_for(spec.input_shape, b, seed + 1).double()
    targets = torch.arange(n) % spec.classes
    shap = RecordingShap(model)
    ours = shap.attribute(x, targets, baselines=references, n_samples=n_samples, stdev=0.3, seed=seed, batch_size=3)
    index, alpha, (noise,) = shap.recorded()
    assert index.shape == alpha.shape == (n, n_samples) and bool(((0 <= alpha) & (alpha < 1)).all())
    assert bool((index < b).all()) and noise.shape == (n, n_samples, *spec.input_shape)
    close_rel(ours, ref.gradient_shap(model, x, references, targets.tolist(), index, alpha, noise), 1e-9)


def test_without_noise_and_one_reference_it_estimates_integrated_gradients():
    """E_alpha[(x - b) grad S(b + alpha (x - b))] is the IG integral: a large sample converges to it."""
    model = SmoothNet(seed=2).double()
    x, baseline = inputs_for((6,), 2, 0).double(), inputs_for((6,), 1, 1).double()
    ours = GradientShap(model).attribute(x, 1, baselines=baseline, n_samples=4000, seed=0, batch_size=1000)
    alphas = torch.linspace(0, 1, 2001, dtype=torch.float64)  # the trapezoid rule on a fine grid
    points = (baseline + alphas.view(-1, 1, 1) * (x - baseline)).requires_grad_(True)
    (grads,) = torch.autograd.grad(model(points.flatten(0, 1))[:, 1].sum(), points)
    weights = torch.full((2001,), 1 / 2000, dtype=torch.float64)
    weights[[0, -1]] /= 2
    ig = (x - baseline) * (weights.view(-1, 1, 1) * grads).sum(0)
    close_rel(ours, ig, 0.05)  # Monte-Carlo error ~ 1/sqrt(4000)


def test_seeds_reproduce_and_the_global_rng_is_untouched():
    model = ResidualBNNet(channels=2, seed=1)
    x, references = inputs_for((2, 6, 6), 3, 0), inputs_for((2, 6, 6), 4, 1)
    gs = GradientShap(model)

    def run(**options):
        return gs.attribute(x, 2, baselines=references, n_samples=6, stdev=0.1, **options)

    before = torch.random.get_rng_state()
    first = run(seed=3)
    torch.testing.assert_close(run(seed=3), first, rtol=0, atol=0)
    torch.testing.assert_close(run(generator=torch.Generator().manual_seed(3)), first, rtol=0, atol=0)
    assert not torch.allclose(run(seed=4), first)
    for batch_size in (1, 4, 7, "auto"):
        torch.testing.assert_close(run(seed=3, batch_size=batch_size), first)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_k_targets_callable_target_top1_and_unscaled_gradients():
    model = ResidualBNNet(channels=2, seed=2)
    x, references = inputs_for((2, 6, 6), 3, 0), inputs_for((2, 6, 6), 2, 1)
    gs = GradientShap(model)
    opts = {"baselines": references, "n_samples": 4, "stdev": 0.1, "batch_size": 5}
    pairs = torch.tensor([[0, 2], [1, 1], [4, 0]])
    maps, delta = gs.attribute(x, pairs, seed=0, return_convergence_delta=True, **opts)
    assert maps.shape == (3, 2, 2, 6, 6) and delta.shape == (12, 2)
    for k in range(2):
        single, single_delta = gs.attribute(x, pairs[:, k], seed=0, return_convergence_delta=True, **opts)
        torch.testing.assert_close(maps[:, k], single)
        torch.testing.assert_close(delta[:, k], single_delta)
    torch.testing.assert_close(
        gs.attribute(x, lambda out: out[:, 1], seed=0, **opts), gs.attribute(x, 1, seed=0, **opts)
    )
    top1 = model(x).argmax(1)
    torch.testing.assert_close(gs.attribute(x, seed=0, **opts), gs.attribute(x, top1, seed=0, **opts))
    # Without noise and with one reference, x - b is the same for every sample: the map is (x - b) E[g].
    one = {"baselines": references[:1], "n_samples": 4, "batch_size": 5}
    grads = GradientShap(model, multiply_by_inputs=False).attribute(x, 1, seed=5, **one)
    torch.testing.assert_close(gs.attribute(x, 1, seed=5, **one), (x - references[:1]) * grads)


def test_tuple_inputs_forward_args_and_per_input_stdevs():
    model = TwoInputNet(seed=3).double()
    image, vector = inputs_for((2, 4, 4), 2, 0).double(), inputs_for((4,), 2, 1).double()
    references = (inputs_for((2, 4, 4), 3, 2).double(), inputs_for((4,), 3, 3).double())
    gain = torch.tensor([1.0, -0.5], dtype=torch.float64)
    shap = RecordingShap(model)
    maps, delta = shap.attribute(
        (image, vector),
        0,
        baselines=references,
        n_samples=3,
        stdev=(0.0, 0.2),
        seed=1,
        additional_forward_args=gain,
        return_convergence_delta=True,
    )
    assert isinstance(maps, tuple) and maps[0].shape == image.shape and maps[1].shape == vector.shape
    index, alpha, (image_noise, vector_noise) = shap.recorded()
    assert bool((image_noise == 0).all()) and bool((vector_noise != 0).all())
    # One reference index per row is shared by both inputs (Captum draws one per input).
    expected = [torch.zeros_like(image), torch.zeros_like(vector)]
    for n in range(2):
        for s in range(3):
            ends = (image[n] + image_noise[n, s], vector[n] + vector_noise[n, s])
            starts = (references[0][index[n, s]], references[1][index[n, s]])
            a = float(alpha[n, s])
            points = [(a * e + (1 - a) * b).unsqueeze(0).requires_grad_(True) for e, b in zip(ends, starts)]
            out = model(*points, gain[n : n + 1])[0, 0]
            grads = torch.autograd.grad(out, points)
            for i in range(2):
                expected[i][n] += (ends[i] - starts[i]) * grads[i][0] / 3
    close_rel(maps[0], expected[0], 1e-9)
    close_rel(maps[1], expected[1], 1e-9)
    assert delta.shape == (6,)


BAD = {
    "n_samples_0": ({"n_samples": 0}, ValueError, "n_samples"),
    "n_samples_float": ({"n_samples": 2.5}, ValueError, "n_samples"),
    "n_samples_bool": ({"n_samples": True}, ValueError, "n_samples"),
    "stdev_negative": ({"stdev": -0.1}, ValueError, "stdev"),
    "stdev_nan": ({"stdev": float("nan")}, ValueError, "stdev"),
    "stdev_tuple_length": ({"stdev": (0.1, 0.2)}, ValueError, "one number per input"),
    "baselines_missing": ({"baselines": None}, ValueError, "required"),
    "baselines_empty": ({"baselines": torch.zeros(0, 6)}, ValueError, "empty"),
    "baselines_shape": ({"baselines": torch.zeros(2, 7)}, ValueError, "shape"),
    "baselines_unbatched": ({"baselines": torch.zeros(6)}, ValueError, "shape"),
    "baselines_number": ({"baselines": 0.0}, TypeError, "Tensor"),
    "baselines_integer": ({"baselines": torch.zeros(2, 6, dtype=torch.long)}, TypeError, "floating-point"),
    "baselines_nan": ({"baselines": torch.full((2, 6), float("nan"))}, ValueError, "finite"),
    "seed_and_generator": ({"seed": 0, "generator": torch.Generator()}, ValueError, "either seed or generator"),
    "seed_type": ({"seed": "zero"}, TypeError, "seed"),
    "batch_size": ({"batch_size": 0}, ValueError, "batch_size"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_a_clear_error(name):
    options, error, says = BAD[name]
    model = SmoothNet(seed=0)
    x = inputs_for((6,), 2, 0)
    before = snapshot(model, (x,))
    with pytest.raises(error, match=says):
        GradientShap(model).attribute(x, 0, **{"baselines": torch.zeros(2, 6), **options})
    assert_same(before, snapshot(model, (x,)))


@given(fail_at=st.integers(0, 3), n=st.integers(1, 3), seed=st.integers(0, 99))
def test_state_restored_after_success_and_a_fault_mid_forward(fail_at, n, seed):
    inner = build(Spec(2, 4, (3,), (True,), (4,), 3, ("module_inplace", "functional"), seed))
    model = nn.Sequential(inner[0], Tripwire(fail_at), *list(inner)[1:])
    untidy(model, seed)
    x = inputs_for((2, 4, 4), n, seed).requires_grad_(seed % 2 == 0)
    references = inputs_for((2, 4, 4), 2, seed + 1)
    before = snapshot(model, (x, references))
    try:
        GradientShap(model).attribute(
            x, 0, baselines=references, n_samples=3, seed=seed, batch_size=2, return_convergence_delta=True
        )
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(model, (x, references)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is absent on this machine")
def test_cuda_draws_on_the_device_and_leaves_its_rng_alone():
    model = ResidualBNNet(channels=2, seed=1).double().cuda()
    x, references = inputs_for((2, 6, 6), 3, 0).double().cuda(), inputs_for((2, 6, 6), 4, 1).double().cuda()
    before = torch.cuda.get_rng_state()
    shap = RecordingShap(model)
    maps = shap.attribute(x, 1, baselines=references, n_samples=4, stdev=0.1, seed=0, batch_size=5)
    assert maps.device.type == "cuda" and torch.equal(torch.cuda.get_rng_state(), before)
    index, alpha, (noise,) = shap.recorded()
    assert index.device.type == alpha.device.type == noise.device.type == "cuda"
    expected = ref.gradient_shap(
        model.cpu(), x.cpu(), references.cpu(), [1, 1, 1], index.cpu(), alpha.cpu(), noise.cpu()
    )
    close_rel(maps.cpu(), expected, 1e-9)
    with pytest.raises(ValueError, match="generator"):
        GradientShap(model.cuda()).attribute(x, 1, baselines=references, generator=torch.Generator())


def test_bad_n_samples_is_refused_by_name():
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match="n_samples must be a positive int"):
            GradientShap(SmoothNet()).attribute(torch.zeros(2, 6), 0, baselines=torch.zeros(3, 6), n_samples=bad)
