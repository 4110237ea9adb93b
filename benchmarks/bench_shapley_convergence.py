"""Shapley estimators against exact Shapley values: error and time per model-evaluation budget, Captum alongside.

    python benchmarks/bench_shapley_convergence.py                        # 8 features, 8 examples, CPU
    python benchmarks/bench_shapley_convergence.py --features 6 --device cuda --examples 64

The model is a random tanh MLP over ``--features`` scalar features (each its
own player), explained for ``--examples`` inputs against a zero baseline.
The exact Shapley values come from every coalition's score and the subset
formula, computed here independently of attrib; attrib's KernelShap with
``n_samples = 2^F`` (enumeration) is checked against them first.

Each row is a *budget*: model evaluations per example. KernelSHAP gets
``n_samples = budget`` (the empty and full coalitions included; sampled
below ``2^F``; from ``2^F`` on it enumerates, is exact and evaluates only
``2^F`` coalitions); Shapley value sampling gets
``max(1, (budget - 2) // (F - 1))`` orders (``2 + P (F - 1)`` evaluations).
``error`` is the relative L2 error over all examples,
``||phi - phi*|| / ||phi*||``, averaged over ``--seeds`` seeds (Captum is
seeded through torch's global RNG, which it reads). ``time`` is the median
of ``--repeats`` interleaved runs; ``captum / attrib`` compares the same
estimator at the same settings. attrib scores ``--batch-size`` rows per
forward pass; Captum gets ``perturbations_per_eval = batch_size // N`` for
Shapley sampling (it evaluates all examples together) and ``batch_size``
for KernelSHAP (it explains one example at a time). Captum's KernelSHAP
weighs the empty and full coalitions 1e6; attrib's holds them as
constraints. The last table is the time each estimator takes to reach a
given error: the smallest budget of the grid whose mean error is below it.
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch
from timing import timed
from torch import nn

from attrib.methods.kernel_shap import KernelShap
from attrib.methods.shapley import ShapleyValueSampling

warnings.filterwarnings("ignore")  # Captum warns on every call with several examples


def mlp(features: int, hidden: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 3)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.3))
    return model.eval()


def exact_shapley(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(N, F)`` exact Shapley values by the subset formula over all ``2^F`` coalitions (zero baseline)."""
    n, f = x.shape
    codes = torch.arange(2**f, device=x.device)
    bits = ((codes.unsqueeze(1) >> torch.arange(f, device=x.device)) & 1).to(x.dtype)  # (2^F, F)
    with torch.no_grad():
        rows = (bits.unsqueeze(1) * x.unsqueeze(0)).reshape(-1, f)
        v = model(rows).view(2**f, n, -1).gather(2, target.view(1, n, 1).expand(2**f, n, 1))[..., 0].double()
    size = bits.sum(1).long()
    weight = torch.tensor(
        [math.factorial(s) * math.factorial(f - s - 1) / math.factorial(f) for s in range(f)],
        dtype=torch.float64,
        device=x.device,
    )
    phi = torch.zeros(n, f, dtype=torch.float64, device=x.device)
    for j in range(f):
        without = codes[(codes >> j) & 1 == 0]
        phi[:, j] = (weight[size[without]].unsqueeze(1) * (v[without | (1 << j)] - v[without])).sum(0)
    return phi


def estimators(args: argparse.Namespace, model: nn.Module, x: torch.Tensor, target: torch.Tensor, budget: int):
    """``name -> (seed -> phi)`` for every estimator at ``budget`` evaluations per example."""
    from captum.attr import KernelShap as CaptumKernelShap
    from captum.attr import ShapleyValueSampling as CaptumShapley

    n, f = x.shape
    orders = max(1, (budget - 2) // (f - 1))
    rows = args.batch_size

    def captum(method, **options):
        def run(seed: int) -> torch.Tensor:
            torch.manual_seed(seed)
            return method(model).attribute(x, target=target, **options)

        return run

    return {
        "attrib SVS": lambda s: ShapleyValueSampling(model).attribute(
            x, target, n_samples=orders, seed=s, batch_size=rows
        ),
        "attrib SVS antithetic": lambda s: ShapleyValueSampling(model).attribute(
            x, target, n_samples=orders, antithetic=True, seed=s, batch_size=rows
        ),
        "captum SVS": captum(CaptumShapley, n_samples=orders, perturbations_per_eval=max(1, rows // n)),
        "attrib KernelShap": lambda s: KernelShap(model).attribute(
            x, target, n_samples=budget, seed=s, batch_size=rows
        ),
        "attrib KernelShap antithetic": lambda s: KernelShap(model).attribute(
            x, target, n_samples=budget, antithetic=True, seed=s, batch_size=rows
        ),
        "captum KernelShap": captum(CaptumKernelShap, n_samples=budget, perturbations_per_eval=rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--budgets", default="16,24,32,48,64,96,128,192,255,256,1024,4096")
    parser.add_argument("--errors", default="0.1,0.05,0.02,0.01", help="target relative errors for the last table")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-captum", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    f, n = args.features, args.examples
    model = mlp(f, args.hidden, 0).to(device)
    x = torch.randn(n, f, generator=torch.Generator().manual_seed(1)).to(device)
    target = torch.arange(n, device=device) % 3
    exact = exact_shapley(model, x, target)
    scale = float(exact.norm())
    enumerated = KernelShap(model).attribute(x, target, n_samples=2**f, batch_size=args.batch_size).double()
    print(f"{f} features, {n} examples, {args.device}; exact Shapley |phi| = {scale:.4g}")
    print(
        f"KernelShap with n_samples = 2^{f} (enumeration) vs the subset formula: max |diff| = "
        f"{float((enumerated - exact).abs().max()):.2e} (float32 model)\n"
    )

    budgets = [int(b) for b in args.budgets.split(",")]
    results: dict[str, list[tuple[int, float, float]]] = {}
    print("| evals / example | estimator | mean rel. error | time (s) | captum / attrib |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for budget in budgets:
        fns = estimators(args, model, x, target, budget)
        if args.skip_captum:
            fns = {k: v for k, v in fns.items() if not k.startswith("captum")}
        errors = {
            name: sum(float((fn(s).double() - exact).norm()) / scale for s in range(args.seeds)) / args.seeds
            for name, fn in fns.items()
        }
        times = timed({name: (lambda fn=fn: fn(0)) for name, fn in fns.items()}, args.repeats, device)
        for name in fns:
            results.setdefault(name, []).append((budget, errors[name], times[name]))
            peer = name.replace("attrib", "captum").replace(" antithetic", "")
            ratio = f"{times[peer] / times[name]:.1f}" if name.startswith("attrib") and peer in times else ""
            label = f"{name} (enumerates: {2**f} evals)" if "attrib KernelShap" in name and budget >= 2**f else name
            print(f"| {budget} | {label} | {errors[name]:.2e} | {times[name]:.4f} | {ratio} |")

    print("\nTime to reach a relative error (smallest budget of the grid whose mean error is below it):\n")
    targets = [float(e) for e in args.errors.split(",")]
    print("| estimator | " + " | ".join(f"error <= {e:g}" for e in targets) + " |")
    print("| --- | " + " | ".join("---:" for _ in targets) + " |")
    for name, rows in results.items():
        cells = []
        for e in targets:
            hit = next(((b, t) for b, err, t in rows if err <= e), None)
            cells.append("not reached" if hit is None else f"{hit[1]:.4f} s ({hit[0]} evals)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
