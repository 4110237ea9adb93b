"""Timing shared by the benchmark scripts: interleaved runs, so a shared machine's drifts hit every column alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def timed(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device | str = "cpu",
    reduce: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """``reduce`` (the median by default) of each function's seconds over ``repeats`` interleaved rounds.

    Every function runs once as a warm-up; then each round runs every
    function once, in order, synchronising CUDA around each run.
    """
    device = torch.device(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: reduce(values) for name, values in samples.items()}
