"""NoiseTunnel: formulas, determinism, RNG hygiene and batching."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attrib
from attrib.core.randomness import NoiseStream
from attrib.methods.noise_tunnel import KINDS

from . import reference
from .models import SmoothNet, TwoInputNet, build, inputs_for, specs


class RecordingTunnel(attrib.NoiseTunnel):
    """Keeps every noise draw so a reference can replay the same noisy inputs."""

    def __init__(self, method):
        super().__init__(method)
        self.draws = []

    def sample_noise(self, inputs, scales, generator):
        noise = super().sample_noise(inputs, scales, generator)
        self.draws.append(noise)
        return noise


@pytest.mark.parametrize("kind", KINDS)
@given(spec=specs(), n=st.integers(1, 3), samples=st.integers(1, 5), data=st.data())
def test_matches_reference_over_saliency(kind, spec, n, samples, data):
    model = build(spec).double()
    x = inputs_for(spec.input_shape, n, spec.seed, torch.float64)
    target = data.draw(st.integers(0, spec.classes - 1))
    batch_size = data.draw(st.none() | st.integers(1, n * samples + 1))
    tunnel = RecordingTunnel(attrib.Saliency(model))
    ours = tunnel.attribute(x, target=target, kind=kind, n_samples=samples, seed=spec.seed, batch_size=batch_size)
    assert len(tunnel.draws) == samples
    per_sample = [attrib.Saliency(model).attribute(x + noise, target=target) for (noise,) in tunnel.draws]
    torch.testing.assert_close(ours, reference.noise_tunnel(per_sample, kind))


def test_smoothgrad_over_integrated_gradients_matches_reference():
    model = SmoothNet(seed=1).double()
    x = inputs_for((6,), 2, 1, torch.float64)
    tunnel = RecordingTunnel(attrib.IntegratedGradients(model))
    ours = tunnel.attribute(x, target=[0, 2], n_samples=4, seed=3, n_steps=5, batch_size=3, baselines=0.1)
    per_sample = [
        reference.integrated_gradients(model, x + noise, torch.full_like(x, 0.1), [0, 2], "gausslegendre", 5)
        for (noise,) in tunnel.draws
    ]
    torch.testing.assert_close(ours, reference.noise_tunnel(per_sample, "smoothgrad"))


def test_same_seed_same_maps_and_global_rng_untouched():
    model = SmoothNet(seed=2)
    x = inputs_for((6,), 3, 2)
    tunnel = attrib.NoiseTunnel(attrib.Saliency(model))
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = tunnel.attribute(x, target=1, seed=11)
    b = tunnel.attribute(x, target=1, seed=11)
    c = tunnel.attribute(x, target=1, seed=12)
    unseeded = tunnel.attribute(x, target=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, unseeded)


def test_generator_is_used_and_advanced():
    model = SmoothNet(seed=2)
    x = inputs_for((6,), 2, 2)
    tunnel = attrib.NoiseTunnel(attrib.Saliency(model))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(tunnel.attribute(x, target=0, generator=g1), tunnel.attribute(x, target=0, generator=g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    assert not torch.equal(g1.get_state(), torch.Generator().manual_seed(5).get_state())
    with pytest.raises(ValueError, match="either seed or generator"):
        tunnel.attribute(x, target=0, seed=1, generator=g1)


@given(n=st.integers(1, 4), samples=st.integers(1, 6), data=st.data())
def test_batch_size_does_not_change_the_noise(n, samples, data):
    model = SmoothNet(seed=3)
    x = inputs_for((6,), n, 3)
    tunnel = attrib.NoiseTunnel(attrib.Saliency(model))
    batch_size = data.draw(st.integers(1, n * samples + 2))
    whole = tunnel.attribute(x, target=0, n_samples=samples, seed=9, kind="vargrad")
    chunked = tunnel.attribute(x, target=0, n_samples=samples, seed=9, kind="vargrad", batch_size=batch_size)
    torch.testing.assert_close(chunked, whole)


def test_target_is_fixed_on_the_clean_input():
    model = SmoothNet(seed=4)
    x = inputs_for((6,), 4, 4)
    tunnel = attrib.NoiseTunnel(attrib.Saliency(model))
    predicted = model(x).argmax(1)
    assert torch.equal(tunnel.attribute(x, seed=0, stdev=2.0), tunnel.attribute(x, target=predicted, seed=0, stdev=2.0))


def test_zero_noise_gives_the_wrapped_method():
    model = SmoothNet(seed=5)
    x = inputs_for((6,), 3, 5)
    tunnel = attrib.NoiseTunnel(attrib.InputXGradient(model))
    expected = attrib.InputXGradient(model).attribute(x, target=2)
    torch.testing.assert_close(tunnel.attribute(x, target=2, stdev=0.0, n_samples=3, seed=0), expected)
    torch.testing.assert_close(tunnel.attribute(x, target=2, kind="vargrad", stdev=0.0, seed=0), torch.zeros_like(x))


def test_relative_noise_scales_with_each_examples_range():
    model = SmoothNet(seed=6)
    x = torch.stack([torch.linspace(0, 1, 6), torch.linspace(-10, 10, 6)])  # ranges 1 and 20
    tunnel = RecordingTunnel(attrib.Saliency(model))
    tunnel.attribute(x, target=0, n_samples=4000, seed=0, stdev=0.15)
    noise = torch.stack([d[0] for d in tunnel.draws])  # (samples, N, 6)
    std = noise.transpose(0, 1).reshape(2, -1).std(1)
    torch.testing.assert_close(std, torch.tensor([0.15, 3.0]), rtol=0.03, atol=0)
    tunnel.draws.clear()
    tunnel.attribute(x, target=0, n_samples=4000, seed=0, stdev=0.5, stdev_mode="absolute")
    noise = torch.stack([d[0] for d in tunnel.draws])
    torch.testing.assert_close(noise.transpose(0, 1).reshape(2, -1).std(1), torch.tensor([0.5, 0.5]), rtol=0.03, atol=0)


def test_tuple_inputs_multi_target_and_forward_args():
    model = TwoInputNet(seed=1)
    g = torch.Generator().manual_seed(1)
    image, vector = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 4, generator=g)
    gain = torch.tensor([1.0, -2.0])
    tunnel = attrib.NoiseTunnel(attrib.Saliency(model))
    targets = torch.tensor([[0, 2], [1, 0]])
    maps = tunnel.attribute(
        (image, vector), target=targets, stdev=(0.1, 0.2), additional_forward_args=(gain,), seed=4, batch_size=3
    )
    assert isinstance(maps, tuple) and maps[0].shape == (2, 2, 2, 4, 4) and maps[1].shape == (2, 2, 4)
    for k in range(2):
        single = tunnel.attribute(
            (image, vector),
            target=targets[:, k],
            stdev=(0.1, 0.2),
            additional_forward_args=(gain,),
            seed=4,
            batch_size=3,
        )
        torch.testing.assert_close(maps[0][:, k], single[0])
        torch.testing.assert_close(maps[1][:, k], single[1])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"kind": "smooth"}, ValueError, "kind must be one of"),
        ({"n_samples": 0}, ValueError, "n_samples must be a positive int"),
        ({"n_samples": 2.5}, ValueError, "n_samples must be a positive int"),
        ({"n_samples": True}, ValueError, "n_samples must be a positive int"),
        ({"stdev": -1.0}, ValueError, "stdev must be a non-negative finite number"),
        ({"stdev": (0.1, 0.2)}, ValueError, "one number per input"),
        ({"stdev_mode": "percent"}, ValueError, "stdev_mode"),
        ({"seed": "x"}, TypeError, "seed must be an int"),
        ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
        ({"unknown_option": 1}, TypeError, "unknown_option"),
    ],
)
def test_bad_options_raise(kwargs, error, message):
    tunnel = attrib.NoiseTunnel(attrib.Saliency(SmoothNet()))
    with pytest.raises(error, match=message):
        tunnel.attribute(inputs_for((6,), 2, 0), target=0, **kwargs)


def test_wraps_only_attributions():
    with pytest.raises(TypeError, match="attrib.Attribution"):
        attrib.NoiseTunnel(SmoothNet())


@given(n=st.integers(1, 4), copies=st.integers(2, 5), data=st.data())
def test_noise_stream_rows_do_not_depend_on_the_blocks_and_a_retried_block_gets_the_same_noise(n, copies, data):
    g = torch.Generator().manual_seed(n * 10 + copies)
    drawn = [torch.randn(n, 3, generator=g) for _ in range(copies)]
    whole = torch.cat(drawn)  # sample-major rows: copy s of example e is row s * n + e
    source = iter(drawn)
    stream = NoiseStream(lambda: (next(source),), n)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n * copies - 1), max_size=4))))
    for start, stop in zip([0, *cuts], [*cuts, n * copies]):
        (rows,) = stream.rows(start, stop)
        assert torch.equal(rows, whole[start:stop])
        (again,) = stream.rows(start, stop)  # as after an out-of-memory retry: no new draw
        assert torch.equal(again, whole[start:stop])


def test_noise_stream_refuses_rows_of_a_copy_it_has_let_go():
    stream = NoiseStream(lambda: (torch.zeros(2, 1),), 2)
    stream.rows(0, 2)
    stream.rows(2, 4)  # copy 1: copy 0 is let go
    with pytest.raises(RuntimeError, match="in order"):
        stream.rows(0, 2)
