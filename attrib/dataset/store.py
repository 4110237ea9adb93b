"""The on-disk map store of a dataset run, and :class:`MapStore` to read it.

Format (version 1); every file opens without attrib::

    out/
      run.json                        settings of the run (written first)
      items-000000000-000000032.npy   maps of items 0..31, shape (32, *map_shape)
      items-000000032-000000064.npy   maps of items 32..63
      ...
      manifest.json                   written last, once every shard exists

* A shard ``items-{start:09d}-{stop:09d}.npy`` is a plain ``.npy`` array
  (``numpy.load`` opens it) holding the maps of dataset items
  ``start .. stop-1`` in order, one row per item. Shards tile the item range on a
  fixed grid of ``shard_size`` items (the last may be shorter), the same whatever
  the number of processes that wrote them.
* ``run.json``: ``{"format": "attrib.MapStore", "format_version": 1,
  "shard_size": S, "length": N, "fingerprint": "<sha256>", "settings": {...}}``
  (see :mod:`attrib.dataset.settings` for the settings).
* ``manifest.json``: ``{"complete": true, "length": N, "shards": [{"file": ...,
  "start": ..., "stop": ..., "shape": [...], "dtype": "float32"}, ...]}``.

Every file is written to ``NAME.tmp``, flushed and fsynced, then renamed over
``NAME`` (atomic on POSIX), and the directory is fsynced. A shard that is
present but shorter than its ``.npy`` header says (a crash on a file system
that lost the data but kept the name) is not counted: :class:`MapStore` skips
it and a resumed run recomputes it.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMAT = "attrib.MapStore"
FORMAT_VERSION = 1
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
TEMP_SUFFIX = ".tmp"
_SHARD = re.compile(r"^items-(\d{9})-(\d{9})\.npy$")


@dataclass(frozen=True)
class Shard:
    """One shard file: the maps of items ``start .. stop-1``."""

    start: int
    stop: int
    path: Path


def shard_name(start: int, stop: int) -> str:
    """The file name of the shard holding items ``start .. stop-1``."""
    return f"items-{start:09d}-{stop:09d}.npy"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of this format's temporary files (a write a crash interrupted)."""
    if not name.endswith(TEMP_SUFFIX):
        return False
    final = name[: -len(TEMP_SUFFIX)]
    return final in (RUN_FILE, MANIFEST_FILE) or _SHARD.match(final) is not None


def shard_grid(length: int, shard_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every shard of a dataset of ``length`` items."""
    return [(s, min(s + shard_size, length)) for s in range(0, length, shard_size)]


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    temp = path.with_name(path.name + TEMP_SUFFIX)
    with open(temp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _fsync_directory(path.parent)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_shard(directory: Path, start: int, stop: int, maps: np.ndarray) -> Path:
    """Write the maps of items ``start .. stop-1`` as one shard, atomically."""
    if maps.shape[0] != stop - start:
        raise ValueError(f"a shard of items {start}..{stop - 1} needs {stop - start} maps, got {maps.shape[0]}")
    path = directory / shard_name(start, stop)
    _atomic_write(path, lambda f: np.save(f, maps, allow_pickle=False))
    return path


def as_numpy(maps: Tensor) -> np.ndarray:
    """Maps as a NumPy array for a shard (bfloat16, which NumPy lacks, is stored as float32)."""
    maps = maps.detach()
    if maps.dtype == torch.bfloat16:
        maps = maps.float()
    return maps.cpu().contiguous().numpy()


def shard_is_whole(path: Path, rows: int) -> bool:
    """Whether ``path`` is a readable ``.npy`` with ``rows`` rows and all its bytes."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return False
            offset = f.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return False
    if dtype.hasobject or len(shape) == 0 or shape[0] != rows:
        return False
    return size == offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def listed_shards(directory: Path) -> list[Shard]:
    """Shard files by name, without checking their contents."""
    shards = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        m = _SHARD.match(name)
        if m is not None:
            start, stop = int(m.group(1)), int(m.group(2))
            if stop > start:
                shards.append(Shard(start, stop, directory / name))
    return sorted(shards, key=lambda s: s.start)


def whole_shards(directory: Path) -> list[Shard]:
    """Shards whose files are complete (see :func:`shard_is_whole`)."""
    return [s for s in listed_shards(directory) if shard_is_whole(s.path, s.stop - s.start)]


class MapStore:
    """The maps of a finished or partial :func:`attrib.explain_dataset` run.

    ``store[i]`` is the map of dataset item ``i`` (a CPU tensor, the shape the
    method gave for one item); ``len(store)`` counts the items stored so far;
    ``store.complete`` says whether the run finished. The run's settings are in
    ``store.settings`` (also ``store.method``, ``store.options``,
    ``store.version``, ``store.length``). A store is a snapshot: open it again
    to see shards written since.

    Example:
        >>> store = attrib.MapStore("runs/val-gradcam")
        >>> store.complete, len(store), store.length
        (True, 50000, 50000)
        >>> heat = store[123]              # the map of dataset item 123
        >>> maps = store.stack(range(64))  # (64, *map_shape)

    Raises:
        FileNotFoundError: ``out`` holds no run.
        ValueError: ``out`` holds a file of another format or version.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.path = Path(out)
        run_file = self.path / RUN_FILE
        if not run_file.is_file():
            raise FileNotFoundError(f"{str(self.path)!r} holds no attrib map store (no {RUN_FILE})")
        run = read_json(run_file)
        check_run_header(run, run_file)
        self.run: dict[str, Any] = run
        self.shard_size: int = int(run["shard_size"])
        self.length: int = int(run["length"])
        self.fingerprint: str = str(run["fingerprint"])
        self.settings: dict[str, Any] = dict(run["settings"])
        grid = set(shard_grid(self.length, self.shard_size))
        self._shards = {s.start: s for s in whole_shards(self.path) if (s.start, s.stop) in grid}
        manifest = self.path / MANIFEST_FILE
        self.complete: bool = manifest.is_file() and len(self._shards) == len(grid)
        self._cache: tuple[int, np.ndarray] | None = None

    # The run's settings --------------------------------------------------------------

    @property
    def method(self) -> str:
        """``repr`` of the method that made the maps."""
        return str(self.settings["method"])

    @property
    def options(self) -> dict[str, Any]:
        """The attribute options of the run, as recorded (see :mod:`attrib.dataset.settings`)."""
        return dict(self.settings["options"])

    @property
    def version(self) -> str:
        """The attrib version that made the maps."""
        return str(self.settings["attrib_version"])

    # Items ---------------------------------------------------------------------------

    def shards(self) -> list[Shard]:
        """The complete shards, in item order."""
        return [self._shards[k] for k in sorted(self._shards)]

    def indices(self) -> list[int]:
        """The dataset items whose maps are stored, in increasing order."""
        return [i for s in self.shards() for i in range(s.start, s.stop)]

    def __len__(self) -> int:
        return sum(s.stop - s.start for s in self._shards.values())

    def __contains__(self, index: object) -> bool:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= int(index) < self.length:
            return False
        return int(index) - int(index) % self.shard_size in self._shards

    def _array(self, start: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != start:
            self._cache = (start, np.load(self._shards[start].path, mmap_mode="r", allow_pickle=False))
        return self._cache[1]

    def __getitem__(self, index: int) -> Tensor:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"store index must be an int item number, got {type(index).__name__}")
        index = int(index)
        if not 0 <= index < self.length:
            raise IndexError(f"item {index} is out of range for a dataset of {self.length} items")
        start = index - index % self.shard_size
        if start not in self._shards:
            raise KeyError(f"the map of item {index} is not stored yet (run incomplete; resume it)")
        return torch.from_numpy(np.array(self._array(start)[index - start]))

    def stack(self, indices: Any = None) -> Tensor:
        """Maps of ``indices`` (default: every stored item) stacked into ``(len(indices), *map_shape)``."""
        items = self.indices() if indices is None else [int(i) for i in indices]
        if not items:
            raise ValueError("stack needs at least one item")
        return torch.stack([self[i] for i in items])

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self)}/{self.length} items"
        return f"MapStore({str(self.path)!r}, {self.method}, {state})"


def check_run_header(run: Any, path: Path) -> None:
    """Raise ValueError unless ``run`` is a ``run.json`` this version of attrib reads."""
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an attrib map store file")
    if run.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has store format version {run.get('format_version')!r}; "
            f"this attrib reads version {FORMAT_VERSION}"
        )
