"""``attrib demo``: every method of the registry on the shipped model and example images, as a figure and a table."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from .common import CommandError, format_table, method_list, positive_int, progress
from .evaluate import CURVE_STEPS, TOLERANCE, MethodResult, explain_pairs, score_maps

DESCRIPTION = """\
Explain a few generated example images with every method of attrib on a shipped model,
write a PNG figure (each image, then one heat-map overlay per method with its time per
map) and print a table: time per map, pointing-game hit (is the map's maximum on the
object of the class explained?) and deletion/insertion AUC. Runs in about a minute on a
2-core CPU. Each image holds two or three objects; the class explained is not always the
most salient one.
"""


def add_parser(subparsers: Any) -> None:
    from ..data.models import MODEL_NAMES

    parser = subparsers.add_parser("demo", help="every method on the shipped model: a figure and a table",
                                   description=DESCRIPTION)
    parser.add_argument("--model", default="shapes-cnn", choices=MODEL_NAMES, help="shipped model (default shapes-cnn)")
    parser.add_argument("--images", type=positive_int, default=3, help="number of example images (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example images (default 0)")
    parser.add_argument("--method", action="append", metavar="NAME",
                        help="method(s) to run, repeatable or comma-separated (default: all)")
    parser.add_argument("--out", default="attrib-demo.png", help="PNG figure to write (default attrib-demo.png)")
    parser.add_argument("--no-metrics", action="store_true", help="skip the deletion/insertion curves")
    parser.set_defaults(handler=run)


def examples(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` example images with two or more objects, the class explained in each, and its mask."""
    from ..data import make_shapes

    batch = make_shapes(max(16, 4 * count), seed=seed, max_objects=3)
    several = (batch.labels.sum(1) >= 2).nonzero().flatten()[:count]
    if several.numel() < count:  # pragma: no cover - 2+ objects are the common case
        raise CommandError("could not draw enough example images; try another --seed")
    classes = []
    n_classes = batch.labels.shape[1]
    for k, i in enumerate(several.tolist()):
        present = batch.labels[i].nonzero().flatten().tolist()
        # cycle through the classes, so the class explained is not always the first (or the largest) object
        classes.append(min(present, key=lambda c: (c - 2 * k) % n_classes))
    cls = torch.tensor(classes)
    return batch.images[several], cls, batch.masks[several, cls]


def run(args: argparse.Namespace) -> int:
    from ..data import CLASSES, load_model
    from .registry import default_options

    if not args.out.lower().endswith(".png"):
        raise CommandError(f"--out must name a .png file, got {args.out!r}")
    torch.manual_seed(0)  # nothing here draws from it; methods use their own seeds
    names = method_list(args.method)
    model = load_model(args.model)
    images, classes, masks = examples(args.images, args.seed)
    threads = torch.get_num_threads()
    print(f"attrib demo: model {args.model}, {len(images)} generated 64x64 images (seed {args.seed}), "
          f"{len(names)} methods, {threads} CPU thread(s)")
    settings = [
        f"{n} {', '.join(f'{k}={v}' for k, v in default_options(n).items())}" for n in names if default_options(n)
    ]
    if settings:
        print("settings: " + "; ".join(settings))
    print(f"pointing game tolerance {TOLERANCE} px; deletion/insertion with {CURVE_STEPS} steps on the "
          "class probability (sigmoid)" + (" (skipped)" if args.no_metrics else ""))
    explain_pairs("saliency", model, images, classes)  # warm-up, so that the first method's time is not inflated
    results: list[MethodResult] = []
    start = time.perf_counter()
    for name in progress(names, total=len(names), desc="methods"):
        result = MethodResult(name)
        try:
            result.maps, result.seconds = explain_pairs(name, model, images, classes)
            score_maps(result, model, images, classes, masks, curves=not args.no_metrics)
        except Exception as error:  # noqa: BLE001 - one failing method must not hide the others
            result.error = " ".join(str(error).split())[:100] or type(error).__name__
        results.append(result)
    total = time.perf_counter() - start
    write_figure(args.out, images, classes, masks, results, CLASSES)
    print(format_table(*table(results, len(images))))
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"{r.name} failed: {r.error}", file=sys.stderr)
    print(f"{len(results) - len(failed)} of {len(results)} methods in {total:.1f} s; wrote {args.out}")
    return 1 if failed else 0


def table(results: list[MethodResult], count: int) -> tuple[list[str], list[list[str]]]:
    from .registry import spec_of

    header = ["method", "ms / map", "pointing hits", "deletion AUC (lower is better)",
              "insertion AUC (higher is better)"]
    rows = []
    for r in results:
        if r.error:
            rows.append([spec_of(r.name).title, "failed", "-", "-", "-"])
            continue
        hits = "-" if r.hits is None else f"{int(r.hits.sum())}/{count}"
        dele = "-" if r.deletion is None else f"{float(r.deletion.nanmean()):.3f}"
        ins = "-" if r.insertion is None else f"{float(r.insertion.nanmean()):.3f}"
        rows.append([spec_of(r.name).title, f"{r.per_map_ms(count):.1f}", hits, dele, ins])
    return header, rows


def write_figure(path: str, images: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor,
                 results: list[MethodResult], class_names: tuple[str, ...]) -> None:
    from ..viz import save_grid
    from .registry import spec_of

    ok = [r for r in results if r.maps is not None]
    maps = {spec_of(r.name).title: r.maps for r in ok if r.maps is not None}
    subtitles: dict[str, list[str]] = {}
    for r in ok:
        time_text = f"{r.per_map_ms(len(images)):.0f} ms"
        hits = [""] * len(images) if r.hits is None else [", hit" if h else ", miss" for h in r.hits.tolist()]
        subtitles[spec_of(r.name).title] = [time_text + h for h in hits]
    titles = [f"explain: {class_names[int(c)]}" for c in classes]
    save_grid(path, images, maps, image_titles=titles, subtitles=subtitles, masks=masks, max_columns=11)
