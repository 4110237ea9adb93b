"""LRP against zennit and Captum, side by side in one run.

Times, interleaved (``benchmarks/timing.py``), on torchvision's VGG16 and
ResNet-50 (random weights, eval mode):

* attrib's ``LRP`` with ``EpsilonPlusFlat`` against zennit's
  ``EpsilonPlusFlat`` (with its ``VGGCanonizer`` / ``ResNetCanonizer``);
* attrib's ``LRP`` with epsilon on every layer against Captum's ``LRP``
  (its default rules); Captum refuses ResNet-50 (a ReLU module used twice
  per block), so that pair runs on VGG16 only;
* the floor of any one-backward method: one plain forward and backward
  (``torch.autograd.grad`` of the target score w.r.t. the input).

Both libraries compute the relevance of ``--batch`` images for one class
each. Prints a markdown table; the ratios are peer time / attrib time.

    python benchmarks/bench_lrp.py                       # 8 images, 64 px, CPU
    python benchmarks/bench_lrp.py --size 224 --batch 16 --device cuda
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from timing import timed
from torch import Tensor, nn
from zennit import composites as zennit_composites
from zennit import torchvision as zennit_torchvision
from zennit.attribution import Gradient

from attrib import lrp
from attrib.methods.lrp import LRP


def zennit_run(model: nn.Module, canonizer: object, x: Tensor, target: Tensor) -> Callable[[], Tensor]:
    composite = zennit_composites.EpsilonPlusFlat(canonizers=[canonizer])

    def run() -> Tensor:
        with Gradient(model, composite) as attributor:
            _, relevance = attributor(x, lambda out: F.one_hot(target, out.shape[1]).to(out) * out)
        return relevance

    return run


def captum_run(model: nn.Module, x: Tensor, target: Tensor) -> Callable[[], Tensor]:
    from captum.attr import LRP as CaptumLRP

    method = CaptumLRP(model)
    return lambda: method.attribute(x.clone().requires_grad_(True), target=target).detach()


def attrib_run(method: LRP, x: Tensor, target: Tensor) -> Callable[[], Tensor]:
    return lambda: method.attribute(x, target=target)


def plain_run(model: nn.Module, x: Tensor, target: Tensor) -> Callable[[], Tensor]:
    def run() -> Tensor:
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(leaf).gather(1, target[:, None]).sum(), leaf)
        return grad

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="vgg16,resnet50")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    warnings.simplefilter("ignore")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(opts.batch, 3, opts.size, opts.size, generator=g).to(device)
    target = torch.arange(opts.batch, device=device) % 1000
    epsilon = lrp.Composite([(nn.Module, lrp.Epsilon(1e-9))], stabilizer=1e-9)

    rows: list[tuple[str, str, float, str, float | None, float]] = []
    for arch in opts.models.split(","):
        torch.manual_seed(0)
        model = getattr(tvm, arch)(weights=None).eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)  # as attrib's state guard does, for every column alike
        canonizer = (
            zennit_torchvision.ResNetCanonizer() if arch.startswith("resnet") else zennit_torchvision.VGGCanonizer()
        )
        fns: dict[str, Callable[[], object]] = {
            "plain": plain_run(model, x, target),
            "attrib EpsilonPlusFlat": attrib_run(LRP(model, lrp.EpsilonPlusFlat()), x, target),
            "zennit EpsilonPlusFlat": zennit_run(model, canonizer, x, target),
            "attrib epsilon": attrib_run(LRP(model, epsilon), x, target),
        }
        if arch.startswith("vgg"):
            fns["captum epsilon"] = captum_run(model, x, target)
        times = timed(fns, opts.repeat, device)
        rows.append(
            (
                arch,
                "EpsilonPlusFlat",
                times["attrib EpsilonPlusFlat"],
                "zennit",
                times["zennit EpsilonPlusFlat"],
                times["plain"],
            )
        )
        rows.append(
            (arch, "epsilon everywhere", times["attrib epsilon"], "Captum", times.get("captum epsilon"), times["plain"])
        )
        del model, fns

    print(
        f"\n{opts.batch} image(s), {opts.size} px, {device.type}, median of {opts.repeat} interleaved rounds; "
        "plain: one forward + one backward of the score\n"
    )
    print("| model | rules | attrib (s) | peer | peer (s) | peer / attrib | plain (s) | attrib / plain |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for arch, rules, ours, peer, peer_time, plain in rows:
        shown = f"{peer_time:.3f}" if peer_time is not None else "n/a (refuses the model)"
        ratio = f"{peer_time / ours:.2f}x" if peer_time is not None else "-"
        print(f"| {arch} | {rules} | {ours:.3f} | {peer} | {shown} | {ratio} | {plain:.3f} | {ours / plain:.2f}x |")


if __name__ == "__main__":
    main()
