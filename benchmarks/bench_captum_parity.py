"""Time attrib's Captum-parity methods against Captum's at equal settings, side by side in one run.

    python benchmarks/bench_captum_parity.py                       # CPU: ResNet-18, 64 px, N=4
    python benchmarks/bench_captum_parity.py --device cuda --model resnet50 --size 224 --images 16

Everything runs in one process on torchvision models (random weights, eval
mode): ``--model`` for every method but the DeepLift family, which runs on
``--deeplift-model`` (VGG: Captum's DeepLift refuses a ReLU module used twice,
as in every ResNet block; its ``inplace`` ReLUs are made out-of-place for
Captum's hooks) and is printed as a markdown table with
``captum / attrib`` (above 1: attrib is faster). Settings are equal on both
sides: the same targets, baselines, feature masks (a ``--cell`` px grid),
numbers of samples and the same rows per forward pass (``--batch-size``;
Captum's ``perturbations_per_eval`` / ``internal_batch_size`` are set to
give that many rows). GradientShap: Captum has no internal batching, so it
runs all ``N x n_samples`` rows at once; attrib is given ``--batch-size``.
Sampling methods draw different random numbers in the two libraries, so
their maps differ; their cost does not. Times are medians of ``--repeats``
interleaved runs after one warm-up each.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torchvision
from timing import timed

import attrib
from attrib.perturb import grid_mask

warnings.filterwarnings("ignore")  # the peers warn on every call


def out_of_place(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return model


def cases(args: argparse.Namespace) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """``name -> (attrib call, Captum call)`` at equal settings."""
    from captum import attr

    device = torch.device(args.device)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    dl_model = out_of_place(getattr(torchvision.models, args.deeplift_model)(weights=None)).eval().to(device)
    g = torch.Generator().manual_seed(0)
    n, size, b = args.images, args.size, args.batch_size
    x = torch.randn(n, 3, size, size, generator=g).to(device)
    target = (torch.arange(n) * 7 % 1000).to(device)
    background = torch.randn(args.references, 3, size, size, generator=g).to(device) * 0.1
    mask = grid_mask((size, size), args.cell, device=device)  # (1, 1, H, W)
    captum_mask = mask.expand(1, 3, size, size).contiguous()
    samples = args.samples
    per_eval = max(1, b // n)
    return {
        "DeepLift": (
            lambda: attrib.DeepLift(dl_model).attribute(x, target, baselines=0.0, batch_size=2 * n),
            lambda: attr.DeepLift(dl_model).attribute(x, target=target, baselines=0.0),
        ),
        f"DeepLiftShap ({args.references} refs)": (
            lambda: attrib.DeepLiftShap(dl_model).attribute(x, target, baselines=background, batch_size=2 * b),
            lambda: attr.DeepLiftShap(dl_model).attribute(x, target=target, baselines=background),
        ),
        f"GradientShap ({samples} samples)": (
            lambda: attrib.GradientShap(model).attribute(
                x, target, baselines=background, n_samples=samples, batch_size=b, seed=0
            ),
            lambda: attr.GradientShap(model).attribute(x, target=target, baselines=background, n_samples=samples),
        ),
        f"FeatureAblation ({args.cell} px grid)": (
            lambda: attrib.FeatureAblation(model).attribute(x, target, feature_mask=mask, batch_size=b),
            lambda: attr.FeatureAblation(model).attribute(
                x, target=target, feature_mask=captum_mask, perturbations_per_eval=per_eval
            ),
        ),
        f"FeaturePermutation ({args.cell} px grid)": (
            lambda: attrib.FeaturePermutation(model).attribute(x, target, feature_mask=mask, batch_size=b, seed=0),
            lambda: attr.FeaturePermutation(model).attribute(
                x, target=target, feature_mask=captum_mask, perturbations_per_eval=per_eval
            ),
        ),
        f"ShapleyValueSampling ({args.shapley_samples} orders)": (
            lambda: attrib.ShapleyValueSampling(model).attribute(
                x, target, feature_mask=mask, n_samples=args.shapley_samples, batch_size=b, seed=0
            ),
            lambda: attr.ShapleyValueSampling(model).attribute(
                x,
                target=target,
                feature_mask=captum_mask,
                n_samples=args.shapley_samples,
                perturbations_per_eval=per_eval,
            ),
        ),
        "NeuronGradient (Neuron target)": (
            lambda: attrib.Saliency(model).attribute(x, attrib.Neuron(model.layer3, (5, 1, 1)), abs=False),
            lambda: attr.NeuronGradient(model, model.layer3).attribute(x, (5, 1, 1)),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--deeplift-model", default="vgg11")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass, both libraries")
    parser.add_argument("--references", type=int, default=8, help="DeepLiftShap/GradientShap baselines")
    parser.add_argument("--samples", type=int, default=16, help="GradientShap samples per example")
    parser.add_argument("--shapley-samples", type=int, default=2, help="Shapley orders")
    parser.add_argument("--cell", type=int, default=16, help="feature grid cell, px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = cases(args)
    fns = {f"{name}|{side}": fn for name, pair in table.items() for side, fn in zip(("attrib", "captum"), pair)}
    seconds = timed(fns, args.repeats, args.device)
    print(
        f"{args.model} (DeepLift: {args.deeplift_model}), {args.size} px, N={args.images}, "
        f"batch_size={args.batch_size}, {args.device}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print()
    print("| method | attrib s | Captum s | Captum / attrib |")
    print("|---|---:|---:|---:|")
    for name in table:
        ours, theirs = seconds[f"{name}|attrib"], seconds[f"{name}|captum"]
        print(f"| {name} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
