"""Time attrib's CAM family against Captum, TorchRay and pytorch-grad-cam on ResNet-50 and VGG16.

    python benchmarks/bench_layer_methods.py                          # CPU, 224 px, both models
    python benchmarks/bench_layer_methods.py --size 64 --repeats 3    # a quick run on a busy CPU
    python benchmarks/bench_layer_methods.py --models resnet50 --no-channel-methods

Everything is measured in one run on the same models (torchvision, random
weights, eval mode) and printed as markdown tables with ratios:

* **Per method** (one image, one target): attrib's time, each peer that has
  the method, ``peer / attrib`` (> 1: attrib is faster), and attrib against
  its own **limit**: the passes the method needs times the best time of one
  pass. A gradient CAM needs one forward + backward pass of the image
  (``fb``); Guided Grad-CAM two; Eigen-CAM one forward (``f``); ScoreCAM and
  AblationCAM one forward plus ``C`` forward rows, timed as ``C`` times the
  per-row time of the best batch (``batch_size`` rows a pass).
  pytorch-grad-cam's time includes its min-max scaling and OpenCV resize of
  one small map (negligible).
* **Grad-CAM, 10 targets of one image**: attrib makes one call with a
  ``(1, 10)`` target (one forward pass, ten backward passes); every peer is
  called ten times.
* **ScoreCAM peak memory** at ``batch_size=32`` on ResNet-50's ``layer4``
  (2048 channels): each run happens in a fresh subprocess, which reports its
  peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
  before the call (model loaded, one clean forward done) and after it; the
  difference is what the method added. pytorch-grad-cam builds all 2048
  masked copies of the image at once; attrib only ``batch_size`` of them.

Each time is the median of ``--repeats`` runs after one warm-up, the runs of
one row interleaved so machine noise hits every column alike.
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
from typing import Any

import torch
import torchvision

from attrib.methods.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, LinearApprox, XGradCAM
from attrib.methods.eigen_cam import EigenCAM
from attrib.methods.guided_grad_cam import GuidedGradCAM
from attrib.methods.score_cam import AblationCAM, ScoreCAM

warnings.filterwarnings("ignore")  # the peers warn on every call

LAYERS = {"resnet50": "layer4", "vgg16": "features.29"}
TARGET = 7
CHANNEL_BATCH = 32


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, runs interleaved round-robin after one warm-up each."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    # parameters keep requires_grad=True: pytorch-grad-cam backpropagates with .backward() and needs a graph
    return getattr(torchvision.models, name)(weights=None).eval()


def module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(model.named_modules())[name]


def channels(model: torch.nn.Module, layer: str, x: torch.Tensor) -> int:
    store: dict[str, torch.Tensor] = {}
    handle = module(model, layer).register_forward_hook(lambda m, a, out: store.setdefault("a", out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return int(store["a"].shape[1])


def pass_times(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Best-case times of one pass: forward+backward of one image, forward of one image, per-row forward at 32."""

    def forward_backward() -> None:
        leaf = x.detach().requires_grad_(True)
        torch.autograd.grad(model(leaf)[0, TARGET], leaf)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    rows = x.expand(CHANNEL_BATCH, *x.shape[1:]).contiguous()

    def forward_batch() -> None:
        with torch.no_grad():
            model(rows)

    times = timed({"fb": forward_backward, "f": forward, "batch": forward_batch}, repeats)
    return {"fb": times["fb"], "f": times["f"], "row": times["batch"] / CHANNEL_BATCH}


def pgc(cls_name: str, model: torch.nn.Module, layer: str, x: torch.Tensor, targets: list[int]) -> Any:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[module(model, layer)])
    cam.batch_size = CHANNEL_BATCH
    try:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        cam.activations_and_grads.release()


def method_rows(name: str, x: torch.Tensor, repeats: int, channel_methods: bool) -> list[str]:
    from captum.attr import GuidedGradCam as CaptumGuided
    from captum.attr import LayerGradCam
    from torchray.attribution.grad_cam import grad_cam as tr_grad_cam
    from torchray.attribution.linear_approx import linear_approx as tr_linear_approx

    model, layer = build(name), LAYERS[name]
    passes = pass_times(model, x, repeats)
    c = channels(model, layer, x)
    channel_limit = passes["f"] + c * passes["row"]
    quiet = _quiet_tqdm()
    specs: list[tuple[str, Callable[[], object], dict[str, Callable[[], object]], float, str]] = [
        ("GradCAM", lambda: GradCAM(model, layer).attribute(x, target=TARGET), {
            "captum": lambda: LayerGradCam(model, module(model, layer)).attribute(
                x, target=TARGET, relu_attributions=True),
            "torchray": lambda: tr_grad_cam(model, x, TARGET, saliency_layer=layer),
            "pytorch-grad-cam": lambda: pgc("GradCAM", model, layer, x, [TARGET]),
        }, passes["fb"], "1 fb"),
        ("HiResCAM", lambda: HiResCAM(model, layer).attribute(x, target=TARGET),
         {"pytorch-grad-cam": lambda: pgc("HiResCAM", model, layer, x, [TARGET])}, passes["fb"], "1 fb"),
        ("XGradCAM", lambda: XGradCAM(model, layer).attribute(x, target=TARGET),
         {"pytorch-grad-cam": lambda: pgc("XGradCAM", model, layer, x, [TARGET])}, passes["fb"], "1 fb"),
        ("GradCAMPlusPlus", lambda: GradCAMPlusPlus(model, layer).attribute(x, target=TARGET),
         {"pytorch-grad-cam": lambda: pgc("GradCAMPlusPlus", model, layer, x, [TARGET])}, passes["fb"], "1 fb"),
        ("LayerCAM", lambda: LayerCAM(model, layer).attribute(x, target=TARGET),
         {"pytorch-grad-cam": lambda: pgc("LayerCAM", model, layer, x, [TARGET])}, passes["fb"], "1 fb"),
        ("LinearApprox", lambda: LinearApprox(model, layer).attribute(x, target=TARGET),
         {"torchray": lambda: tr_linear_approx(model, x, TARGET, saliency_layer=layer)}, passes["fb"], "1 fb"),
        ("GuidedGradCAM", lambda: GuidedGradCAM(model, layer, mode="nearest").attribute(x, target=TARGET),
         {"captum": lambda: CaptumGuided(model, module(model, layer)).attribute(x, target=TARGET)},
         2 * passes["fb"], "2 fb"),
        ("EigenCAM", lambda: EigenCAM(model, layer).attribute(x),
         {"pytorch-grad-cam": lambda: pgc("EigenCAM", model, layer, x, [TARGET])}, passes["f"], "1 f"),
    ]
    if channel_methods:
        specs += [
            ("ScoreCAM", lambda: ScoreCAM(model, layer).attribute(x, target=TARGET, batch_size=CHANNEL_BATCH),
             {"pytorch-grad-cam": lambda: pgc("ScoreCAM", model, layer, x, [TARGET])}, channel_limit,
             f"1 f + {c} rows"),
            ("AblationCAM", lambda: AblationCAM(model, layer).attribute(x, target=TARGET, batch_size=CHANNEL_BATCH),
             {"pytorch-grad-cam": lambda: pgc("AblationCAM", model, layer, x, [TARGET])}, channel_limit,
             f"1 f + {c} rows"),
        ]
    lines = []
    for method, ours, peers, limit, needs in specs:
        slow = method in ("ScoreCAM", "AblationCAM")
        with quiet:
            times = timed({"attrib": ours, **peers}, 1 if slow else repeats)
        peer_text = ", ".join(f"{p} {times[p] * 1e3:.0f} ms ({times[p] / times['attrib']:.2f}x)" for p in peers)
        lines.append(
            f"| {name} | {method} | {times['attrib'] * 1e3:.0f} ms | {peer_text} | {needs}: {limit * 1e3:.0f} ms "
            f"| {times['attrib'] / limit:.2f} |"
        )
    return lines


def multi_target_row(name: str, x: torch.Tensor, repeats: int) -> str:
    from captum.attr import LayerGradCam
    from torchray.attribution.grad_cam import grad_cam as tr_grad_cam

    model, layer = build(name), LAYERS[name]
    targets = list(range(10))
    method = GradCAM(model, layer)
    lgc = LayerGradCam(model, module(model, layer))
    times = timed({
        "attrib": lambda: method.attribute(x, target=torch.tensor([targets])),
        "captum": lambda: [lgc.attribute(x, target=t, relu_attributions=True) for t in targets],
        "torchray": lambda: [tr_grad_cam(model, x, t, saliency_layer=layer) for t in targets],
        "pytorch-grad-cam": lambda: [pgc("GradCAM", model, layer, x, [t]) for t in targets],
    }, repeats)
    peers = ", ".join(
        f"{p} {times[p] * 1e3:.0f} ms ({times[p] / times['attrib']:.2f}x)" for p in times if p != "attrib"
    )
    return f"| {name} | {times['attrib'] * 1e3:.0f} ms | {peers} |"


def memory_child(which: str, size: int, threads: int) -> None:
    """Run one ScoreCAM call on ResNet-50 layer4 and print the peak RSS before and after, in MiB (Linux: KiB)."""
    torch.set_num_threads(threads)
    model = build("resnet50")
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with _quiet_tqdm():
        if which == "attrib":
            ScoreCAM(model, "layer4").attribute(x, target=TARGET, batch_size=CHANNEL_BATCH)
        else:
            pgc("ScoreCAM", model, "layer4", x, [TARGET])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_mib": before / 1024, "after_mib": after / 1024}))


def memory_rows(size: int, threads: int) -> list[str]:
    lines = []
    for which in ("attrib", "pytorch-grad-cam"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", which, "--size", str(size), "--threads", str(threads)],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        peak = json.loads(out)
        lines.append(
            f"| {which} | {peak['before_mib']:.0f} MiB | {peak['after_mib']:.0f} MiB "
            f"| {peak['after_mib'] - peak['before_mib']:.0f} MiB |"
        )
    return lines


class _quiet_tqdm:
    """pytorch-grad-cam draws tqdm bars on stderr in ScoreCAM/AblationCAM; silence them for the table."""

    def __enter__(self) -> None:
        import os

        self._stderr = sys.stderr
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115

    def __exit__(self, *exc: object) -> None:
        sys.stderr.close()
        sys.stderr = self._stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,vgg16", help="comma-separated: resnet50, vgg16")
    parser.add_argument("--size", type=int, default=224, help="input height and width in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 on a machine shared with others)")
    parser.add_argument("--no-channel-methods", action="store_true", help="skip ScoreCAM/AblationCAM (C passes)")
    parser.add_argument("--no-memory", action="store_true", help="skip the ScoreCAM peak-memory comparison")
    parser.add_argument("--memory-child", choices=["attrib", "pytorch-grad-cam"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.size, args.threads)
        return
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(f"CPU threads: {args.threads}, input 1x3x{args.size}x{args.size}, median of {args.repeats}\n")
    print("| model | method | attrib | peers (peer / attrib) | limit | attrib / limit |")
    print("|---|---|---|---|---|---|")
    for name in models:
        for line in method_rows(name, x, args.repeats, not args.no_channel_methods):
            print(line, flush=True)
    print("\nGrad-CAM for 10 targets of one image: attrib one call, each peer 10 calls\n")
    print("| model | attrib | peers (peer / attrib) |")
    print("|---|---|---|")
    for name in models:
        print(multi_target_row(name, x, args.repeats), flush=True)
    if not args.no_memory:
        print(f"\nScoreCAM on ResNet-50 layer4 (2048 channels), batch_size={CHANNEL_BATCH}: process peak RSS\n")
        print("| method | peak before the call | peak after | added |")
        print("|---|---|---|---|")
        for line in memory_rows(args.size, args.threads):
            print(line, flush=True)


if __name__ == "__main__":
    main()
