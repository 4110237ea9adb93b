"""``attrib run``: explain a whole dataset into a resumable map store, on one process or under ``torchrun``.

Example::

    attrib run --model resnet50 --weights DEFAULT --data /data/imagenet/val --method gradcam --out runs/gradcam
    torchrun --nproc_per_node=8 -m attrib run --model resnet50 --weights DEFAULT \\
        --data /data/imagenet/val --method gradcam --out runs/gradcam
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from .common import CommandError, positive_int

_TARGETS = "top1 (the predicted class), label (the folder's / item's label) or a class index"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``attrib run`` on an argparse ``subparsers`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="explain every item of a dataset into a resumable map store (works under torchrun)",
        description=(
            "Explain every item of a dataset with one method and write the maps to OUT as they are made "
            "(see attrib.MapStore for the format). Run it again with the same arguments to resume; launch it "
            "with `torchrun --nproc_per_node=K -m attrib run ...` to share the items between K processes."
        ),
    )
    parser.add_argument("--model", required=True, help="shipped model, torchvision name, model file or module:function")
    parser.add_argument("--weights", help="state_dict file, or a torchvision weights name (DEFAULT, IMAGENET1K_V1)")
    parser.add_argument(
        "--data",
        required=True,
        help="an image folder (ImageFolder layout: one sub-folder per class) or module:function returning a Dataset",
    )
    parser.add_argument("--method", required=True, help="method name (see `attrib explain --help`)")
    parser.add_argument("--out", required=True, help="directory of the map store (created; resumed if it exists)")
    parser.add_argument("--target", default="top1", help=f"what to explain: {_TARGETS} (default top1)")
    parser.add_argument("--layer", help="layer (dotted module name) for layer methods")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="attribute option over the method's defaults, VALUE a Python literal (repeatable), e.g. n_steps=64",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="items per attribute call and per shard")
    parser.add_argument(
        "--method-batch-size",
        help="the method's own batch_size (rows per forward pass): an int or auto (default: the method's)",
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--size", type=positive_int, help="image side for an image folder (default: the model's, 224)")
    parser.add_argument(
        "--normalize",
        choices=("auto", "imagenet", "none"),
        default="auto",
        help="normalisation of image-folder images (auto: none for shipped models, imagenet otherwise)",
    )
    parser.add_argument("--restart", action="store_true", help="delete the run in OUT and start over (no resuming)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_command)
    return parser


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["n_steps=64", "areas=[0.1]"]`` as ``{"n_steps": 64, "areas": [0.1]}`` (values are Python literals)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CommandError(f"--option must be KEY=VALUE with KEY an option name, got {item!r}")
        try:
            options[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            options[key] = text.strip()  # a bare word is a string: --option mode=blur
    return options


def parse_target(text: str) -> Any:
    """``top1`` -> None, ``label`` -> "label", ``3`` -> 3."""
    value = text.strip().lower()
    if value in ("top1", "top-1", "none", "predicted"):
        return None
    if value == "label":
        return "label"
    try:
        index = int(value)
    except ValueError:
        raise CommandError(f"--target must be {_TARGETS}; got {text!r}") from None
    if index < 0:
        raise CommandError(f"--target class index must be >= 0, got {index}")
    return index


def _method_batch_size(text: str | None) -> Any:
    if text is None:
        return None
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    try:
        rows = int(value)
    except ValueError:
        rows = 0
    if rows < 1:
        raise CommandError(f"--method-batch-size must be a positive int or auto; got {text!r}")
    return rows


def load_dataset(spec: str, *, size: int, normalization: str) -> Any:
    """An image folder as a torchvision ``ImageFolder`` (resized, centre-cropped, to tensor, normalised),
    or the Dataset returned by ``module:function``."""
    path = Path(spec)
    if path.is_dir():
        return _image_folder(path, size, normalization)
    if ":" in spec and not path.exists():
        module_name, _, attr = spec.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # `attrib run --data mydata:val` finds ./mydata.py, like python -m
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise CommandError(f"cannot import {module_name!r} for --data {spec!r}: {error}") from None
        fn = getattr(module, attr, None)
        if fn is None or not callable(fn):
            raise CommandError(f"module {module_name!r} has no callable {attr!r} for --data")
        dataset = fn()
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise CommandError(f"--data {spec} returned a {type(dataset).__name__}, expected a map-style Dataset")
        return dataset
    raise CommandError(f"--data {spec!r} is neither a directory nor module:function")


def _image_folder(path: Path, size: int, normalization: str) -> Any:
    try:
        datasets = importlib.import_module("torchvision.datasets")  # (torchvision ships no type hints)
        transforms = importlib.import_module("torchvision.transforms")
    except ImportError:  # pragma: no cover - torchvision comes with the vision extra
        raise CommandError("reading an image folder needs torchvision: pip install 'attrib[vision]'") from None
    from .loading import NORMALIZATIONS

    mean, std = NORMALIZATIONS[normalization]
    transform = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as error:
        raise CommandError(f"--data {str(path)!r}: {' '.join(str(error).split())}") from None


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``attrib run``."""
    from ..data.models import MODEL_NAMES
    from ..dataset import explain_dataset, local_device, rank_context
    from .loading import load_model, model_input_size
    from .registry import build_method, canonical_name, default_options

    if args.num_workers < 0:
        raise CommandError(f"--num-workers must be >= 0, got {args.num_workers}")
    try:
        name = canonical_name(args.method)
    except ValueError as error:
        raise CommandError(str(error)) from None
    target = parse_target(args.target)
    options = default_options(name)
    options.update(parse_options(args.option))
    rows = _method_batch_size(args.method_batch_size)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {args.out!r} exists and is not a directory")

    context = rank_context()  # joins the torchrun job (if any) before the model goes to this rank's GPU
    model = load_model(args.model, weights=args.weights, device=local_device())
    normalization = args.normalize
    if normalization == "auto":
        normalization = "none" if args.model in MODEL_NAMES else "imagenet"
    size = args.size or model_input_size(model) or 224
    dataset = load_dataset(args.data, size=size, normalization=normalization)
    method = build_method(name, model, layer=args.layer)
    store = explain_dataset(
        method,
        dataset,
        out,
        target=target,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        resume=not args.restart,
        progress=not args.no_progress,
        method_batch_size=rows,
        **options,
    )
    if context.rank == 0:
        print(f"attrib run: {len(store)} maps of {store.method} in {str(out)!r} (complete: {store.complete})")
    return 0
