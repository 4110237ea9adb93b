"""Throughput of dataset-scale runs on one and on several processes, and what ImageNet-val would cost.

    python benchmarks/bench_dataset.py                          # CPU, defaults below
    python benchmarks/bench_dataset.py --items 64 --methods saliency,integratedgradients --procs 1,2,4

Part 1 runs ``attrib.explain_dataset`` over ``--items`` synthetic 64 px images
with torchvision's ResNet-18 (random weights, 10 classes) for each method of
the ``attrib`` command's registry (its default options), once as one process
and once under ``torchrun --nproc_per_node=K`` (gloo, CPU) for each ``K`` of
``--procs``. Each process gets ``--threads-per-proc`` CPU threads (default 1),
as each GPU process would get its own GPU: K processes use K times the
threads of one, on the same machine. Items/s
count the items of the run divided by the wall time from the moment every rank
is ready (model built, process group up) to the moment rank 0 has written the
manifest: process start-up is left out, shard writing and the final barrier
are in.

Part 2 prices a run over ImageNet's validation set (50,000 images, ResNet-50,
224 px): model evaluations per map (at the registry's options) times the
measured time of one evaluation here (forward+backward for gradient methods,
forward only for the perturbation ones that need no gradient; per-method
counts at 224 px, e.g. one pass per layer4 channel for Score-CAM), and the same at
a round 1,000 evaluations per second so the reader can scale by the rate of
their own GPU. Nothing in part 2 is extrapolated from part 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

IMAGENET_VAL = 50_000
IMAGENET_SIDE = 224
RESNET50_LAYER4_CHANNELS = 2048


def imagenet_evaluations(name: str, options: dict[str, Any], fallback: int) -> tuple[int, bool]:
    """Model evaluations per map of ResNet-50 at 224 px with ``options``, and whether each needs a backward pass.

    The +1 forward pass that finds a top-1 target is left out (targets are labels here).
    """
    if name in ("integratedgradients",):
        return int(options.get("n_steps", 50)), True
    if name == "smoothgrad":
        return int(options.get("n_samples", 25)), True
    if name == "guidedgradcam":
        return 2, True  # Guided Backprop times Grad-CAM
    if name == "eigencam":
        return 1, False
    if name in ("scorecam", "ablationcam"):
        return RESNET50_LAYER4_CHANNELS, False  # one masked (or ablated) forward pass per channel of layer4
    if name == "occlusion":
        window, stride = int(options.get("window", 12)), int(options.get("stride", 4))
        return ((IMAGENET_SIDE - window) // stride + 1) ** 2, False
    if name == "rise":
        return int(options.get("num_masks", 4000)), False
    if name == "extremal":
        areas = options.get("areas", [0.1])
        return int(options.get("max_iter", 800)) * (len(areas) if isinstance(areas, (list, tuple)) else 1), True
    return fallback, True


def _dataset(items: int, size: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(items, 3, size, size, generator=g), torch.randint(0, 10, (items,), generator=g))


def _model() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def worker(method_name: str, out: str, items: int, size: int, batch_size: int) -> None:
    """One rank of a timed run: prints ``{"seconds": ...}`` on rank 0."""
    from attrib.cli.registry import build_method, default_options
    from attrib.dataset import explain_dataset, rank_context

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    context = rank_context()
    method = build_method(method_name, _model())
    dataset = _dataset(items, size)
    context.all_ok(True)  # every rank ready
    start = time.perf_counter()
    explain_dataset(
        method, dataset, out, target="label", batch_size=batch_size, progress=False, **default_options(method_name)
    )
    if context.rank == 0:
        print(json.dumps({"seconds": time.perf_counter() - start}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed_run(method: str, procs: int, args: argparse.Namespace) -> float:
    """Wall seconds of one run of ``method`` on ``procs`` processes (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        job = [__file__, "--worker", method, str(Path(tmp) / "store"), str(args.items), str(args.size), str(args.batch)]
        if procs == 1:
            command = [sys.executable, *job]
        else:
            command = [
                sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={procs}",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *job,
            ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_proc), "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(f"{method} on {procs} process(es) failed:\n{result.stderr[-2000:]}")
        line = [ln for ln in result.stdout.splitlines() if ln.startswith("{")][-1]
        return float(json.loads(line)["seconds"])


def evaluation_seconds(backward: bool, batch: int, repeats: int) -> float:
    """Seconds per image of one ResNet-50 evaluation at 224 px (median of ``repeats``)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(batch, 3, 224, 224)
    samples = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        if backward:
            leaf = x.clone().requires_grad_(True)
            torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
        else:
            with torch.no_grad():
                model(x)
        if i:  # the first run warms up
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) / batch


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=16, help="items per run (default 16)")
    parser.add_argument("--size", type=int, default=64, help="image side of part 1 (default 64)")
    parser.add_argument("--batch", type=int, default=4, help="items per attribute call / shard (default 4)")
    parser.add_argument("--methods", default="saliency,integratedgradients,gradcam,occlusion")
    parser.add_argument("--procs", default="2", help="process counts to compare with one process (default 2)")
    parser.add_argument("--threads-per-proc", type=int, default=1, help="CPU threads of each process (default 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of part 2")
    parser.add_argument("--skip-imagenet", action="store_true", help="leave out part 2")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]  # --methods "" leaves out part 1
    counts = [1, *sorted({int(p) for p in args.procs.split(",")} - {1})]

    if methods:
        part1(methods, counts, args)
    if not args.skip_imagenet:
        part2(args)


def part1(methods: list[str], counts: list[int], args: argparse.Namespace) -> None:
    print(f"## Part 1: items/s, ResNet-18 at {args.size} px, {args.items} items, {args.batch} items per shard, "
          f"{args.threads_per_proc} CPU thread(s) per process\n")
    header = ["method", *(f"{k} proc items/s" for k in counts), *(f"{k} procs / 1" for k in counts[1:])]
    widths = [max(len(h), 22) for h in header]
    print(table([h.ljust(w) for h, w in zip(header, widths)], []), flush=True)
    for method in methods:  # one row at a time, so a long run shows its progress
        speeds = [args.items / timed_run(method, k, args) for k in counts]
        cells = [method, *(f"{s:.2f}" for s in speeds), *(f"{s / speeds[0]:.2f}x" for s in speeds[1:])]
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |", flush=True)



def part2(args: argparse.Namespace) -> None:
    from attrib.cli.registry import METHODS

    torch.set_num_threads(args.threads)
    grad_s = evaluation_seconds(True, batch=4, repeats=3)
    fwd_s = evaluation_seconds(False, batch=4, repeats=3)
    print(f"\n## Part 2: ImageNet val ({IMAGENET_VAL:,} images), ResNet-50 at 224 px\n")
    print(f"Measured here ({args.threads} CPU threads): {1 / grad_s:.2f} forward+backward and {1 / fwd_s:.2f} "
          "forward-only evaluations per second.\n")
    rows = []
    for name, spec in METHODS.items():
        evals, backward = imagenet_evaluations(name, spec.options, spec.evaluations)
        forward_only = not backward
        per_eval = fwd_s if forward_only else grad_s
        here_h = IMAGENET_VAL * evals * per_eval / 3600
        at_1000_h = IMAGENET_VAL * evals / 1000 / 3600
        options = ", ".join(f"{k}={v}" for k, v in spec.options.items()) or "-"
        kind = "fwd" if forward_only else "fwd+bwd"
        rows.append([spec.title, options, f"{evals} {kind}", f"{here_h:,.1f}", f"{at_1000_h:,.2f}"])
    print(table(["method", "options", "evaluations / map", "hours here (CPU)", "hours at 1,000 evals/s"], rows))
    print("\nWith K GPUs (processes) the hours divide by about K: shards are dealt round-robin and need no "
          "communication until the final barrier.")


def _entry(argv: list[str]) -> Any:
    if argv[:1] == ["--worker"]:
        _, method, out, items, size, batch = argv
        return worker(method, out, int(items), int(size), int(batch))
    return main(argv)


if __name__ == "__main__":
    _entry(sys.argv[1:])
