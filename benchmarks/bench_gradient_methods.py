"""Time attrib's gradient family against raw autograd and Captum on ResNet-50.

    python benchmarks/bench_gradient_methods.py                 # CPU, defaults below
    python benchmarks/bench_gradient_methods.py --device cuda --batch 8 --steps 50

Everything is measured in one run on the same model (torchvision ResNet-50,
random weights, 224 px inputs, eval mode, parameters frozen) and printed as a
markdown table with ratios:

* ``raw``: one ``model(x)`` plus ``torch.autograd.grad`` of the target score
  w.r.t. ``x`` (the least work any gradient method must do). Integrated
  Gradients is compared with ``steps`` such passes over the interpolated rows,
  at the same ``batch_size``.
* ``attrib / raw`` is the overhead of attrib; ``attrib / captum`` < 1 is faster.

Each time is the median of ``--repeats`` runs after one warm-up run; the
runs of one table row are interleaved so machine noise hits all columns alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision

import attrib

warnings.filterwarnings("ignore")  # Captum warns on every call about requires_grad


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function; runs are interleaved round-robin after one warm-up each,
    so slow drifts of a shared machine hit every column alike."""
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
    return {name: statistics.median(values) for name, values in samples.items()}


def raw_gradient(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    leaf = x.detach().requires_grad_(True)
    out = model(leaf)
    (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), leaf)
    return grad


def raw_path_gradients(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, batch_size: int
) -> torch.Tensor:
    """``steps`` forward+backward passes over the interpolated rows, ``batch_size`` rows at a time."""
    n = x.shape[0]
    alphas = torch.linspace(0, 1, steps, device=x.device)
    rows_total = steps * n
    total = torch.zeros_like(x)
    for start in range(0, rows_total, batch_size):
        rows = torch.arange(start, min(start + batch_size, rows_total), device=x.device)
        example, step = rows % n, rows // n
        batch = alphas[step].view(-1, 1, 1, 1) * x[example]
        grads = raw_gradient(model, batch, target[example])
        total.index_add_(0, example, grads)
    return total * x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1, help="images per attribution call (N)")
    parser.add_argument("--steps", type=int, default=16, help="Integrated Gradients n_steps")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="IG batch sizes to try")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-captum", action="store_true", help="skip the Captum columns")
    args = parser.parse_args()

    from captum.attr import Deconvolution, GuidedBackprop, InputXGradient, IntegratedGradients, Saliency

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    target = torch.arange(args.batch, device=device) % 1000
    r = args.repeats

    print(f"# ResNet-50, 224 px, N={args.batch}, device={device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"torch {torch.__version__}, median of {r}\n")
    print("| method | attrib (ms) | captum (ms) | reference (ms) | attrib / reference | attrib / captum |")
    print("|---|---:|---:|---:|---:|---:|")

    nan = float("nan")
    single = [
        ("Saliency", attrib.Saliency(model), Saliency(model)),
        ("InputXGradient", attrib.InputXGradient(model), InputXGradient(model)),
        ("GuidedBackprop", attrib.GuidedBackprop(model), GuidedBackprop(model)),
        ("Deconvnet", attrib.Deconvnet(model), Deconvolution(model)),
    ]
    for name, ours, theirs in single:
        fns = {
            "raw": lambda: raw_gradient(model, x, target),
            "ours": lambda: ours.attribute(x, target=target),
            "theirs": lambda: theirs.attribute(x.clone(), target=target),
        }
        if args.no_captum:
            del fns["theirs"]
        t = timed(fns, r, device)
        t.setdefault("theirs", nan)
        print(f"| {name} | {1e3 * t['ours']:.1f} | {1e3 * t['theirs']:.1f} | {1e3 * t['raw']:.1f} (1 fwd+bwd) | "
              f"{t['ours'] / t['raw']:.3f} | {t['ours'] / t['theirs']:.3f} |")

    rows = args.steps * args.batch
    sizes = args.batch_sizes or sorted({min(rows, b) for b in (4, 8, 16, 32, rows)})
    best = {"ours": float("inf"), "theirs": float("inf"), "raw": float("inf")}
    ig, captum_ig = attrib.IntegratedGradients(model), IntegratedGradients(model)
    for b in sizes:
        fns = {
            "raw": lambda: raw_path_gradients(model, x, target, args.steps, b),
            "ours": lambda: ig.attribute(x, target=target, n_steps=args.steps, batch_size=b, method="riemann_trapezoid"),
            "theirs": lambda: captum_ig.attribute(
                x.clone(), target=target, n_steps=args.steps, internal_batch_size=b, method="riemann_trapezoid"
            ),
        }
        if args.no_captum:
            del fns["theirs"]
        t = timed(fns, r, device)
        t.setdefault("theirs", nan)
        for key in best:
            best[key] = min(best[key], t[key])
        print(f"| IntegratedGradients, {args.steps} steps, batch_size={b} | {1e3 * t['ours']:.1f} | {1e3 * t['theirs']:.1f} | "
              f"{1e3 * t['raw']:.1f} ({args.steps} fwd+bwd) | {t['ours'] / t['raw']:.3f} | {t['ours'] / t['theirs']:.3f} |")
    print(f"| IntegratedGradients, best batch_size of each | {1e3 * best['ours']:.1f} | {1e3 * best['theirs']:.1f} | "
          f"{1e3 * best['raw']:.1f} | {best['ours'] / best['raw']:.3f} | {best['ours'] / best['theirs']:.3f} |")


if __name__ == "__main__":
    main()
