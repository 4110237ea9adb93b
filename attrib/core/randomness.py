"""Random number generators that never touch torch's global RNG."""

from __future__ import annotations

import numbers

import torch


def make_generator(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The generator a random method draws from.

    ``generator`` is used as given (its device must match ``device``); else a
    private generator on ``device`` seeded with ``seed``, or with fresh entropy
    when ``seed`` is None. torch's global RNG is never read or advanced.
    """
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator, not both")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if torch.device(generator.device).type != torch.device(device).type:
            raise ValueError(f"generator lives on {generator.device} but the inputs are on {device}")
        return generator
    fresh = torch.Generator(device=device)
    if seed is None:
        fresh.seed()  # entropy from the OS, not from the global generator
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    else:
        fresh.manual_seed(int(seed))
    return fresh
