"""Memory is bounded by ``batch_size``, not by the number of steps, samples, masks, windows or channels.

Two deterministic measures (process RSS is left to ``benchmarks/bench_memory.py``):

* the largest block of rows the model is ever handed (a model that records its batch), and
* the peak of live tensor bytes during the call, tracked op by op with a ``TorchDispatchMode``
  (every tensor produced by an operator, forward and backward, counted once per storage
  until the last tensor using that storage is freed).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attrib.methods.gradient import Saliency
from attrib.methods.integrated_gradients import IntegratedGradients
from attrib.methods.noise_tunnel import NoiseTunnel

from .models import inputs_for, reinitialise


class PeakTensorBytes(TorchDispatchMode):
    """Tracks the peak number of bytes held by live tensors created while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, live tensors]
        self.current = 0
        self.peak = 0

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        address = storage.data_ptr()
        if address == 0:
            return
        entry = self.live.get(address)
        if entry is None:
            entry = self.live[address] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, address)

    def _release(self, address: int) -> None:
        entry = self.live.get(address)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self.live[address]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


class BlockRecorder(nn.Module):
    """Wraps a model and records the number of rows of every forward call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.model(x)


def _mlp() -> nn.Module:
    # Few operators per block keep the op-by-op tracking cheap; the inputs are what scales.
    return reinitialise(nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 16), nn.Tanh(), nn.Linear(16, 5)), 3).eval()


def _measure(call: Callable[[nn.Module], Any], model: nn.Module | None = None) -> tuple[int, int, int]:
    """(peak live tensor bytes, largest block, total rows) of one call on a fresh recorder."""
    recorder = BlockRecorder(_mlp() if model is None else model)
    with PeakTensorBytes() as tracker:
        call(recorder)
    return tracker.peak, max(recorder.rows), sum(recorder.rows)


def _blocks(call: Callable[[nn.Module], Any]) -> tuple[int, int]:
    """(largest block, total rows) of one call, without the op-by-op tracking."""
    recorder = BlockRecorder(_mlp())
    call(recorder)
    return max(recorder.rows), sum(recorder.rows)


X = inputs_for((3, 12, 12), 2, 3)
BATCH = 16

#: name -> (call with a small count, call with a large count, count ratio)
CASES: dict[str, tuple[Callable[[nn.Module], Any], Callable[[nn.Module], Any], int]] = {
    "integrated_gradients_steps": (
        lambda m: IntegratedGradients(m).attribute(X, target=1, n_steps=25, batch_size=BATCH),
        lambda m: IntegratedGradients(m).attribute(X, target=1, n_steps=500, batch_size=BATCH),
        20,
    ),
    "noise_tunnel_samples": (
        lambda m: NoiseTunnel(Saliency(m)).attribute(X, target=1, n_samples=25, seed=0, batch_size=BATCH),
        lambda m: NoiseTunnel(Saliency(m)).attribute(X, target=1, n_samples=500, seed=0, batch_size=BATCH),
        20,
    ),
    "smoothgrad_ig_steps_and_samples": (
        lambda m: NoiseTunnel(IntegratedGradients(m)).attribute(
            X, target=1, n_samples=8, n_steps=10, seed=0, batch_size=BATCH
        ),
        lambda m: NoiseTunnel(IntegratedGradients(m)).attribute(
            X, target=1, n_samples=24, n_steps=30, seed=0, batch_size=BATCH
        ),
        9,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_peak_memory_depends_on_batch_size_not_on_the_count(name):
    # Both counts fill at least one whole block, so only the count differs, not the block size.
    small, large, ratio = CASES[name]
    small_peak, small_block, small_rows = _measure(small)
    large_peak, large_block, large_rows = _measure(large)
    assert large_rows >= ratio * small_rows * 0.9  # the large call really did ~ratio times the work
    assert small_block <= BATCH and large_block <= BATCH
    assert large_peak <= 1.25 * small_peak, (small_peak, large_peak)


def test_without_a_batch_size_the_peak_does_grow_so_the_measure_can_tell():
    small_peak, _, _ = _measure(lambda m: IntegratedGradients(m).attribute(X, target=1, n_steps=20))
    large_peak, _, _ = _measure(lambda m: IntegratedGradients(m).attribute(X, target=1, n_steps=200))
    assert large_peak > 5 * small_peak


def test_integrated_gradients_with_1000_steps_never_hands_the_model_more_than_batch_size_rows():
    block, rows = _blocks(lambda m: IntegratedGradients(m).attribute(X, target=1, n_steps=1000, batch_size=64))
    assert block == 64 and rows == 2000


# --- The perturbation and channel methods -----------------------------------------------------


BIG = inputs_for((3, 96, 96), 1, 4)


def _pooled() -> nn.Module:
    return reinitialise(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 5)), 4).eval()


def _rise(masks: int) -> Callable[[nn.Module], Any]:
    from attrib.methods.rise import RISE

    # 96 px images: RISE's fixed chunk of mask values (2**22) then holds 455 masks, so from 1000 masks on
    # the chunks (two alive while the next is built) are full and the peak must stay flat.
    return lambda m: RISE(m).attribute(BIG, target=1, num_masks=masks, seed=0, batch_size=128)


def _occlusion(stride: int) -> Callable[[nn.Module], Any]:
    from attrib.methods.occlusion import Occlusion

    return lambda m: Occlusion(m).attribute(X, target=1, window=(3, 4, 4), stride=(3, stride, stride), batch_size=BATCH)


def _extremal(areas: int) -> Callable[[nn.Module], Any]:
    from attrib.methods.extremal import ExtremalPerturbation

    options = {"max_iter": 3, "seed": 0, "sigma": 2.0, "max_blur": 2.0, "num_levels": 2, "step": 3}
    values = [0.1 + 0.05 * i for i in range(areas)]
    return lambda m: ExtremalPerturbation(m).attribute(X, target=1, areas=values, batch_size=2, **options)


@pytest.mark.parametrize(
    "name, small, large, ratio",
    [
        ("rise_masks", _rise(1000), _rise(3000), 3),
        pytest.param("rise_8000_masks", _rise(1000), _rise(8000), 8, marks=pytest.mark.slow),
        ("occlusion_stride_1", _occlusion(4), _occlusion(1), 9),
        ("extremal_8_areas", _extremal(2), _extremal(8), 4),
    ],
)
def test_perturbation_peak_memory_depends_on_batch_size_not_on_the_count(name, small, large, ratio):
    model = _pooled if name.startswith("rise") else _mlp
    small_peak, small_block, small_rows = _measure(small, model())
    large_peak, large_block, large_rows = _measure(large, model())
    assert large_rows >= ratio * small_rows * 0.9
    assert large_block <= max(BATCH, small_block) <= 128
    assert large_peak <= 1.25 * small_peak, (small_peak, large_peak)


class WideNet(nn.Module):
    """conv 3 -> ``channels`` (the explained layer ``conv``), pooled to 5 classes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5))
        reinitialise(self, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def test_score_cam_on_2048_channels_is_bounded_by_the_block_not_the_channels():
    from attrib.methods.score_cam import ScoreCAM

    channels, x = 2048, inputs_for((3, 6, 6), 1, 5)
    per_row = channels * 6 * 6 * 4  # the explained layer's output for one row: the model's own cost per row

    def measure(batch_size: int) -> tuple[int, int, int]:
        recorder = BlockRecorder(WideNet(channels))
        with PeakTensorBytes() as tracker:
            ScoreCAM(recorder, "model.conv").attribute(x, target=1, batch_size=batch_size)
        return tracker.peak, max(recorder.rows), sum(recorder.rows)

    peak, block, rows = measure(128)
    small_peak, small_block, _ = measure(32)
    assert block <= 128 and small_block <= 32 and rows >= channels
    # All 2048 copies at once would hold 2048 * per_row bytes; a block holds 128 rows' worth.
    assert peak < 3 * 128 * per_row, (peak, per_row)
    assert small_peak < peak  # the peak follows batch_size
