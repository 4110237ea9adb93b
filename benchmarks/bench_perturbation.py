"""Time RISE against TorchRay's ``rise`` and Occlusion against Captum's, each also against its limit.

    python benchmarks/bench_perturbation.py                         # CPU: ResNet-18, 32 px, 200 masks
    python benchmarks/bench_perturbation.py --device cuda --model resnet50 --size 224 --num-masks 8000

Everything runs in one process on the same model (torchvision, random
weights, eval mode) and is printed as a markdown table:

* ``limit``: the number of model evaluations the method needs (masked or
  occluded rows, plus the clean rows Occlusion scores) run as plain no-grad
  forward passes over one ready-made block of the method's kind of rows
  (masked or occluded images, built outside the timings: CPU convolutions are
  measurably faster on identical or untouched rows), at the fastest block size
  among ``--batch-size``, half and twice as many, which every method is then
  given too; timed interleaved with the methods, so load drifts hit all columns.
  ``attrib / limit`` is attrib's overhead over evaluating the model alone.
* TorchRay's ``rise`` forwards ``--batch-size`` masks of one image at a time
  and always scores every class; attrib is timed with one target per image and
  with ``target="all"``. TorchRay uses a sigmoid, attrib its default softmax.
* Captum's ``Occlusion`` gets ``perturbations_per_eval = batch_size // N`` so
  both forward ``--batch-size`` rows at a time.
* ``peak MB``: how far one call raises the resident memory of a fresh
  subprocess that has loaded the model (Linux: the peak is reset just before).

Times are medians of ``--repeats`` interleaved runs after one warm-up each.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import warnings

import torch
import torchvision
from timing import timed

from attrib.methods.occlusion import Occlusion
from attrib.methods.rise import RISE
from attrib.perturb.rise_masks import RiseMasks

warnings.filterwarnings("ignore")  # the peers warn on every call


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.device]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, args.size, args.size, generator=g).to(device)
    target = torch.arange(args.images, device=device) * 7 % 1000
    return model, x, target, device


def methods(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict:
    """Every timed function by name."""
    from captum.attr import Occlusion as CaptumOcclusion
    from torchray.attribution.rise import rise as torchray_rise

    n, b = x.shape[0], args.batch_size
    rise_options = {"num_masks": args.num_masks, "batch_size": b, "seed": 0}
    window, stride = args.window, args.stride
    return {
        "rise": lambda: RISE(model).attribute(x, target, **rise_options),
        "rise_all": lambda: RISE(model).attribute(x, "all", **rise_options),
        "torchray_rise": lambda: torchray_rise(model, x, num_masks=args.num_masks, batch_size=b),
        "occlusion": lambda: Occlusion(model).attribute(x, target, window=window, stride=stride, batch_size=b),
        "captum_occlusion": lambda: CaptumOcclusion(model).attribute(
            x,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            target=target,
            perturbations_per_eval=max(1, b // n),
        ),
    }


def best_block(model: torch.nn.Module, x: torch.Tensor, batch_size: int, repeats: int) -> int:
    """The fastest rows-per-pass of no-grad forwards among batch_size / 2, batch_size and 2 x batch_size."""
    per_row = {}
    for rows in sorted({max(1, batch_size // 2), batch_size, 2 * batch_size}):
        block = masked_block(x, rows)
        fns = {"forward": lambda block=block, rows=rows: plain_forwards(model, block, rows)}
        per_row[rows] = timed(fns, repeats, x.device)["forward"] / rows
    return min(per_row, key=lambda rows: per_row[rows])


def masked_block(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``rows`` RISE-masked copies of the images: the kind of rows RISE evaluates."""
    masks = RiseMasks(rows, x.shape[2:], seed=1, device=x.device).chunk(0, rows)
    return x[torch.arange(rows, device=x.device) % x.shape[0]] * masks


def occluded_block(x: torch.Tensor, rows: int, window: int, stride: int) -> torch.Tensor:
    """``rows`` copies of the images with one window zeroed each, in sliding order: the kind of rows Occlusion
    evaluates (built once, outside the timings)."""
    block = x[torch.arange(rows, device=x.device) % x.shape[0]].clone()
    positions = (x.shape[-1] - window + stride - 1) // stride + 1
    for row in range(rows):
        k = (row // x.shape[0]) % (positions * positions)
        top, left = (k // positions) * stride, (k % positions) * stride
        block[row, :, top : top + window, left : left + window] = 0
    return block


def plain_forwards(model: torch.nn.Module, block: torch.Tensor, evaluations: int) -> None:
    """``evaluations`` rows through the model in passes of ``len(block)`` rows: the limit of a method."""
    with torch.no_grad():
        for start in range(0, evaluations, len(block)):
            model(block[: min(len(block), evaluations - start)])


def peak_memory(args: argparse.Namespace, name: str) -> float:
    """MB of peak RSS growth of a fresh process running method ``name`` once."""
    skip = ("measure", "repeats")
    options = {key: value for key, value in vars(args).items() if key not in skip and value is not None}
    command = [sys.executable, __file__, "--measure", name]
    command += [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


def measure(args: argparse.Namespace) -> None:
    model, x, target, _ = setup(args)
    fn = methods(args, model, x, target)[args.measure]
    with open("/proc/self/clear_refs", "w") as clear:  # Linux: restart the peak (VmHWM) from the current RSS
        clear.write("5")
    before = status_mb("VmRSS")
    fn()
    print(json.dumps({"peak_mb": status_mb("VmHWM") - before}))


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet18", help="a torchvision classifier (random weights)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--images", type=int, default=2, help="images per call (N)")
    parser.add_argument("--num-masks", type=int, default=200, help="RISE masks")
    parser.add_argument("--window", type=int, default=8, help="Occlusion window side (all channels)")
    parser.add_argument("--stride", type=int, default=2, help="Occlusion stride")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args)
        return

    model, x, target, device = setup(args)
    rows = best_block(model, x, args.batch_size, 3)
    args.batch_size = rows  # every method and the limit run at the fastest block size
    blocks = {"rise": masked_block(x, rows), "occlusion": occluded_block(x, rows, args.window, args.stride)}
    fns = methods(args, model, x, target)
    n = x.shape[0]
    positions = (args.size - args.window + args.stride - 1) // args.stride + 1
    evaluations = {"rise": args.num_masks * n, "occlusion": positions**2 * n + n}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"# {args.model}, {args.size} px, N={n}, batch_size={rows} (the fastest), device={device} ({where}), "
        f"torch {torch.__version__}, median of {args.repeats} interleaved runs\n"
    )
    print("| method | evaluations | limit (s) | attrib (s) | peer (s) | attrib / limit | attrib / peer "
          "| attrib peak MB | peer peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    cases = [
        (f"RISE, {args.num_masks} masks, 1 target vs TorchRay rise", "rise", "torchray_rise", "rise"),
        (f"RISE, {args.num_masks} masks, all classes vs TorchRay rise", "rise_all", "torchray_rise", "rise"),
        (f"Occlusion {args.window}px/{args.stride} vs Captum Occlusion", "occlusion", "captum_occlusion", "occlusion"),
    ]
    peaks: dict[str, float] = {}

    def peak(name: str) -> float:
        if name not in peaks:
            peaks[name] = peak_memory(args, name)
        return peaks[name]

    for label, ours, theirs, kind in cases:
        limit_fn = functools.partial(plain_forwards, model, blocks[kind], evaluations[kind])
        t = timed({"ours": fns[ours], "theirs": fns[theirs], "limit": limit_fn}, args.repeats, device)
        limit = t["limit"]
        print(
            f"| {label} | {evaluations[kind]} | {limit:.2f} | {t['ours']:.2f} | {t['theirs']:.2f} | "
            f"{t['ours'] / limit:.3f} | {t['ours'] / t['theirs']:.3f} | "
            f"{peak(ours):.0f} | {peak(theirs):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
