"""``attrib benchmark``: the localisation benchmark on the shipped data (TorchRay's table, for attrib's methods).

For every (image, class) pair of ``make_shapes(images, seed=seed)`` each
method explains the class; the table gives, per model and method, the
pointing-game accuracy (mean over classes of the per-class hit rate, as
TorchRay) on all pairs and on the difficult ones (the class covers under a
quarter of the image and another class is present), the deletion and
insertion AUCs of the class probability, and the time per map. The centre
and random baselines come first. :func:`localisation_benchmark` is the
same thing as a function, with a hook for other implementations
(``benchmarks/bench_localisation.py`` adds TorchRay's and Captum's).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .common import CommandError, format_table, method_list, positive_int, progress
from .evaluate import CURVE_STEPS, TOLERANCE, MethodResult, baseline_maps, explain_pairs, score_maps

PeerMethod = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``(model, images, classes) -> (P, 1, H, W)`` maps: another library's implementation of a method."""

DEFAULT_SEED = 2026
"""Seed of the benchmark images (training used seeds from 1,000,000 and 7 for the accuracy check)."""


@dataclass
class BenchmarkRow:
    """One line of the table."""

    model: str
    method: str
    implementation: str
    pointing_all: float = math.nan
    pointing_difficult: float = math.nan
    deletion: float = math.nan
    insertion: float = math.nan
    ms_per_map: float = math.nan
    error: str | None = None

    def cells(self) -> list[str]:
        def f(value: float, digits: int = 3) -> str:
            return "-" if math.isnan(value) else f"{value:.{digits}f}"

        if self.error:
            return [self.model, self.method, self.implementation, "failed: " + self.error[:60], "", "", "", ""]
        return [self.model, self.method, self.implementation, f(self.pointing_all), f(self.pointing_difficult),
                f(self.deletion), f(self.insertion), f(self.ms_per_map, 1)]


HEADER = ["model", "method", "implementation", "pointing (all)", "pointing (difficult)", "deletion AUC ↓",
          "insertion AUC ↑", "ms / map"]


@dataclass(frozen=True)
class Pairs:
    """The benchmark's (image, class) pairs: images ``(P, 3, H, W)``, classes, masks ``(P, H, W)``, difficult."""

    images: Tensor
    classes: Tensor
    masks: Tensor
    difficult: Tensor

    @classmethod
    def generate(cls, count: int, seed: int) -> Pairs:
        from ..data import make_shapes

        batch = make_shapes(count, seed=seed)
        image, klass = batch.pairs()
        return cls(batch.images[image], klass, batch.masks[image, klass], batch.difficult[image, klass])


def _summarise(row: BenchmarkRow, result: MethodResult, pairs: Pairs) -> BenchmarkRow:
    from ..data import CLASSES
    from ..metrics import pointing_game_accuracy

    if result.error is not None or result.hits is None:
        row.error = result.error or "no maps"
        return row
    n = len(CLASSES)
    row.pointing_all = float(pointing_game_accuracy(result.hits, pairs.classes, num_classes=n).accuracy)
    if bool(pairs.difficult.any()):
        row.pointing_difficult = float(
            pointing_game_accuracy(result.hits, pairs.classes, pairs.difficult, num_classes=n).accuracy
        )
    if result.deletion is not None and result.insertion is not None:
        row.deletion = float(result.deletion.nanmean())
        row.insertion = float(result.insertion.nanmean())
    if result.maps is not None and result.seconds > 0:
        row.ms_per_map = result.per_map_ms(len(pairs.images))
    return row


def localisation_benchmark(
    model_names: Sequence[str],
    methods: Sequence[str],
    *,
    images: int = 32,
    seed: int = DEFAULT_SEED,
    curves: bool = True,
    baselines: bool = True,
    peers: dict[str, dict[str, PeerMethod]] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    show_progress: bool | None = None,
) -> list[BenchmarkRow]:
    """The benchmark's rows for every model and method.

    Args:
        model_names: shipped models (``"shapes-cnn"``, ``"shapes-resnet"``).
        methods: registry names.
        images: number of generated images (each gives one pair per class it holds).
        seed: seed of the images.
        curves: also compute deletion and insertion AUCs.
        baselines: add the centre and random baselines.
        peers: ``{registry name: {implementation: fn}}``: other implementations, scored alike.
        options: ``{registry name: options}`` overriding the registry's defaults.
        show_progress: a progress bar (default: when stderr is a terminal).
    """
    from ..data import load_model

    pairs = Pairs.generate(images, seed)
    rows: list[BenchmarkRow] = []
    jobs: list[tuple[str, str, str]] = []
    for model_name in model_names:
        if baselines:
            jobs += [(model_name, "center", "baseline"), (model_name, "random", "baseline")]
        for name in methods:
            jobs.append((model_name, name, "attrib"))
            jobs += [(model_name, name, impl) for impl in (peers or {}).get(name, {})]
    models = {name: load_model(name) for name in model_names}
    for model_name, name, impl in progress(jobs, total=len(jobs), desc="benchmark", enabled=show_progress):
        model = models[model_name]
        result = MethodResult(name)
        try:
            if impl == "baseline":
                result.maps = baseline_maps(name, len(pairs.images), pairs.images.shape[-1], seed=seed)
            elif impl == "attrib":
                # one pair first, untimed: the first call of a method pays one-off costs (layer lookup, allocator)
                explain_pairs(name, model, pairs.images[:1], pairs.classes[:1], options=(options or {}).get(name))
                result.maps, result.seconds = explain_pairs(
                    name, model, pairs.images, pairs.classes, options=(options or {}).get(name)
                )
            else:
                fn = (peers or {})[name][impl]
                fn(model, pairs.images[:1], pairs.classes[:1])
                start = time.perf_counter()
                result.maps = fn(model, pairs.images, pairs.classes).detach()
                result.seconds = time.perf_counter() - start
            score_maps(result, model, pairs.images, pairs.classes, pairs.masks, curves=curves)
        except Exception as error:  # noqa: BLE001 - a failing method is a row of the table, not the end
            result.error = " ".join(str(error).split()) or type(error).__name__
        from .registry import METHODS

        title = METHODS[name].title if name in METHODS else name
        rows.append(_summarise(BenchmarkRow(model_name, title, impl), result, pairs))
    return rows


def render(rows: list[BenchmarkRow]) -> str:
    """The rows as a markdown table."""
    return format_table(HEADER, [r.cells() for r in rows])


def add_parser(subparsers: Any) -> None:
    from ..data.models import MODEL_NAMES

    parser = subparsers.add_parser(
        "benchmark", help="the localisation benchmark (pointing game, deletion/insertion) on the shipped data",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--model", action="append", choices=MODEL_NAMES,
                        help="shipped model(s), repeatable (default shapes-cnn)")
    parser.add_argument("--images", type=positive_int, default=32, help="generated images (default 32)")
    parser.add_argument("--method", action="append", metavar="NAME",
                        help="method(s), repeatable or comma-separated (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the images (default {DEFAULT_SEED})")
    parser.add_argument("--no-curves", action="store_true", help="skip deletion/insertion (pointing game only)")
    parser.add_argument("--no-baselines", action="store_true", help="leave out the centre and random baselines")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    models = args.model or ["shapes-cnn"]
    names = method_list(args.method)
    print(f"attrib benchmark: {', '.join(models)}; {args.images} images (seed {args.seed}); pointing tolerance "
          f"{TOLERANCE} px" + ("" if args.no_curves else f"; deletion/insertion with {CURVE_STEPS} steps"))
    start = time.perf_counter()
    rows = localisation_benchmark(models, names, images=args.images, seed=args.seed, curves=not args.no_curves,
                                  baselines=not args.no_baselines)
    print(render(rows))
    print(f"{len(rows)} rows in {time.perf_counter() - start:.1f} s")
    failed = [r for r in rows if r.error]
    if failed:
        raise CommandError(f"{len(failed)} method(s) failed: {', '.join(r.method for r in failed)}")
    return 0
