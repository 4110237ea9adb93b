"""Time attrib's ExtremalPerturbation against TorchRay's ``extremal_perturbation`` and against its own limit.

    python benchmarks/bench_extremal.py                                   # CPU defaults below
    python benchmarks/bench_extremal.py --model resnet50 --size 224 --iters 800 --images 8 --device cuda
    python benchmarks/bench_extremal.py --model shapes-cnn --step 2 --sigma 6 --areas 0.025 0.05 0.1 --images 8

Each column runs in its own subprocess (so its peak resident memory is its
own) on the same model (torchvision, random weights, eval mode; or a shipped
model, ``shapes-cnn``/``shapes-resnet``, on 64-px images) and inputs:

* ``torchray``: one ``extremal_perturbation`` call per image, all areas in
  the call (TorchRay batches the areas of one image).
* ``attrib``: one ``ExtremalPerturbation.attribute`` call for all images and
  areas (every step is one forward and one backward pass over all rows).
* ``limit``: the least work any implementation must do: ``iters x rows``
  model evaluations (rows = images x areas x copies per variant), each
  costing the best per-row forward+backward time (input gradient only) over
  block sizes 1, 2, 4, ... up to ``rows``.

Both methods run ``--iters`` steps with jitter on, the same ``--step`` and
``--sigma`` (TorchRay's 7 and 21 by default). Times are the median over
``--repeats`` rounds; each round runs every column once, in a fresh process,
after a short warm-up. ``peak RSS`` is the process's maximum resident set
size (``idle``: the same process before any work, i.e. imports, model and
inputs). The table is markdown.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torchvision

warnings.filterwarnings("ignore")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)  # the benchmark's own process: the global RNG is ours to use
    if args.model.startswith("shapes-"):
        from attrib.data import load_model

        model = load_model(args.model).to(args.device)
    else:
        model = getattr(torchvision.models, args.model)(weights=None).eval().to(args.device)
    if args.model.startswith("shapes-"):
        from attrib.data import make_shapes

        x = make_shapes(args.images, seed=2026).images.to(args.device)  # the benchmark's images, 64 px
    else:
        g = torch.Generator().manual_seed(1)
        x = torch.rand(args.images, 3, args.size, args.size, generator=g).to(args.device)
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, targets


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int, device: str) -> float:
    samples = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def rows_per_step(args: argparse.Namespace) -> int:
    return args.images * len(args.areas) * (2 if args.variant == "dual" else 1)


def worker(args: argparse.Namespace) -> dict[str, float]:
    """Run one column in this process; return its time and memory."""
    torch.set_num_threads(args.threads)
    model, x, targets = build(args)
    idle = peak_rss_mb()
    if args.worker == "torchray":
        from torchray.attribution.extremal_perturbation import extremal_perturbation

        def run(iters: int) -> None:
            for i in range(args.images):
                extremal_perturbation(
                    model, x[i : i + 1], int(targets[i]), areas=args.areas, max_iter=iters, variant=args.variant,
                    step=args.step, sigma=args.sigma,
                )
    elif args.worker == "attrib":
        from attrib.methods.extremal import ExtremalPerturbation

        method = ExtremalPerturbation(model)

        def run(iters: int) -> None:
            method.attribute(
                x, targets, areas=args.areas, max_iter=iters, variant=args.variant, seed=0,
                batch_size=args.batch_size, step=args.step, sigma=args.sigma,
            )
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        rows = rows_per_step(args)
        sizes = sorted({min(2**k, rows) for k in range(rows.bit_length() + 1)})
        best = float("inf")
        for size in sizes:
            batch = x[torch.arange(size, device=x.device) % args.images].clone().requires_grad_(True)
            classes = targets[torch.arange(size, device=x.device) % args.images]

            def step(batch: torch.Tensor = batch, classes: torch.Tensor = classes) -> None:
                torch.autograd.grad(model(batch).gather(1, classes.view(-1, 1)).sum(), batch)

            step()
            best = min(best, median_time(step, max(3, args.repeats), args.device) / size)
        return {"seconds": best * rows * args.iters, "peak_rss_mb": peak_rss_mb(), "idle_rss_mb": idle}
    run(2)  # warm-up
    seconds = median_time(lambda: run(args.iters), args.repeats, args.device)
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "idle_rss_mb": idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18",
                        help="a torchvision.models constructor name, or shapes-cnn / shapes-resnet (64 px)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--images", type=int, default=2, help="images per call (N)")
    parser.add_argument("--areas", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--iters", type=int, default=20, help="max_iter of both methods")
    parser.add_argument("--variant", default="preserve", choices=["preserve", "delete", "dual"])
    parser.add_argument("--step", type=int, default=7, help="mask grid spacing in px, both methods")
    parser.add_argument("--sigma", type=float, default=21.0, help="mask smoothness in px, both methods")
    parser.add_argument("--batch-size", type=int, default=None, help="attrib's batch_size (default: all rows)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["torchray", "attrib", "limit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    # One subprocess per column and round, the columns interleaved round by round so that drifts of a
    # shared machine hit them alike; each process times one run after its warm-up.
    runs: dict[str, list[dict[str, float]]] = {column: [] for column in ("limit", "attrib", "torchray")}
    for _ in range(args.repeats):
        for column, samples in runs.items():
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--repeats", "1", "--worker", column],
                capture_output=True, text=True, check=True,
            )
            samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {
        column: {
            "seconds": statistics.median(s["seconds"] for s in samples),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
            "idle_rss_mb": max(s["idle_rss_mb"] for s in samples),
        }
        for column, samples in runs.items()
    }

    n = args.images
    size = 64 if args.model.startswith("shapes-") else args.size
    print(
        f"ExtremalPerturbation, {args.model} at {size} px on {args.device} ({args.threads} threads): "
        f"{n} images x {len(args.areas)} areas, {args.variant}, {args.iters} iterations, step {args.step}, "
        f"sigma {args.sigma:g}, "
        f"{rows_per_step(args)} rows per step\n"
    )
    print("| column | total (s) | per image (s) | torchray / this | this / limit | peak RSS (MB) | idle RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    limit = results["limit"]["seconds"]
    theirs = results["torchray"]["seconds"]
    for column in ("attrib", "torchray", "limit"):
        r = results[column]
        print(
            f"| {column} | {r['seconds']:.2f} | {r['seconds'] / n:.3f} | {theirs / r['seconds']:.2f} | "
            f"{r['seconds'] / limit:.2f} | {r['peak_rss_mb']:.0f} | {r['idle_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
