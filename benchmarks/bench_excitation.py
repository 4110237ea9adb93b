"""Excitation backprop and its contrastive form against TorchRay and against their limit.

Times, side by side in one run:

* attrib's ``ExcitationBackprop`` and ``ContrastiveExcitationBackprop`` and
  TorchRay's ``excitation_backprop`` / ``contrastive_excitation_backprop`` on
  VGG16 (TorchRay needs ``update_resnet`` for ResNet, which rewrites the
  model, so the head-to-head is on VGG16 only);
* attrib on ResNet-50 (unmodified);
* ``--targets`` classes of each image: one call here (one forward pass, K
  backward passes, the rule's forward recomputations shared) against K calls
  of TorchRay;
* each against its limit: one plain forward + backward to the same layer
  (``LinearApprox``-like cost, the floor of a one-backward method); the
  contrastive form needs a second backward above the contrast layer.

Random weights, eval mode, CPU unless ``--device cuda``. The median of
``--repeat`` runs after one warm-up. Prints a markdown table.

    python benchmarks/bench_excitation.py                  # 1 image, 224 px
    python benchmarks/bench_excitation.py --size 112 --batch 4 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from attrib.methods.excitation import ContrastiveExcitationBackprop, ExcitationBackprop

VGG = {"layer": "features.9", "contrast": "features.30", "classifier": "classifier.6"}
RESNET = {"layer": "layer2", "contrast": "layer4", "classifier": "fc"}


def median_time(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_limit(model: nn.Module, layer: str, x: Tensor, target: Tensor) -> Callable[[], list[Tensor]]:
    """One forward and one plain backward per target column to the layer: the floor of a layer method.

    ``target`` is ``(N,)`` or ``(N, K)`` (``K`` backward passes from one forward pass).
    """
    module = dict(model.named_modules())[layer]
    columns = target.reshape(target.shape[0], -1)

    def run() -> list[Tensor]:
        captured: list[Tensor] = []

        def hook(m: nn.Module, args: object, out: Tensor) -> Tensor:
            leaf = out.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()

        handle = module.register_forward_hook(hook)
        try:
            out = model(x)
        finally:
            handle.remove()
        maps = []
        for j in range(columns.shape[1]):
            score = out.gather(1, columns[:, j : j + 1]).sum()
            (g,) = torch.autograd.grad(score, captured[0], retain_graph=j < columns.shape[1] - 1)
            maps.append(g.sum(1, keepdim=True))
        return maps

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--targets", type=int, default=10, help="K for the multi-target row (1: skip it)")
    parser.add_argument("--skip-resnet", action="store_true")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    torch.manual_seed(0)
    x = torch.rand(opts.batch, 3, opts.size, opts.size, device=device)
    target = [i % 1000 for i in range(opts.batch)]
    target_t = torch.tensor(target, device=device)
    warnings.simplefilter("ignore")
    from torchray.attribution.excitation_backprop import contrastive_excitation_backprop, excitation_backprop

    rows: list[tuple[str, str, float, float | None, float]] = []
    vgg = tvm.vgg16(weights=None).eval().to(device)
    for p in vgg.parameters():
        p.requires_grad_(False)
    limit = median_time(plain_limit(vgg, VGG["layer"], x, target_t), opts.repeat, device)
    eb = ExcitationBackprop(vgg, VGG["layer"])
    ours = median_time(lambda: eb.attribute(x, target=target), opts.repeat, device)
    theirs = median_time(
        lambda: excitation_backprop(vgg, x, target, saliency_layer=VGG["layer"]), opts.repeat, device
    )
    rows.append(("VGG16", "ExcitationBackprop", ours, theirs, limit))
    ceb = ContrastiveExcitationBackprop(vgg, VGG["layer"], VGG["contrast"], VGG["classifier"])
    ours = median_time(lambda: ceb.attribute(x, target=target), opts.repeat, device)
    theirs = median_time(
        lambda: contrastive_excitation_backprop(
            vgg,
            x,
            target,
            saliency_layer=VGG["layer"],
            contrast_layer=VGG["contrast"],
            classifier_layer=VGG["classifier"],
        ),
        opts.repeat,
        device,
    )
    rows.append(("VGG16", "ContrastiveExcitationBackprop", ours, theirs, limit))
    if opts.targets > 1:  # K targets of each image: one forward pass here, K calls of TorchRay
        many = torch.tensor([[(i + j) % 1000 for j in range(opts.targets)] for i in range(opts.batch)], device=device)
        ours = median_time(lambda: eb.attribute(x, target=many), opts.repeat, device)
        theirs = median_time(
            lambda: [
                excitation_backprop(vgg, x, many[:, j].tolist(), saliency_layer=VGG["layer"])
                for j in range(opts.targets)
            ],
            opts.repeat,
            device,
        )
        many_limit = median_time(plain_limit(vgg, VGG["layer"], x, many), opts.repeat, device)
        rows.append(("VGG16", f"ExcitationBackprop, {opts.targets} targets", ours, theirs, many_limit))
    vgg = eb = ceb = None  # type: ignore[assignment]  # free the VGG before timing ResNet-50
    if not opts.skip_resnet:
        resnet = tvm.resnet50(weights=None).eval().to(device)
        limit = median_time(plain_limit(resnet, RESNET["layer"], x, target_t), opts.repeat, device)
        eb = ExcitationBackprop(resnet, RESNET["layer"])
        rows.append(("ResNet-50", "ExcitationBackprop", median_time(lambda: eb.attribute(x, target=target),
                                                                    opts.repeat, device), None, limit))
        ceb = ContrastiveExcitationBackprop(resnet, RESNET["layer"], RESNET["contrast"], RESNET["classifier"])
        rows.append(("ResNet-50", "ContrastiveExcitationBackprop",
                     median_time(lambda: ceb.attribute(x, target=target), opts.repeat, device), None, limit))

    print(f"\n{opts.batch} image(s), {opts.size} px, {device.type}, median of {opts.repeat}; "
          "limit: one plain forward + one plain backward per target to the same layer\n")
    print("| model | method | attrib (s) | TorchRay (s) | TorchRay / attrib | limit (s) | attrib / limit |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for model, method, ours, peer_time, limit in rows:
        peer = f"{peer_time:.3f}" if peer_time is not None else "n/a (needs update_resnet)"
        ratio = f"{peer_time / ours:.2f}x" if peer_time is not None else "-"
        print(f"| {model} | {method} | {ours:.3f} | {peer} | {ratio} | {limit:.3f} | {ours / limit:.2f}x |")


if __name__ == "__main__":
    main()
