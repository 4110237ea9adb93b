"""Random number generators that never touch torch's global RNG, and draws laid out so they do not depend on the batch.

* :func:`make_generator`: the private generator a method draws from.
* :func:`feature_major_rand`: ``(count, features)`` uniforms whose column
  ``j`` is the same for every ``features > j``, so an example with fewer
  features (a shorter text, fewer superpixels) reads the same draws in a batch
  as alone.
* :class:`NoiseStream`: per-copy noise for sample-major rows, independent of
  how the rows are split into blocks.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor


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


def feature_major_rand(
    count: int, features: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(count, features)`` uniforms on [0, 1), drawn feature by feature: column ``j`` does not depend on ``features``.

    The draw is ``rand(features, count)`` transposed: feature ``j``'s
    ``count`` values are the ``j``-th run of ``count`` numbers of the stream,
    so ``feature_major_rand(S, F)[:, :G]`` equals ``feature_major_rand(S, G)``
    from the same generator state (torch's CPU generator fills a tensor in
    element order; its CUDA kernels give element ``i`` the draws of Philox
    subsequence ``i`` while one grid stride covers the smaller tensor, and
    the same layout beyond). Sampling methods draw over the
    largest feature count of a batch and let each example read its first
    ``F_e`` columns, which are then the draws it gets alone.

    Example:
        >>> wide = feature_major_rand(4, 6, torch.Generator().manual_seed(0))
        >>> torch.equal(wide[:, :3], feature_major_rand(4, 3, torch.Generator().manual_seed(0)))
        True
    """
    device = torch.device(generator.device)
    return torch.rand(features, count, generator=generator, device=device, dtype=dtype).t()


def draw_dtype(x: Tensor) -> torch.dtype:
    """The dtype noise for ``x`` is drawn in: at least float32, so half-precision inputs see float32's draws."""
    return torch.promote_types(x.dtype, torch.float32)


class NoiseStream:
    """Noise for sample-major rows (row ``s * N + n`` is copy ``s`` of example ``n``), drawn a whole copy at a time.

    ``draw()`` returns one copy's draws for all ``N`` examples (a tuple of
    ``(N, ...)`` tensors); copies are drawn in order, so the noise does not
    depend on how rows are split into blocks. The copies a block spans stay
    held until a later block starts past them, so a block retried after an
    out-of-memory error (with ``batch_size="auto"``) gets the same noise
    again; at most the copies of one block (``batch_size / N + 1``) are held.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> stream = NoiseStream(lambda: (torch.randn(3, 5, generator=g),), 3)
        >>> (rows,) = stream.rows(0, 4)          # copy 0 (3 rows) and the first row of copy 1
    """

    def __init__(self, draw: Callable[[], tuple[Tensor, ...]], n: int) -> None:
        self._draw = draw
        self._n = n
        self._first = 0  # copy number of self._held[0]
        self._held: list[tuple[Tensor, ...]] = []

    def rows(self, start: int, stop: int) -> tuple[Tensor, ...]:
        """The draws of rows ``start .. stop - 1``, one tensor ``(stop - start, ...)`` per drawn tensor."""
        first, last = start // self._n, (stop - 1) // self._n
        if first < self._first:
            raise RuntimeError("noise rows must be requested in order")  # never: blocks only move forward
        drop = min(first - self._first, len(self._held))
        del self._held[:drop]
        self._first += drop
        while self._first + len(self._held) <= last:
            self._held.append(self._draw())
        pieces = []
        row = start
        while row < stop:
            copy, example = divmod(row, self._n)
            take = min(stop - row, self._n - example)
            pieces.append(tuple(c[example : example + take] for c in self._held[copy - self._first]))
            row += take
        return tuple(parts[0] if len(parts) == 1 else torch.cat(parts) for parts in zip(*pieces))
