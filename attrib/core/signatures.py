"""Routing keyword options to the methods that accept them (for wrappers)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (explicitly or via ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if name in params and params[name].kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def supported(fn: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``fn`` accepts."""
    return {name: value for name, value in options.items() if accepts(fn, name)}
