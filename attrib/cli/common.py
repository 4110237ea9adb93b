"""Small pieces shared by the subcommands: errors, progress bars, argument parsing, timing."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class CommandError(Exception):
    """A user error: the command prints the message on one line and exits with status 2."""


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool | None = None
) -> Iterator[T]:
    """``iterable`` with a tqdm bar on stderr, shown only when stderr is a terminal (or ``enabled``)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def method_list(values: list[str] | None) -> list[str]:
    """Registry names from repeated and/or comma-separated ``--method`` values (None: every method)."""
    from .registry import canonical_name, method_names

    if not values:
        return list(method_names())
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            if part.strip().lower() == "all":
                names.extend(n for n in method_names() if n not in names)
                continue
            try:
                name = canonical_name(part)
            except ValueError as error:
                raise CommandError(str(error)) from None
            if name not in names:
                names.append(name)
    if not names:
        raise CommandError("no method given")
    return names


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_method(name: str, model: torch.nn.Module, images: Tensor, target: Any, *, layer: str | None = None,
               options: dict[str, Any] | None = None) -> tuple[Tensor, float]:
    """The ``(N, 1, H, W)`` maps of registry method ``name`` and the seconds they took.

    ``options`` update the registry's fast defaults.
    """
    from .registry import build_method, default_options

    method = build_method(name, model, layer=layer)
    kwargs = default_options(name, size=max(images.shape[-2:]))
    kwargs.update(options or {})
    maps, seconds = timed(lambda: method.attribute(images, target, **kwargs))
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} returned {type(maps).__name__}, expected a Tensor")
    return maps.detach(), seconds


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-markdown table with aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
