"""``explain_dataset``: attribution maps for a whole dataset, resumable and sharded over ranks."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..attribution import Attribution
from ..core.batching import check_batch_size
from ..core.signatures import accepts
from .distributed import RankContext, rank_context
from .loading import shard_batches, split_batch
from .settings import Settings, differences, fingerprint, run_settings
from .store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    RUN_FILE,
    MapStore,
    as_numpy,
    check_run_header,
    is_temporary,
    listed_shards,
    read_json,
    shard_grid,
    shard_is_whole,
    shard_name,
    write_json,
    write_shard,
)
from .targets import DatasetTarget, batch_target, check_dataset_target


class SettingsMismatchError(ValueError):
    """``out`` already holds a run made with other settings."""


def explain_dataset(
    method: Attribution,
    dataset: Dataset[Any],
    out: str | os.PathLike[str],
    *,
    target: DatasetTarget = None,
    batch_size: int = 32,
    num_workers: int = 0,
    resume: bool = True,
    progress: bool = True,
    method_batch_size: int | Literal["auto"] | None = None,
    **attribute_options: Any,
) -> MapStore:
    """Explain every item of ``dataset`` with ``method`` and write the maps to the directory ``out``.

    Item ``i`` of the dataset (a tensor ``x`` of one example, without the batch
    dimension, or a tuple ``(x, label, ...)``) gets the map
    ``method.attribute(x[None], t, **attribute_options)[0]`` for its target ``t``,
    computed ``batch_size`` items per ``attribute`` call and stored as it is made
    (one shard per call; format in :mod:`attrib.dataset.store`). Items are read
    with a ``torch.utils.data.DataLoader`` in order (``num_workers`` loader
    processes) and sent to the device of the model's first parameter: under
    ``torchrun`` put the model on :func:`attrib.dataset.local_device` first.

    Two batch sizes: ``batch_size`` is the number of *items* per ``attribute``
    call (and per shard). The method's own ``batch_size`` option, the most
    *rows* in one forward pass, is ``method_batch_size``: None (the default)
    leaves the method's default (all ``batch_size x n_steps`` rows at once for
    Integrated Gradients, 64 rows for Occlusion and RISE); an int or
    ``"auto"`` (halve on out-of-memory) is passed on. Methods that evaluate
    many copies per item (Integrated Gradients, SmoothGrad) usually want it
    set. It does not enter the run's fingerprint: maps do not depend on it.

    Resuming: with ``resume=True`` a run started again with the same settings
    computes only the shards missing from ``out`` (a killed run loses at most
    the shards being written) and ends with the same store as an uninterrupted
    run. Settings that change the maps (see :mod:`attrib.dataset.settings`)
    must match, else :class:`SettingsMismatchError`; the shard grid must match
    too, so resume with the same ``batch_size``. ``resume=False`` deletes the
    run in ``out`` (its ``run.json``, shards and manifest; nothing else) and
    starts over.

    Distributed: under ``torchrun --nproc_per_node=K [--nnodes=M ...]`` every
    rank calls this function with the same arguments; shard ``c`` is computed
    by global rank ``c % world_size``; ``out`` must be a directory every rank
    sees (a shared file system across machines). Rank 0 writes ``run.json``
    first and ``manifest.json`` after every rank has finished; the store
    equals a one-process store. A progress bar (items/s, time left) is shown
    on rank 0 when ``progress`` and stderr is a terminal.

    Args:
        method: any :class:`attrib.Attribution` returning one map tensor per example.
        dataset: a map-style dataset (``len`` and ``dataset[i]``).
        out: the run's directory (created if missing).
        target: None (the top-1 class), ``"label"`` (each item's integer
            label), an int class, or a callable ``(output, labels) -> scores``
            that scores each output row given its example's label.
        attribute_options: passed to ``method.attribute`` (e.g. ``n_steps``,
            ``baselines``, ``seed``).

    Returns:
        The finished :class:`MapStore` (on every rank).

    Example:
        >>> store = attrib.explain_dataset(attrib.Saliency(model), val_set, "runs/saliency", target="label")
        >>> store[0].shape
        torch.Size([3, 224, 224])
    """
    if not isinstance(method, Attribution):
        raise TypeError(f"method must be an attrib.Attribution, got {type(method).__name__}")
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(f"dataset must be a map-style Dataset (__len__ and __getitem__), got {type(dataset).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (items per attribute call), got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    check_dataset_target(target)
    if "target" in attribute_options or "inputs" in attribute_options:
        raise TypeError("pass the target as explain_dataset's target=..., not among the attribute options")
    if attribute_options.get("generator") is not None:
        raise ValueError(
            "explain_dataset takes seed=..., not generator=...: with a seed every shard is reproducible, so a "
            "resumed or sharded run makes the same maps; a generator's stream would depend on the shards done before"
        )
    if attribute_options.get("return_convergence_delta"):
        raise ValueError("return_convergence_delta is not stored by explain_dataset; compute deltas on a batch instead")
    length = len(dataset)
    if length == 0:
        raise ValueError("dataset is empty")
    options = dict(attribute_options)
    call_options = options
    if method_batch_size is not None:
        rows = check_batch_size(method_batch_size, "method_batch_size")
        if not _takes_batch_size(method):
            raise TypeError(f"{method!r} takes no batch_size option; leave method_batch_size unset")
        call_options = {**options, "batch_size": rows}

    directory = Path(out)
    context = rank_context()
    settings = run_settings(method, options, target, dataset, length)
    todo, stored = _prepare(directory, settings, batch_size, length, resume, context)
    bar = _Progress(directory, length, stored) if progress and context.rank == 0 else None
    try:
        try:
            _compute(method, dataset, directory, todo, target, num_workers, call_options, bar)
        except Exception:  # (an interrupt leaves at once, without meeting the other ranks)
            context.all_ok(False)
            raise
        if not context.all_ok(True):
            raise RuntimeError("another rank of this job failed while explaining the dataset; see its error")
        _finish(directory, batch_size, length, context)
    finally:
        if bar is not None:
            bar.close()
    return MapStore(directory)


def _takes_batch_size(method: Attribution) -> bool:
    """Whether ``method`` (or, for a composition, a method it wraps) takes a ``batch_size`` option."""
    from ..compose import Pipeline, Product

    if isinstance(method, Pipeline):
        return _takes_batch_size(method.method)
    if isinstance(method, Product):
        return _takes_batch_size(method.first) or _takes_batch_size(method.second)
    return accepts(method.attribute, "batch_size")


def _prepare(
    directory: Path, settings: Settings, shard_size: int, length: int, resume: bool, context: RankContext
) -> tuple[list[tuple[int, int]], int]:
    """Check or create the run in ``directory`` (rank 0) and agree on it.

    Returns this rank's missing shards and the number of items already stored.
    """
    error: BaseException | None = None
    if context.rank == 0:
        try:
            _claim_directory(directory, settings, shard_size, length, resume)
        except (OSError, ValueError) as err:
            error = err
    _agree(context, error, f"rank 0 could not prepare {str(directory)!r}; see its error")
    if context.rank != 0:
        # Every rank checks its own settings (its model weights, its dataset) against the run.
        try:
            if not (directory / RUN_FILE).is_file():
                raise FileNotFoundError(
                    f"rank {context.rank} does not see the {RUN_FILE} that rank 0 wrote in {str(directory)!r}; "
                    "out must be a directory every rank sees (a shared file system)"
                )
            _check_settings(read_json(directory / RUN_FILE), settings, shard_size, directory)
        except (OSError, ValueError) as err:
            error = err
    _agree(context, error, f"another rank's settings differ from the run in {str(directory)!r}; see its error")
    done = {(s.start, s.stop) for s in listed_shards(directory)}
    grid = shard_grid(length, shard_size)
    todo = [shard for c, shard in enumerate(grid) if context.owns(c) and shard not in done]
    stored = sum(b - a for a, b in done)
    # No rank writes a shard before every rank has listed what is there.
    context.all_ok(True)
    return todo, stored


def _agree(context: RankContext, error: BaseException | None, elsewhere: str) -> None:
    """A collective: raise this rank's ``error``, or ``RuntimeError(elsewhere)`` if another rank had one."""
    if not context.all_ok(error is None):
        if error is not None:
            raise error
        raise RuntimeError(elsewhere)


def _claim_directory(directory: Path, settings: Settings, shard_size: int, length: int, resume: bool) -> None:
    """Rank 0: create ``run.json`` or check it, and drop what a killed run left half-done."""
    directory.mkdir(parents=True, exist_ok=True)
    run_file = directory / RUN_FILE
    if not resume:
        _remove_run(directory)
    if run_file.is_file():
        _check_settings(read_json(run_file), settings, shard_size, directory)
    else:
        stale = listed_shards(directory)
        if stale:
            raise ValueError(
                f"{str(directory)!r} holds map shards but no {RUN_FILE}; it is not a run attrib can resume "
                "(remove the shards or pick another directory)"
            )
        run = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "shard_size": shard_size,
            "length": length,
            "fingerprint": fingerprint(settings),
            "settings": settings,
        }
        write_json(run_file, run)
    # The run is open again: it is complete only once the manifest is rewritten at the end.
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    grid = set(shard_grid(length, shard_size))
    for shard in listed_shards(directory):
        if (shard.start, shard.stop) not in grid or not shard_is_whole(shard.path, shard.stop - shard.start):
            shard.path.unlink()  # half-written (or not of this grid): recomputed below
    for name in os.listdir(directory):
        if is_temporary(name):
            (directory / name).unlink(missing_ok=True)


def _remove_run(directory: Path) -> None:
    for shard in listed_shards(directory):
        shard.path.unlink()
    for name in (RUN_FILE, MANIFEST_FILE):
        (directory / name).unlink(missing_ok=True)


def _check_settings(run: Any, settings: Settings, shard_size: int, directory: Path) -> None:
    check_run_header(run, directory / RUN_FILE)
    if run.get("fingerprint") != fingerprint(settings):
        lines = differences(dict(run.get("settings", {})), settings)
        raise SettingsMismatchError(
            f"{str(directory)!r} holds a run with other settings ({'; '.join(lines) or 'fingerprint differs'}); "
            "resume it with the same settings, pick another directory, or pass resume=False to start over"
        )
    if run.get("shard_size") != shard_size:
        raise SettingsMismatchError(
            f"{str(directory)!r} holds a run with shards of {run.get('shard_size')} items; "
            f"resume it with batch_size={run.get('shard_size')} (got {shard_size})"
        )


def _model_device(method: Attribution) -> torch.device:
    model = method.model
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


def _compute(
    method: Attribution,
    dataset: Dataset[Any],
    directory: Path,
    todo: list[tuple[int, int]],
    target: DatasetTarget,
    num_workers: int,
    options: dict[str, Any],
    bar: _Progress | None,
) -> None:
    """Compute this rank's missing shards, writing each as soon as it is done."""
    device = _model_device(method)
    for (start, stop), batch in shard_batches(dataset, todo, num_workers=num_workers, pin_memory=device.type == "cuda"):
        inputs, labels = split_batch(batch)
        resolved = batch_target(target, labels, stop - start, device)
        maps = method.attribute(inputs.to(device, non_blocking=True), resolved, **options)
        if not isinstance(maps, Tensor) or maps.dim() == 0 or maps.shape[0] != stop - start:
            got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
            raise TypeError(f"{method!r} must return one map tensor per item, shape ({stop - start}, ...); got {got}")
        write_shard(directory, start, stop, as_numpy(maps))
        if bar is not None:
            bar.update_from_directory()


def _finish(directory: Path, shard_size: int, length: int, context: RankContext) -> None:
    """Rank 0, after every rank is done: check every shard and write the manifest."""
    error: BaseException | None = None
    if context.rank == 0:
        try:
            grid = shard_grid(length, shard_size)
            missing = [f"{a}..{b - 1}" for a, b in grid if not shard_is_whole(directory / shard_name(a, b), b - a)]
            if missing:
                raise RuntimeError(
                    f"after every rank finished, {len(missing)} shard(s) of {str(directory)!r} are missing "
                    f"(items {', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); do all ranks see "
                    "the same directory (a shared file system)?"
                )
            write_json(directory / MANIFEST_FILE, _manifest(directory, grid, length))
        except (OSError, RuntimeError, ValueError) as err:
            error = err
    _agree(context, error, f"rank 0 could not finish the run in {str(directory)!r}; see its error")


def _manifest(directory: Path, grid: list[tuple[int, int]], length: int) -> dict[str, Any]:
    shards = []
    for start, stop in grid:
        array = np.load(directory / shard_name(start, stop), mmap_mode="r", allow_pickle=False)
        shape, dtype = list(array.shape), str(array.dtype)
        shards.append({"file": shard_name(start, stop), "start": start, "stop": stop, "shape": shape, "dtype": dtype})
    return {"complete": True, "length": length, "shards": shards}


class _Progress:
    """tqdm on rank 0 counting the shards every rank has written (so items/s and ETA cover the whole job)."""

    def __init__(self, directory: Path, length: int, already: int) -> None:
        tqdm = importlib.import_module("tqdm.auto").tqdm  # (tqdm ships no type hints)

        self.directory = directory
        self.already = already
        # disable=None: shown only when stderr is a terminal.
        self.bar = tqdm(
            total=length - already, unit="item", desc="explain", disable=None, dynamic_ncols=True, file=sys.stderr
        )

    def update_from_directory(self) -> None:
        done = sum(s.stop - s.start for s in listed_shards(self.directory)) - self.already
        self.bar.update(max(0, min(done, self.bar.total) - self.bar.n))

    def close(self) -> None:
        self.update_from_directory()
        self.bar.close()
