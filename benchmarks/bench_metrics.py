"""Time attrib.metrics against the loops and peers they replace.

    python benchmarks/bench_metrics.py                       # CPU, small defaults (about a minute)
    python benchmarks/bench_metrics.py --device cuda --batch 16 --size 224 --steps 100

Everything is measured in one run on the same model (torchvision ResNet-18,
random weights, eval mode) and printed as a markdown table with ratios
(``peer / attrib`` > 1: attrib is faster):

* Deletion / Insertion: attrib's batched curves (``batch_size`` rows per
  forward pass) against the usual loop of the paper's reference code, one
  forward pass per image and step.
* Infidelity, SensitivityMax: against Captum's ``infidelity`` and
  ``sensitivity_max`` at the same settings.
* PointingGame: against TorchRay's ``PointingGame.evaluate`` called per map
  after a first-index argmax (``--pg-maps`` maps at ``--size`` pixels).

Each time is the best of ``--repeats`` interleaved runs after a warm-up (the
minimum: on a shared, loaded machine the median mostly measures the others' load).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torchvision
from captum.attr import Saliency as CaptumSaliency
from captum.metrics import infidelity, sensitivity_max
from timing import timed as _timed
from torchray.benchmark.pointing_game import PointingGame as TorchRayPointingGame

import attrib
from attrib.metrics import Deletion, Infidelity, Insertion, PointingGame, SensitivityMax

warnings.filterwarnings("ignore")


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Best (minimum) seconds of each function: on a shared machine the median mostly measures the other jobs."""
    return _timed(fns, repeats, device, reduce=min)


def loop_curve(
    model: torch.nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    insert: bool,
) -> torch.Tensor:
    """The reference implementation's shape: per image, per step, one forward pass of one image."""
    n, _, h, w = x.shape
    pixels = h * w
    aucs = []
    with torch.no_grad():
        for i in range(n):
            order = maps[i].flatten().argsort(descending=True, stable=True)
            start, finish = (baseline[i].clone(), x[i]) if insert else (x[i].clone(), baseline[i])
            scores = []
            for s in range(steps + 1):
                k = s * pixels // steps
                image = start.clone().view(start.shape[0], -1)
                image[:, order[:k]] = finish.reshape(finish.shape[0], -1)[:, order[:k]]
                scores.append(model(image.view(1, -1, h, w)).softmax(1)[0, target[i]])
            curve = torch.stack(scores)
            aucs.append(((curve[1:] + curve[:-1]) / 2).sum() / steps)
    return torch.stack(aucs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2, help="images N")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=32, help="deletion/insertion steps")
    parser.add_argument("--rows", type=int, default=66, help="batch_size: rows per forward pass")
    parser.add_argument("--samples", type=int, default=8, help="perturbation samples for infidelity/sensitivity")
    parser.add_argument("--pg-maps", type=int, default=256, help="maps for the pointing game")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    target = torch.arange(args.batch, device=device) % 1000
    maps = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(device)
    rows = []

    zero = torch.zeros_like(x)
    deletion = Deletion(model, x, target, steps=args.steps, batch_size=args.rows)
    insertion = Insertion(model, x, target, steps=args.steps, batch_size=args.rows, baseline="zero")
    for name, metric, insert in (("Deletion", deletion, False), ("Insertion", insertion, True)):
        times = timed(
            {
                "attrib": lambda m=metric: m(maps),
                "peer": lambda i=insert: loop_curve(model, x, zero, maps[:, 0], target, args.steps, i),
            },
            args.repeats,
            device,
        )
        rows.append((f"{name} ({args.steps} steps)", "per-step loop", times))

    gen = torch.Generator(device=device).manual_seed(0)

    def noise(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = 0.05 * (2 * torch.rand(inputs.shape, generator=gen, device=inputs.device) - 1)
        return eps, inputs - eps

    saliency_maps = attrib.Saliency(model).attribute(x, target)
    ours_inf = Infidelity(model, x, target, perturb_fn=noise, n_perturb_samples=args.samples, batch_size=args.rows)
    times = timed(
        {
            "attrib": lambda: ours_inf(saliency_maps),
            "peer": lambda: infidelity(model, noise, x, saliency_maps, target=target, n_perturb_samples=args.samples,
                                       max_examples_per_batch=args.rows),
        },
        args.repeats,
        device,
    )
    rows.append((f"Infidelity ({args.samples} samples)", "Captum", times))

    ours_sens = SensitivityMax(attrib.Saliency(model), x, target, n_perturb_samples=args.samples,
                               batch_size=args.rows, seed=0)
    captum_saliency = CaptumSaliency(model)
    times = timed(
        {
            "attrib": lambda: ours_sens(saliency_maps),
            "peer": lambda: sensitivity_max(captum_saliency.attribute, x, target=target,
                                            n_perturb_samples=args.samples, max_examples_per_batch=args.rows),
        },
        args.repeats,
        device,
    )
    rows.append((f"SensitivityMax ({args.samples} samples)", "Captum", times))

    size = args.size
    pg_maps = torch.rand(args.pg_maps, 1, size // 8, size // 8, generator=g).to(device)
    masks = torch.rand(args.pg_maps, size, size, generator=g).to(device) < 0.05
    game = PointingGame(masks, tolerance=15)
    theirs = TorchRayPointingGame(num_classes=1, tolerance=15)

    def torchray_game() -> list[int]:
        resized = torch.nn.functional.interpolate(pg_maps, size=(size, size), mode="bilinear", align_corners=False)
        flat = resized.flatten(1).argmax(1)
        return [theirs.evaluate(masks[i].cpu(), (int(flat[i] % size), int(flat[i] // size)))
                for i in range(args.pg_maps)]

    times = timed({"attrib": lambda: game(pg_maps), "peer": torchray_game}, args.repeats, device)
    rows.append((f"PointingGame ({args.pg_maps} maps)", "TorchRay loop", times))

    print(f"device={device}, ResNet-18, N={args.batch}, {args.size} px, batch_size={args.rows}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| metric | peer | attrib (s) | peer (s) | peer / attrib |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, peer, times in rows:
        ratio = times["peer"] / times["attrib"]
        print(f"| {name} | {peer} | {times['attrib']:.3f} | {times['peer']:.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
