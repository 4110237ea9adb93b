"""CUDA variants: every method on the GPU agrees with the CPU and stays device-resident.

Skipped (as hardware-absent) on machines without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients

import attrib

from .models import ResidualBNNet, inputs_for
from .test_properties import METHODS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is absent on this machine")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cuda_matches_cpu(name):
    make, options, _, _ = METHODS[name]
    model = ResidualBNNet(seed=1).double()
    x = inputs_for((3, 6, 6), 3, 1, torch.float64)
    cpu = make(model).attribute(x, target=[0, 2, 4], **options)
    gpu_model = ResidualBNNet(seed=1).double().cuda()
    gpu = make(gpu_model).attribute(x.cuda(), target=torch.tensor([0, 2, 4], device="cuda"), **options)
    assert gpu.device.type == "cuda"
    if name == "noise_tunnel":  # CUDA and CPU generators draw different streams
        assert gpu.shape == cpu.shape and torch.isfinite(gpu).all()
    else:
        torch.testing.assert_close(gpu.cpu(), cpu)


def test_cuda_integrated_gradients_match_captum_and_are_chunk_invariant():
    model = ResidualBNNet(seed=2).cuda()
    x = inputs_for((3, 6, 6), 4, 2).cuda()
    targets = torch.tensor([1, 0, 3, 2], device="cuda")
    ours = attrib.IntegratedGradients(model).attribute(x, target=targets, n_steps=20, batch_size=13)
    theirs = CaptumIntegratedGradients(model).attribute(x.clone(), target=targets, n_steps=20, internal_batch_size=13)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
    whole = attrib.IntegratedGradients(model).attribute(x, target=targets, n_steps=20)
    torch.testing.assert_close(ours, whole, rtol=1e-5, atol=1e-6)


def test_cuda_noise_tunnel_seeded_and_generator_device_checked():
    model = ResidualBNNet(seed=3).cuda()
    x = inputs_for((3, 6, 6), 2, 3).cuda()
    tunnel = attrib.NoiseTunnel(attrib.Saliency(model))
    before = torch.cuda.get_rng_state()
    a = tunnel.attribute(x, target=1, seed=5, batch_size=3)
    b = tunnel.attribute(x, target=1, seed=5)
    assert torch.equal(torch.cuda.get_rng_state(), before)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="generator lives on"):
        tunnel.attribute(x, target=1, generator=torch.Generator())
