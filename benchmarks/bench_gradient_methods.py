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
* With ``K`` targets per example attrib makes one call (one forward pass per
  block, ``K`` backward passes); Captum and the raw reference make ``K``.
* ``attrib / raw`` is the overhead of attrib; ``attrib / captum`` < 1 is faster.

Each time is the median of ``--repeats`` runs (5x as many for single-pass
rows) after one warm-up run; the runs of one table row are interleaved so
machine noise hits all columns alike.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torchvision
from timing import timed

import attrib

warnings.filterwarnings("ignore")  # Captum warns on every call about requires_grad


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
    r, steps = args.repeats, args.steps
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"# ResNet-50, 224 px, N={args.batch}, device={device} ({where}), torch {torch.__version__}, "
        f"median of {5 * r} (single pass) / {r} runs\n"
    )
    print("| method | attrib (ms) | captum (ms) | reference (ms) | attrib / reference | attrib / captum |")
    print("|---|---:|---:|---:|---:|---:|")

    def row(name: str, fns: dict[str, Callable[[], object]], repeats: int, reference: str) -> dict[str, float]:
        if args.no_captum:
            del fns["theirs"]
        t = timed(fns, repeats, device)
        t.setdefault("theirs", float("nan"))
        report(name, t, reference)
        return t

    def report(name: str, t: dict[str, float], reference: str) -> None:
        print(
            f"| {name} | {1e3 * t['ours']:.1f} | {1e3 * t['theirs']:.1f} | {1e3 * t['raw']:.1f}{reference} | "
            f"{t['ours'] / t['raw']:.3f} | {t['ours'] / t['theirs']:.3f} |"
        )

    for _ in range(3):  # warm the allocator and caches before the first row
        raw_gradient(model, x, target)
    single = [
        ("Saliency", attrib.Saliency(model), Saliency(model)),
        ("InputXGradient", attrib.InputXGradient(model), InputXGradient(model)),
        ("GuidedBackprop", attrib.GuidedBackprop(model), GuidedBackprop(model)),
        ("Deconvnet", attrib.Deconvnet(model), Deconvolution(model)),
    ]
    for name, ours, theirs in single:
        fns = {
            "raw": lambda: raw_gradient(model, x, target),
            "ours": lambda ours=ours: ours.attribute(x, target=target),
            "theirs": lambda theirs=theirs: theirs.attribute(x.clone(), target=target),
        }
        row(name, fns, 5 * r, " (1 fwd+bwd)")  # single passes are short: take more samples

    rows = steps * args.batch
    sizes = args.batch_sizes or sorted({min(rows, b) for b in (4, 8, 16, 32, rows)})
    best = {"ours": float("inf"), "theirs": float("inf"), "raw": float("inf")}
    ig, captum_ig = attrib.IntegratedGradients(model), IntegratedGradients(model)
    rule = "riemann_trapezoid"
    for b in sizes:
        fns = {
            "raw": lambda b=b: raw_path_gradients(model, x, target, steps, b),
            "ours": lambda b=b: ig.attribute(x, target=target, n_steps=steps, batch_size=b, method=rule),
            "theirs": lambda b=b: captum_ig.attribute(
                x.clone(), target=target, n_steps=steps, internal_batch_size=b, method=rule
            ),
        }
        t = row(f"IntegratedGradients, {steps} steps, batch_size={b}", fns, r, f" ({steps} fwd+bwd)")
        best = {key: min(value, t[key]) for key, value in best.items()}
    report("IntegratedGradients, best batch_size of each", best, "")

    # Several targets per example: attrib makes one call (one forward pass per
    # block, K backward passes); Captum and the raw reference make one per target.
    k, b = 3, min(8, rows)
    targets = torch.stack([(target + j) % 1000 for j in range(k)], dim=1)
    fns = {
        "raw": lambda: [raw_gradient(model, x, targets[:, j]) for j in range(k)],
        "ours": lambda: attrib.Saliency(model).attribute(x, target=targets),
        "theirs": lambda: [Saliency(model).attribute(x.clone(), target=targets[:, j]) for j in range(k)],
    }
    row(f"Saliency, {k} targets per example", fns, r, f" ({k} fwd+bwd)")
    fns = {
        "raw": lambda: [raw_path_gradients(model, x, targets[:, j], steps, b) for j in range(k)],
        "ours": lambda: ig.attribute(x, target=targets, n_steps=steps, batch_size=b, method=rule),
        "theirs": lambda: [
            captum_ig.attribute(x.clone(), target=targets[:, j], n_steps=steps, internal_batch_size=b, method=rule)
            for j in range(k)
        ],
    }
    row(f"IntegratedGradients, {k} targets, {steps} steps, batch_size={b}", fns, r, f" ({k} x {steps} fwd+bwd)")


if __name__ == "__main__":
    main()
