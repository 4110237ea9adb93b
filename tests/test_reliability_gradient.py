"""The gradient family's reliability findings: IG deltas on featureless inputs, ``multiply_by_inputs``,
NoiseTunnel's relative noise on constant examples and its per-sample deltas, ``batch_size="auto"``,
autocast and determinism."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import NoiseTunnel as CaptumNoiseTunnel
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attrib
from attrib.core.batching import AUTO_START

from .models import ResidualBNNet, SmoothNet, build, inputs_for, reinitialise, specs
from .test_differential import ReplayTunnel, _captum_noise, assert_close_rel

# --- Integrated Gradients -------------------------------------------------------------------


def test_ig_delta_on_inputs_without_a_feature_dimension_is_zero_like_captum():
    ig = attrib.IntegratedGradients(nn.ReLU())
    x = torch.tensor([1.0, 2.0])
    maps, delta = ig.attribute(x, return_convergence_delta=True)
    theirs, their_delta = CaptumIntegratedGradients(nn.ReLU()).attribute(x, return_convergence_delta=True)
    torch.testing.assert_close(maps, theirs)
    torch.testing.assert_close(maps, x)
    assert delta.shape == (2,)
    torch.testing.assert_close(delta, their_delta.to(delta.dtype), atol=1e-6, rtol=0)


def test_ig_delta_on_inputs_without_a_feature_dimension_and_an_n_by_k_target():
    linear = nn.Linear(1, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0], [-2.0], [0.5]]))
        linear.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    model = nn.Sequential(nn.Unflatten(0, (-1, 1)), linear, nn.Tanh())
    x = torch.tensor([0.5, -1.5, 2.0])
    target = torch.tensor([[0, 1], [2, 2], [1, 0]])
    maps, delta = attrib.IntegratedGradients(model).attribute(
        x, target=target, n_steps=40, return_convergence_delta=True
    )
    assert maps.shape == (3, 2) and delta.shape == (3, 2)
    for k in range(2):
        single, single_delta = attrib.IntegratedGradients(model).attribute(
            x, target=target[:, k], n_steps=40, return_convergence_delta=True
        )
        torch.testing.assert_close(maps[:, k], single)
        torch.testing.assert_close(delta[:, k], single_delta)
    # Completeness: for a 1-feature input the map is the score difference itself.
    out = model(x)
    gain = out.gather(1, target) - model(torch.zeros_like(x)).gather(1, target)
    torch.testing.assert_close(maps, gain, atol=1e-5, rtol=1e-5)
    assert float(delta.abs().max()) < 1e-5


@settings(max_examples=10)
@given(spec=specs(), n=st.integers(1, 3), steps=st.integers(1, 12))
def test_ig_without_multiplying_by_inputs_matches_captum(spec, n, steps):
    model = build(spec)
    x = inputs_for(spec.input_shape, n, spec.seed)
    baseline = inputs_for(spec.input_shape, 1, spec.seed + 1)
    target = torch.arange(n) % spec.classes
    ours, delta = attrib.IntegratedGradients(model, multiply_by_inputs=False).attribute(
        x, target=target, baselines=baseline, n_steps=steps, return_convergence_delta=True
    )
    theirs = CaptumIntegratedGradients(model, multiply_by_inputs=False).attribute(
        x, target=target, baselines=baseline, n_steps=steps
    )
    assert_close_rel(ours, theirs)
    # The delta is that of the completed map, identical to the multiplied variant's.
    full, full_delta = attrib.IntegratedGradients(model).attribute(
        x, target=target, baselines=baseline, n_steps=steps, return_convergence_delta=True
    )
    torch.testing.assert_close(full, ours * (x - baseline))
    torch.testing.assert_close(delta, full_delta)


def test_ig_multiply_by_inputs_must_be_a_bool():
    with pytest.raises(TypeError, match="multiply_by_inputs must be a bool"):
        attrib.IntegratedGradients(SmoothNet(), multiply_by_inputs="no")  # type: ignore[arg-type]


# --- NoiseTunnel ----------------------------------------------------------------------------


@pytest.mark.parametrize("x", [torch.zeros(2, 6), torch.full((2, 6), 3.0), torch.tensor([[1.0], [2.0]])])
def test_relative_noise_on_constant_examples_falls_back_to_absolute_noise(x):
    model = SmoothNet(features=x.shape[1], seed=2)
    sal = attrib.Saliency(model)
    plain = sal.attribute(x, target=1)
    relative = attrib.NoiseTunnel(sal).attribute(x, target=1, n_samples=6, stdev=0.3, seed=4)
    absolute = attrib.NoiseTunnel(sal).attribute(x, target=1, n_samples=6, stdev=0.3, stdev_mode="absolute", seed=4)
    # Never an un-noised map passed off as SmoothGrad: exactly the documented absolute noise.
    assert not torch.equal(relative, plain)
    torch.testing.assert_close(relative, absolute, rtol=0, atol=0)


def test_relative_noise_is_per_example_only_constant_examples_fall_back():
    model = SmoothNet(seed=2)
    x = torch.stack([torch.zeros(6), torch.linspace(0, 4, 6)])
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    attrib.NoiseTunnel(attrib.Saliency(model)).attribute(x, target=0, n_samples=400, stdev=0.1, seed=1)
    hook.remove()
    noise = (torch.cat(seen) - x.repeat(400, 1)).view(400, 2, 6)
    spread = noise.std(dim=(0, 2))
    torch.testing.assert_close(spread, torch.tensor([0.1, 0.4]), rtol=0.08, atol=0)


def test_noise_tunnel_returns_the_delta_of_every_noisy_sample_like_captum():
    model = ResidualBNNet(seed=5)
    x = inputs_for((3, 6, 6), 2, 5)
    targets = torch.tensor([1, 4])
    samples, stdev, seed = 3, 0.2, 11
    noise = _captum_noise(tuple(x.shape), samples, stdev, seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        theirs, their_delta = CaptumNoiseTunnel(CaptumIntegratedGradients(model)).attribute(
            x.clone(), nt_samples=samples, stdevs=stdev, target=targets, n_steps=6, return_convergence_delta=True
        )
    for batch_size in (None, 4):
        tunnel = ReplayTunnel(attrib.IntegratedGradients(model), noise, samples)
        ours, delta = tunnel.attribute(
            x,
            target=targets,
            n_samples=samples,
            stdev=stdev,
            stdev_mode="absolute",
            n_steps=6,
            batch_size=batch_size,
            return_convergence_delta=True,
        )
        assert_close_rel(ours, theirs)
        assert delta.shape == (2 * samples,)
        scale = float(their_delta.abs().max()) + 1e-3
        torch.testing.assert_close(delta, their_delta.detach(), rtol=1e-4, atol=1e-4 * scale)
    # Each entry is the wrapped method's own delta on that noisy copy (example-major order).
    noisy = x.repeat_interleave(samples, 0) + noise
    _, direct = attrib.IntegratedGradients(model).attribute(
        noisy, target=targets.repeat_interleave(samples), n_steps=6, return_convergence_delta=True
    )
    torch.testing.assert_close(delta, direct, rtol=1e-4, atol=1e-5)


def test_noise_tunnel_delta_with_an_n_by_k_target_and_a_method_without_delta():
    model = SmoothNet(seed=3)
    x = inputs_for((6,), 3, 3)
    target = torch.tensor([[0, 2], [1, 1], [2, 0]])
    tunnel = attrib.NoiseTunnel(attrib.IntegratedGradients(model))
    maps, delta = tunnel.attribute(x, target=target, n_samples=4, seed=0, n_steps=5, return_convergence_delta=True)
    assert maps.shape == (3, 2, 6) and delta.shape == (12, 2)
    with pytest.raises(ValueError, match="return_convergence_delta.*Saliency.* has none"):
        attrib.NoiseTunnel(attrib.Saliency(model)).attribute(x, target=0, return_convergence_delta=True)


# --- batch_size="auto" ----------------------------------------------------------------------


class RowLimited(nn.Module):
    """Wraps a model; raises torch.OutOfMemoryError on blocks of more than ``limit`` rows and logs every call."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model = model
        self.limit = limit
        self.calls: list[tuple[int, bool]] = []  # (rows, succeeded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows > self.limit:
            self.calls.append((rows, False))
            raise torch.OutOfMemoryError(f"simulated: {rows} rows > {self.limit}")
        self.calls.append((rows, True))
        return self.model(x)


def relu_mlp(seed: int) -> nn.Module:
    return reinitialise(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), seed, scale=1.0).eval()


AUTO_CASES = {
    "saliency": (lambda m: attrib.Saliency(m), {}, lambda n: n),
    "integrated_gradients": (lambda m: attrib.IntegratedGradients(m), {"n_steps": 300}, lambda n: 300 * n),
    "noise_tunnel": (
        lambda m: attrib.NoiseTunnel(attrib.Saliency(m)),
        {"n_samples": 250, "seed": 3},
        lambda n: 250 * n,
    ),
    "guided_backprop": (lambda m: attrib.GuidedBackprop(m), {}, lambda n: n),
}


@pytest.mark.parametrize("name", sorted(AUTO_CASES))
def test_auto_batch_size_halves_on_oom_never_recomputes_and_remembers(name):
    factory, options, rows_for = AUTO_CASES[name]
    n = 4 if rows_for(1) > 1 else 1500
    x = inputs_for((6,), n, 7)
    target = torch.arange(n) % 3
    limit = 90
    model = RowLimited(relu_mlp(7), limit)
    auto = factory(model).attribute(x, target=target, batch_size="auto", **options)
    fixed = factory(relu_mlp(7)).attribute(x, target=target, batch_size=limit, **options)
    torch.testing.assert_close(auto, fixed, rtol=1e-5, atol=1e-6)

    total = rows_for(n)
    ok = [rows for rows, succeeded in model.calls if succeeded]
    failed = [rows for rows, succeeded in model.calls if not succeeded]
    assert sum(ok) == total  # every row evaluated exactly once: no successful block was recomputed
    first = min(total, AUTO_START)
    expected_failures = []
    size = first
    while size > limit:
        expected_failures.append(size)
        size //= 2
    assert failed == expected_failures  # halved only until it fitted, then never tried larger again
    assert ok[:-1] == [size] * (len(ok) - 1) and 0 < ok[-1] <= size


def test_auto_batch_size_is_passed_through_noise_tunnel_to_integrated_gradients():
    x = inputs_for((6,), 2, 1)
    model = RowLimited(SmoothNet(seed=1), 16)
    tunnel = attrib.NoiseTunnel(attrib.IntegratedGradients(model))
    auto = tunnel.attribute(x, target=1, n_samples=5, n_steps=20, seed=2, batch_size="auto")
    fixed = attrib.NoiseTunnel(attrib.IntegratedGradients(SmoothNet(seed=1))).attribute(
        x, target=1, n_samples=5, n_steps=20, seed=2, batch_size=3
    )
    torch.testing.assert_close(auto, fixed, rtol=1e-5, atol=1e-6)
    assert max(rows for rows, ok in model.calls if ok) <= 16


def test_auto_batch_size_gives_up_when_one_row_does_not_fit():
    model = RowLimited(SmoothNet(), 0)
    with pytest.raises(torch.OutOfMemoryError):
        attrib.IntegratedGradients(model).attribute(inputs_for((6,), 2, 0), target=0, batch_size="auto")
    assert model.calls[-1] == (1, False)


def test_other_errors_are_not_mistaken_for_out_of_memory():
    calls = []

    def broken(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        attrib.IntegratedGradients(broken).attribute(inputs_for((6,), 2, 0), target=0, batch_size="auto")
    assert calls == [100]  # no retry


# --- Mixed precision ------------------------------------------------------------------------

#: Observed relative L2 error of bfloat16-autocast maps against float32 maps on ResidualBNNet:
#: Saliency 0.5%, InputXGradient 0.5%, GuidedBackprop 0.3%, IntegratedGradients (8 steps) 1.9%.
#: bfloat16 keeps 8 significant bits (eps = 2**-8 = 0.4%), so a few eps is what rounding allows.
AUTOCAST_RTOL = 0.05


@pytest.mark.parametrize(
    "factory, options",
    [
        (attrib.Saliency, {"abs": False}),
        (attrib.InputXGradient, {}),
        (attrib.GuidedBackprop, {}),
        (attrib.IntegratedGradients, {"n_steps": 8}),
        (lambda m: attrib.NoiseTunnel(attrib.Saliency(m)), {"n_samples": 4, "seed": 0}),
    ],
)
def test_bfloat16_autocast_maps_stay_close_to_float32(factory, options):
    model = ResidualBNNet(seed=1)
    x = inputs_for((3, 8, 8), 4, 0)
    exact = factory(model).attribute(x, target=2, **options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = factory(model).attribute(x, target=2, **options)
    assert mixed.shape == exact.shape and torch.isfinite(mixed).all()
    error = float((mixed.float() - exact).norm() / exact.norm())
    assert error < AUTOCAST_RTOL, error
    assert error > 0  # autocast really ran in reduced precision


# --- Determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, options",
    [
        (lambda m: attrib.NoiseTunnel(attrib.Saliency(m)), {"n_samples": 7}),
        (lambda m: attrib.NoiseTunnel(attrib.IntegratedGradients(m)), {"n_samples": 3, "n_steps": 5}),
        (lambda m: attrib.NoiseTunnel(attrib.GuidedBackprop(m)), {"n_samples": 5, "kind": "vargrad"}),
    ],
)
def test_same_seed_same_maps_across_calls_and_batch_sizes(factory, options):
    model = ResidualBNNet(seed=2)
    x = inputs_for((3, 6, 6), 3, 2)
    first = factory(model).attribute(x, target=1, seed=5, batch_size=4, **options)
    again = factory(model).attribute(x, target=1, seed=5, batch_size=4, **options)
    assert torch.equal(first, again)  # bit-identical for the same seed and batch size
    for batch_size in (5, None, "auto"):
        other = factory(model).attribute(x, target=1, seed=5, batch_size=batch_size, **options)
        # Same noise; sums over differently split blocks differ only by float rounding.
        torch.testing.assert_close(other, first, rtol=1e-5, atol=1e-6)
    different = factory(model).attribute(x, target=1, seed=6, batch_size=4, **options)
    assert not torch.equal(different, first)


class _NoBatchSize(attrib.Attribution):
    """A wrapped method without a ``batch_size`` option: NoiseTunnel's own blocks must absorb out-of-memory."""

    def attribute(self, inputs, target=None):  # type: ignore[override]
        return attrib.Saliency(self.model).attribute(inputs, target)


def test_noise_tunnel_retries_a_block_with_the_same_noise_after_out_of_memory():
    x = inputs_for((6,), 3, 4)
    limited = RowLimited(relu_mlp(4), 7)
    auto = attrib.NoiseTunnel(_NoBatchSize(limited)).attribute(x, target=1, n_samples=9, seed=8, batch_size="auto")
    fixed = attrib.NoiseTunnel(_NoBatchSize(relu_mlp(4))).attribute(x, target=1, n_samples=9, seed=8, batch_size=4)
    torch.testing.assert_close(auto, fixed, rtol=1e-5, atol=1e-6)
    assert any(not ok for _, ok in limited.calls)  # blocks were retried at a smaller size
    assert sum(rows for rows, ok in limited.calls if ok) == 27
