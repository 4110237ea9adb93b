"""Extremal perturbation on the shipped models: attrib's against TorchRay's, pointing game and time per map.

    python benchmarks/bench_ep_pointing.py                                  # both models, seeds 2026 and 7
    python benchmarks/bench_ep_pointing.py --model shapes-cnn --seed 2026 --images 12 --iters 100 --threads 1

For every (image, class) pair of ``make_shapes(images, seed=seed)`` both
libraries run extremal perturbation at TorchRay's pointing-game settings
scaled to the 64-px images (areas 0.025, 0.05 and 0.1; step 7 and sigma 21
at 224 px, i.e. 2 and 6 px; the blur's largest sigma 20 px, the value
TorchRay's function fixes (``--max-blur`` sets both libraries'; TorchRay's
through its ``Perturbation`` for the call); area-weight growth 1.0035 a step,
``--iters`` steps, jitter on); each pair's three masks are summed and smoothed
(Gaussian, 9% of the side, TorchRay's ``smooth=0.09``) and the peak of the
result is scored by the pointing game (tolerance 4 px, the benchmark's).
attrib runs one call for all pairs (``batch_size`` rows a block), TorchRay
one call per pair (its three areas together), in the same process, one after
the other, each after a one-pair warm-up.

Printed per model and seed: hits / pairs, the pointing accuracy (the
benchmark's: mean over classes of the per-class hit rate), the seconds per
map of each library and their ratio, and the pairs each library misses
(image index in the pairs, class).
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from attrib.cli.benchmark import DEFAULT_SEED, Pairs
from attrib.data import CLASSES, load_model
from attrib.metrics import PointingGame, pointing_game_accuracy
from attrib.perturb.blur import gaussian_blur

warnings.filterwarnings("ignore")  # TorchRay's meshgrid

AREAS = [0.025, 0.05, 0.1]
TOLERANCE = 4
Runner = Callable[[nn.Module, Tensor, Tensor], Tensor]


def settings(size: int, iters: int) -> dict[str, object]:
    """TorchRay's pointing-game settings (for 224 px) scaled to ``size``-px images, ``iters`` steps."""
    scale = size / 224
    return {"areas": AREAS, "max_iter": iters, "step": max(1, round(7 * scale)), "sigma": 21 * scale}


def summed(masks: Tensor) -> Tensor:
    """``(P, A, H, W)`` masks -> ``(P, 1, H, W)``: summed over the areas and smoothed (TorchRay's ``smooth=0.09``)."""
    return gaussian_blur(masks.sum(1, keepdim=True), 0.09 * masks.shape[-1])


def attrib_runner(iters: int, batch_size: int | None, max_blur: float = 20.0, seed: int = 0) -> Runner:
    from attrib.methods.extremal import ExtremalPerturbation

    def run(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
        return ExtremalPerturbation(model).attribute(
            x, classes, seed=seed, batch_size=batch_size, regul_growth=1.0035, max_blur=max_blur,
            **settings(x.shape[-1], iters),
        )

    return run


def torchray_runner(iters: int, max_blur: float = 20.0) -> Runner:
    import torchray.attribution.extremal_perturbation as torchray_ep

    def run(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
        options = settings(x.shape[-1], iters)
        original = torchray_ep.Perturbation
        # TorchRay's function builds its pyramid with the default max_blur=20; give it ours for the call.
        torchray_ep.Perturbation = functools.partial(original, max_blur=max_blur)  # type: ignore[misc]
        try:
            masks = [
                torchray_ep.extremal_perturbation(model, x[i : i + 1], int(c), **options)[0][:, 0]  # type: ignore[arg-type]
                for i, c in enumerate(classes.tolist())
            ]
        finally:
            torchray_ep.Perturbation = original  # type: ignore[misc]
        for p in model.parameters():  # TorchRay leaves them frozen
            p.requires_grad_(True)
        return torch.stack(masks)

    return run


def timed(fn: Runner, model: nn.Module, pairs: Pairs) -> tuple[Tensor, float]:
    """``fn``'s masks for all pairs and its seconds, after an untimed one-pair call."""
    fn(model, pairs.images[:1], pairs.classes[:1])
    start = time.perf_counter()
    masks = fn(model, pairs.images, pairs.classes).detach()
    return masks, time.perf_counter() - start


def score(masks: Tensor, pairs: Pairs) -> tuple[Tensor, float]:
    """Hits ``(P,)`` of the summed, smoothed masks and the benchmark's pointing accuracy."""
    hits = PointingGame(pairs.masks, tolerance=TOLERANCE)(summed(masks))
    return hits, float(pointing_game_accuracy(hits, pairs.classes, num_classes=len(CLASSES)).accuracy)


def compare(
    model_name: str, seed: int, images: int, iters: int, batch_size: int | None, max_blur: float = 20.0,
    peers: bool = True,
) -> dict[str, object]:
    """Both libraries on one model and image seed: hits, accuracy, seconds per map, misses, masks."""
    pairs = Pairs.generate(images, seed)
    model = load_model(model_name)
    out: dict[str, object] = {"pairs": len(pairs.classes)}
    runners = {"attrib": attrib_runner(iters, batch_size, max_blur)}
    if peers:
        runners["TorchRay"] = torchray_runner(iters, max_blur)
    for name, fn in runners.items():
        masks, seconds = timed(fn, model, pairs)
        hits, accuracy = score(masks, pairs)
        missed = [(i, CLASSES[int(pairs.classes[i])]) for i in (~hits.bool()).nonzero().flatten().tolist()]
        out[name] = {"hits": int(hits.sum()), "accuracy": accuracy, "s_per_map": seconds / len(pairs.classes),
                     "missed": missed, "masks": masks}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=("shapes-cnn", "shapes-resnet"))
    parser.add_argument("--seed", action="append", type=int, help=f"image seeds (default {DEFAULT_SEED} and 7)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--iters", type=int, default=100, help="steps of both (TorchRay's default: 800)")
    parser.add_argument("--batch-size", type=int, default=None, help="attrib's batch_size (default: all rows)")
    parser.add_argument("--max-blur", type=float, default=20.0,
                        help="the blur's largest sigma in px, both libraries (TorchRay's function fixes 20)")
    parser.add_argument("--no-peers", action="store_true", help="attrib only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--save", default=None, help="save every mask to this .pt file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"EP at TorchRay's pointing-game settings, {args.iters} steps, {args.images} images per seed, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | seed | pairs | attrib hits | TorchRay hits | attrib pointing | TorchRay pointing | "
          "attrib s/map | TorchRay s/map | attrib / TorchRay time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    saved: dict[str, object] = {}
    notes = []
    for model_name in args.model or ["shapes-cnn", "shapes-resnet"]:
        for seed in args.seed or [DEFAULT_SEED, 7]:
            r = compare(model_name, seed, args.images, args.iters, args.batch_size, args.max_blur, not args.no_peers)
            nan = {"hits": -1, "accuracy": float("nan"), "s_per_map": float("nan"), "missed": []}
            ours, theirs = r["attrib"], r.get("TorchRay", nan)
            assert isinstance(ours, dict) and isinstance(theirs, dict)
            print(f"| {model_name} | {seed} | {r['pairs']} | {ours['hits']} | {theirs['hits']} | "
                  f"{ours['accuracy']:.3f} | {theirs['accuracy']:.3f} | {ours['s_per_map']:.3f} | "
                  f"{theirs['s_per_map']:.3f} | {ours['s_per_map'] / theirs['s_per_map']:.2f} |", flush=True)
            notes.append(f"{model_name}, seed {seed}: attrib misses {ours['missed']}, TorchRay misses "
                         f"{theirs['missed']}")
            saved[f"{model_name}/{seed}"] = {k: v["masks"] for k, v in r.items() if isinstance(v, dict)}
    print()
    print("\n".join(notes))
    if args.save:
        torch.save(saved, args.save)


if __name__ == "__main__":
    main()
