"""``attrib explain``: maps of one or more methods for one or more images of a user's model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .common import CommandError, format_table, method_list, positive_int, progress

DESCRIPTION = """\
Explain your own images with your own model. MODEL is a shipped model (shapes-cnn,
shapes-resnet), a torchvision model name (with --weights a state_dict file or a torchvision
weights name such as DEFAULT), a TorchScript or torch.save file, or module:function returning
a model. Writes a PNG grid (a row per image: the image, then one overlay per method) and,
with --save-maps, the raw (N, 1, H, W) maps of every method (.pt: a dict method -> tensor;
.npy: an array (methods, images, H, W) in the order printed).

With --text, explain sentences with a text classifier instead: MODEL is a local HuggingFace
sequence-classifier directory (save_pretrained; read offline) or the shipped text-classifier;
each method's token scores are printed as coloured tokens, and --html writes them as a page:
  attrib explain --text --model ./my-bert --sentence "not bad at all" --method ig,feature_ablation
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("explain", help="maps for your model and images (or sentences, --text)",
                                   description=DESCRIPTION)
    parser.add_argument("--model", required=True, help="model spec (see above)")
    parser.add_argument("--weights", help="state_dict file, or a torchvision weights name (e.g. DEFAULT)")
    parser.add_argument("--image", action="append", nargs="+", metavar="IMG",
                        help="image file(s); repeatable (required unless --text)")
    parser.add_argument("--method", action="append", metavar="NAME",
                        help="method(s), repeatable or comma-separated; 'all' for every one (default gradcam)")
    parser.add_argument("--target", help="class index to explain, one for all images or comma-separated per "
                        "image (default: each image's top-1 class)")
    parser.add_argument("--layer", help="layer for layer methods (dotted module name; default: the method picks)")
    parser.add_argument("--size", type=positive_int,
                        help="resize images to this side (default: the model's own size, or 224)")
    parser.add_argument("--normalization", choices=("auto", "imagenet", "none"), default="auto",
                        help="input normalisation (auto: none for shipped models, imagenet otherwise)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", default="attrib-explain.png", help="PNG grid to write (default attrib-explain.png)")
    parser.add_argument("--save-maps", metavar="FILE", help="also save the raw maps (.pt or .npy)")
    parser.add_argument("--display", choices=("minmax", "percentile", "signed"), default="minmax",
                        help="normalisation of the maps in the figure (default minmax)")
    from .explain_text import add_arguments

    add_arguments(parser)
    parser.set_defaults(handler=run)


def parse_targets(text: str | None, count: int) -> list[int] | None:
    """``None`` (top-1), or one class index per image from ``--target``."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise CommandError(f"--target must be a class index or comma-separated indices, got {text!r}") from None
    if any(v < 0 for v in values):
        raise CommandError(f"--target class indices must be non-negative, got {text!r}")
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise CommandError(f"--target has {len(values)} classes for {count} images")
    return values


def run(args: argparse.Namespace) -> int:
    if args.text:
        from .explain_text import run as run_text

        return run_text(args)
    if not args.image:
        raise CommandError("--image is required (or --text with --sentence for a text classifier)")
    if args.sentence or args.html:
        raise CommandError("--sentence and --html need --text")
    from ..data import MODEL_NAMES
    from .loading import load_image, load_model, model_input_size, normalize

    if not args.out.lower().endswith(".png"):
        raise CommandError(f"--out must name a .png file, got {args.out!r}")
    if args.save_maps and Path(args.save_maps).suffix.lower() not in (".pt", ".npy"):
        raise CommandError(f"--save-maps must end in .pt or .npy, got {args.save_maps!r}")
    paths = [p for group in args.image for p in group]
    for path in paths:
        if not Path(path).is_file():
            raise CommandError(f"image {path!r} does not exist")
    names = method_list(args.method or ["gradcam"])
    targets = parse_targets(args.target, len(paths))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CommandError(f"unknown --device {args.device!r}") from None
    model = load_model(args.model, weights=args.weights, device=device)
    size = args.size or model_input_size(model) or 224
    raw = torch.cat([load_image(p, size=size) for p in paths]).to(device)
    kind = args.normalization
    if kind == "auto":
        kind = "none" if args.model in MODEL_NAMES else "imagenet"
    inputs = normalize(raw, kind)
    with torch.no_grad():
        logits = model(inputs)
    if logits.dim() != 2:
        raise CommandError(f"the model's output has shape {tuple(logits.shape)}; explain needs (N, classes)")
    classes = logits.shape[1]
    if targets is not None and max(targets) >= classes:
        raise CommandError(f"--target {max(targets)} is out of range: the model has {classes} classes")
    target = torch.tensor(targets, device=device) if targets is not None else logits.argmax(1)
    maps: dict[str, Tensor] = {}
    times: dict[str, float] = {}
    from .common import run_method
    from .registry import spec_of

    for name in progress(names, total=len(names), desc="methods"):
        try:
            result, seconds = run_method(name, model, inputs, target, layer=args.layer)
        except (ValueError, TypeError) as error:
            raise CommandError(f"{name}: {' '.join(str(error).split())}") from None
        maps[name], times[name] = result.cpu(), seconds
    n = len(paths)
    rows = [[spec_of(k).title, f"{1000 * times[k] / n:.1f}", str(tuple(maps[k].shape))] for k in maps]
    print(f"model {args.model}: {n} image(s) at {size} px, classes explained: "
          + ", ".join(f"{Path(p).name}={int(t)}" for p, t in zip(paths, target.tolist())))
    print(format_table(["method", "ms / map", "map shape"], rows))
    from ..viz import save_grid

    titles = [f"{Path(p).name[:18]} (class {int(t)})" for p, t in zip(paths, target.tolist())]
    save_grid(args.out, raw.cpu(), {spec_of(k).title: v for k, v in maps.items()}, image_titles=titles,
              subtitles={spec_of(k).title: f"{1000 * times[k] / n:.0f} ms/map" for k in maps},
              normalization=args.display, max_columns=8)
    print(f"wrote {args.out}")
    if args.save_maps:
        save_maps(args.save_maps, maps)
        print(f"wrote {args.save_maps} (methods in order: {', '.join(maps)})")
    sys.stdout.flush()
    return 0


def save_maps(path: str, maps: dict[str, Tensor]) -> None:
    """Write maps as a ``.pt`` dict (method -> ``(N, 1, H, W)``) or an ``.npy`` array ``(methods, N, H, W)``."""
    if path.lower().endswith(".pt"):
        torch.save(maps, path)
        return
    import numpy as np

    shapes = {tuple(m.shape) for m in maps.values()}
    if len(shapes) != 1:
        raise CommandError("maps of different shapes cannot share one .npy array; save them as .pt")
    np.save(path, torch.stack([m[:, 0] for m in maps.values()]).float().numpy())
