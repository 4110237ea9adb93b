"""Argument checks shared by the methods, with messages that name the argument and what was expected."""

from __future__ import annotations

import numbers


def positive_int(value: object, name: str, meaning: str | None = None, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``, else a ValueError naming ``name``.

    ``meaning`` (e.g. "the number of random orders") is added to the message.

    Example:
        >>> positive_int(25, "n_samples")
        25
        >>> positive_int(0, "n_samples", "the number of noisy copies")
        Traceback (most recent call last):
        ValueError: n_samples must be a positive int (the number of noisy copies), got 0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        detail = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be {expected}{detail}, got {value!r}")
    return int(value)
