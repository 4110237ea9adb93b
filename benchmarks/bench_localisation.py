"""The localisation benchmark on the shipped data: TorchRay's table for every method, with the peers side by side.

    python benchmarks/bench_localisation.py                        # shapes-cnn, 32 images, every method
    python benchmarks/bench_localisation.py --model shapes-cnn --model shapes-resnet --images 100
    attrib benchmark --images 32                                   # the same without the peers

For every (image, class) pair of ``make_shapes(images, seed=2026)`` (images
the shipped models never saw) each method explains the class. Columns:
pointing-game accuracy (TorchRay's: mean over classes of the per-class hit
rate, tolerance 4 px on 64-px images, i.e. 15 px at 224) on all pairs and on
the difficult pairs (class under a quarter of the image, another class
present), deletion and insertion AUC of the class probability (16 steps;
lower deletion, higher insertion is better) and the wall time per map. The
centre and random baselines come first; TorchRay's and Captum's
implementations of the same method follow attrib's row, with the same
post-processing (abs-max over channels for input gradients) and scored by the
same metrics. Peer rows are skipped where the peer is not installed.

Extremal perturbation also runs at TorchRay's pointing-game settings, in both
libraries alike (``benchmarks/bench_ep_pointing.py``: areas 0.025, 0.05 and
0.1, masks summed and smoothed by 9% of the side, TorchRay's step and sigma
scaled to 64 px, its blur of 20 px, its area-weight growth 1.0035 a step,
``--ep-iters`` steps). RISE also runs with each fixed score
(softmax, sigmoid, logits) beside the registry's ``score="auto"`` (sigmoid on
the multi-label shipped models).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from attrib.cli.benchmark import DEFAULT_SEED, PeerMethod, localisation_benchmark, render
from attrib.cli.registry import method_names, preferred_layer

warnings.filterwarnings("ignore")  # the peers warn on every call


def _abs_max(maps: Tensor) -> Tensor:
    return maps.abs().amax(1, keepdim=True)


def _module(model: nn.Module, role: str) -> nn.Module:
    name = preferred_layer(model, role)
    assert name is not None
    return model.get_submodule(name)


def extremal_methods(iters: int) -> dict[str, PeerMethod]:
    """Extremal perturbation at TorchRay's pointing-game settings, both libraries alike (see bench_ep_pointing)."""
    from bench_ep_pointing import attrib_runner, summed, torchray_runner

    ours = attrib_runner(iters, batch_size=256)
    methods: dict[str, PeerMethod] = {"attrib, TorchRay's settings": lambda m, x, c: summed(ours(m, x, c))}
    try:
        import torchray  # noqa: F401
    except ImportError:
        return methods
    theirs = torchray_runner(iters)
    methods["TorchRay"] = lambda m, x, c: summed(theirs(m, x, c))
    return methods


def rise_scores() -> dict[str, PeerMethod]:
    """attrib's RISE with each fixed score (the registry's row uses ``score="auto"``: sigmoid on these models)."""
    from attrib.methods.rise import RISE

    def with_score(score: str) -> PeerMethod:
        return lambda m, x, c: RISE(m).attribute(x, c, num_masks=1000, seed=0, batch_size=256, score=score)

    return {f"attrib, score={s}": with_score(s) for s in ("softmax", "sigmoid", "logits")}


def torchray_methods() -> dict[str, PeerMethod]:
    """TorchRay's functions for the registry names it implements (empty if TorchRay is absent)."""
    try:
        from torchray.attribution.deconvnet import deconvnet
        from torchray.attribution.excitation_backprop import contrastive_excitation_backprop, excitation_backprop
        from torchray.attribution.grad_cam import grad_cam
        from torchray.attribution.gradient import gradient
        from torchray.attribution.guided_backprop import guided_backprop
        from torchray.attribution.linear_approx import linear_approx
        from torchray.attribution.rise import rise
    except ImportError:
        return {}

    def layer(fn: Callable[..., Tensor]) -> PeerMethod:
        return lambda m, x, c: fn(m, x, c, saliency_layer=preferred_layer(m, "cam"))

    def rise_fn(m: nn.Module, x: Tensor, c: Tensor) -> Tensor:
        every = rise(m, x, seed=0, num_masks=1000, batch_size=256)  # (N, classes, H, W), sigmoid scores
        return every[torch.arange(len(c)), c].unsqueeze(1)

    def cebp(m: nn.Module, x: Tensor, c: Tensor) -> Tensor:
        return contrastive_excitation_backprop(
            m, x, c, saliency_layer=preferred_layer(m, "cam"), contrast_layer=preferred_layer(m, "contrast"),
            classifier_layer=preferred_layer(m, "classifier"),
        )

    return {
        "saliency": lambda m, x, c: gradient(m, x, c),
        "guidedbackprop": lambda m, x, c: guided_backprop(m, x, c),
        "deconvnet": lambda m, x, c: deconvnet(m, x, c),
        "gradcam": layer(grad_cam),
        "linearapprox": layer(linear_approx),
        "excitation": layer(excitation_backprop),
        "contrastive_excitation": cebp,
        "rise": rise_fn,
    }


def captum_methods() -> dict[str, PeerMethod]:
    """Captum's classes for the registry names it implements (empty if Captum is absent)."""
    try:
        from captum.attr import (
            Deconvolution,
            GuidedBackprop,
            InputXGradient,
            IntegratedGradients,
            LayerGradCam,
            NoiseTunnel,
            Occlusion,
            Saliency,
        )
    except ImportError:
        return {}

    def smoothgrad(m: nn.Module, x: Tensor, c: Tensor) -> Tensor:
        spread = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).mean().item()
        maps = NoiseTunnel(Saliency(m)).attribute(x, target=c, nt_type="smoothgrad", nt_samples=16,
                                                  nt_samples_batch_size=256, stdevs=0.15 * spread, abs=True)
        return _abs_max(maps)

    return {
        "saliency": lambda m, x, c: _abs_max(Saliency(m).attribute(x, target=c)),
        "inputxgradient": lambda m, x, c: _abs_max(InputXGradient(m).attribute(x, target=c)),
        "integratedgradients": lambda m, x, c: _abs_max(
            IntegratedGradients(m).attribute(x, target=c, n_steps=16, internal_batch_size=256)
        ),
        "smoothgrad": smoothgrad,
        "guidedbackprop": lambda m, x, c: _abs_max(GuidedBackprop(m).attribute(x, target=c)),
        "deconvnet": lambda m, x, c: _abs_max(Deconvolution(m).attribute(x, target=c)),
        "gradcam": lambda m, x, c: LayerGradCam(m, _module(m, "cam")).attribute(x, target=c, relu_attributions=True),
        "occlusion": lambda m, x, c: Occlusion(m).attribute(
            x, target=c, sliding_window_shapes=(3, 12, 12), strides=(3, 4, 4), perturbations_per_eval=256
        )[:, :1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=("shapes-cnn", "shapes-resnet"))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--method", action="append", help="registry names, comma-separated (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--no-peers", action="store_true", help="attrib only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--ep-iters", type=int, default=100,
                        help="steps of the extremal-perturbation rows at TorchRay's settings (TorchRay's own: 800)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for value in args.method or [",".join(method_names())] for n in value.split(",") if n]
    peers: dict[str, dict[str, PeerMethod]] = {}
    if not args.no_peers:
        for impl, table in (("TorchRay", torchray_methods()), ("Captum", captum_methods())):
            for name, fn in table.items():
                peers.setdefault(name, {})[impl] = fn
    if "extremal" in names:
        extremal = extremal_methods(args.ep_iters)
        peers.setdefault("extremal", {}).update(
            extremal if not args.no_peers else {k: v for k, v in extremal.items() if k.startswith("attrib")}
        )
    if "rise" in names:
        peers.setdefault("rise", {}).update(rise_scores())
    start = time.perf_counter()
    rows = localisation_benchmark(args.model or ["shapes-cnn"], names, images=args.images, seed=args.seed,
                                  peers=peers)
    print(f"{args.images} images (seed {args.seed}), {torch.get_num_threads()} threads, "
          f"{time.perf_counter() - start:.0f} s in all\n")
    print(render(rows))


if __name__ == "__main__":
    main()
