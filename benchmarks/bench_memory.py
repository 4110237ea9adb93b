"""Peak memory against the number of steps, samples, masks, windows, channels and areas.

    python benchmarks/bench_memory.py                      # CPU: process peak RSS
    python benchmarks/bench_memory.py --device cuda        # GPU: torch.cuda.max_memory_allocated
    python benchmarks/bench_memory.py --cases ig,rise --batch-size 16

Every method's memory should be bounded by ``batch_size``: a call with 20x the
masks or steps takes 20x the time but not 20x the memory. Each case runs twice
(a small and a large count) at the same ``batch_size``, each run in a fresh
subprocess so the peaks do not mix. The table gives the extra memory of the
call over the process after setup (model built, inputs made), the large/small
ratio of that extra memory, and that of the work (model rows). A ratio near 1
means the peak does not depend on the count.

The model is a small CNN (64 px, 32-64 channels) so that the whole table runs
in a few minutes on a loaded CPU; ScoreCAM explains a 1x1 convolution with 2048
channels (against 128) on 16 px images. Its wide layer costs the model itself
2 MiB per row (64 MiB per block of 32 rows) whatever the method, which is most
of ScoreCAM's growth; holding all 2048 masked copies' activations at once
would take 4 GiB. Cases whose method is not installed print
``n/a``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

CASES: dict[str, tuple[str, str, Any, Any]] = {
    # name: (what varies, method, small, large)
    "ig": ("n_steps", "IntegratedGradients", 50, 1000),
    "noise_tunnel": ("n_samples", "NoiseTunnel(Saliency)", 25, 500),
    "rise": ("num_masks", "RISE", 500, 8000),
    "occlusion": ("stride", "Occlusion (window 8)", 8, 1),
    "score_cam": ("channels", "ScoreCAM", 128, 2048),
    "extremal": ("areas", "ExtremalPerturbation", 1, 8),
}


class SmallCNN(nn.Module):
    """conv 3->32, conv 32->width (the explained layer ``features.2``), pool, linear to 10 classes."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, width, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _call(case: str, count: Any, batch_size: int, device: torch.device) -> Callable[[], int]:
    """Build the model and inputs for one run; return the call, which gives the number of model rows."""
    g = torch.Generator().manual_seed(0)
    if case == "score_cam":  # a cheap wide layer: 1x1 conv 3 -> count channels on 16 px images
        model = nn.Sequential(
            nn.Conv2d(3, count, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(count, 10)
        )
        layer = "0"
        x = torch.rand((1, 3, 16, 16), generator=g)
    else:
        model, layer = SmallCNN(64), "features.2"
        x = torch.rand((2, 3, 64, 64), generator=g)
    model = model.to(device).eval()
    x = x.to(device)
    rows = [0]
    model.register_forward_pre_hook(lambda m, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))

    def run() -> int:
        if case == "ig":
            from attrib.methods.integrated_gradients import IntegratedGradients

            IntegratedGradients(model).attribute(x, target=1, n_steps=count, batch_size=batch_size)
        elif case == "noise_tunnel":
            from attrib.methods.gradient import Saliency
            from attrib.methods.noise_tunnel import NoiseTunnel

            NoiseTunnel(Saliency(model)).attribute(x, target=1, n_samples=count, seed=0, batch_size=batch_size)
        elif case == "rise":
            from attrib.methods.rise import RISE

            RISE(model).attribute(x, target=1, num_masks=count, seed=0, batch_size=batch_size)
        elif case == "occlusion":
            from attrib.methods.occlusion import Occlusion

            Occlusion(model).attribute(x, target=1, window=(3, 8, 8), stride=(3, count, count), batch_size=batch_size)
        elif case == "score_cam":
            from attrib.methods.score_cam import ScoreCAM

            ScoreCAM(model, layer).attribute(x, target=1, batch_size=batch_size)
        elif case == "extremal":
            from attrib.methods.extremal import ExtremalPerturbation

            areas = [0.05 * (i + 1) for i in range(count)]
            ExtremalPerturbation(model).attribute(x, target=1, areas=areas, max_iter=20, seed=0, batch_size=batch_size)
        return rows[0]

    return run


def child(case: str, count: Any, batch_size: int, device_name: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    device = torch.device(device_name)
    try:
        run = _call(case, count, batch_size, device)
    except ImportError as err:
        print(json.dumps({"error": f"n/a ({err.name} missing)"}))
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _current_rss()
    start = time.perf_counter()
    try:
        rows = run()
    except ImportError as err:
        print(json.dumps({"error": f"n/a ({err.name} missing)"}))
        return
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"extra": max(peak - base, 0), "rows": rows, "seconds": seconds}))


def measure(case: str, count: Any, batch_size: int, device: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", case, str(count), str(batch_size), device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed: {tail[:80]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    args = parser.parse_args()
    measure_name = "CUDA peak allocated" if args.device.startswith("cuda") else "peak RSS"
    print(f"device {args.device}, batch_size {args.batch_size}, extra {measure_name} over the process after setup\n")
    print("| case | varies | small | large | extra MiB (small) | extra MiB (large) | memory ratio | work ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        what, label, small, large = CASES[case]
        a = measure(case, small, args.batch_size, args.device)
        b = measure(case, large, args.batch_size, args.device)
        if "error" in a or "error" in b:
            print(f"| {label} | {what} | {small} | {large} | {a.get('error', '')} | {b.get('error', '')} | | |")
            continue
        mib_a, mib_b = a["extra"] / 2**20, b["extra"] / 2**20
        ratio = mib_b / mib_a if mib_a > 0 else float("nan")
        work = b["rows"] / a["rows"] if a["rows"] else float("nan")
        print(f"| {label} | {what} | {small} | {large} | {mib_a:.1f} | {mib_b:.1f} | {ratio:.2f} | {work:.1f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
