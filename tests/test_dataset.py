"""Dataset-scale runs: stores equal to direct attribution, resumable after SIGKILL, identical for any world size.

Subprocess tests run this module's :func:`worker` (one process, or two under
``torchrun`` on gloo) on :class:`Blobs`, a small deterministic dataset that can
be told through the environment to block at a given item; the worker can also be told
to SIGKILL itself just before the store renames a given temp file. Both make the kill
points of the SIGKILL tests deterministic.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import Dataset

import attrib.dataset.explain as explain_module
from attrib.dataset import MapStore, RankContext, SettingsMismatchError, evaluate_dataset, explain_dataset
from attrib.dataset.store import listed_shards, shard_grid
from attrib.methods.gradient import InputXGradient, Saliency
from attrib.methods.integrated_gradients import IntegratedGradients

from .models import ResidualBNNet

ROOT = Path(__file__).resolve().parents[1]
BLOCK_AT = "ATTRIB_TEST_BLOCK_AT"
MARKER = "ATTRIB_TEST_MARKER"
KILL_AT_RENAME = "ATTRIB_TEST_KILL_AT_RENAME"


class Blobs(Dataset[tuple[torch.Tensor, int]]):
    """``n`` items ``(image (3, 8, 8), label in 0..4)`` drawn from ``seed``.

    With ``ATTRIB_TEST_BLOCK_AT=k`` (and ``ATTRIB_TEST_MARKER=path``) in the
    environment, reading item ``k`` writes ``path`` and then sleeps: the run
    stops there, with every shard before ``k``'s already written.
    """

    fetched: list[int] | None = None  # set to a list to record the items read

    def __init__(self, n: int = 20, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=g)
        self.labels = torch.randint(0, 5, (n,), generator=g).tolist()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if os.environ.get(BLOCK_AT) == str(i):
            Path(os.environ[MARKER]).write_text("blocked")
            time.sleep(600)
        if Blobs.fetched is not None:
            Blobs.fetched.append(i)
        return self.images[i], self.labels[i]


def tiny_model(seed: int = 0) -> nn.Module:
    """The model of every test here (also ``--model tests.test_dataset:tiny_model``)."""
    return ResidualBNNet(seed=seed)


def small_blobs() -> Blobs:
    """``--data tests.test_dataset:small_blobs``."""
    return Blobs(10)


def ig_method(model: nn.Module | None = None) -> IntegratedGradients:
    return IntegratedGradients(model if model is not None else tiny_model())


IG_OPTIONS: dict[str, Any] = {"n_steps": 4}


@contextmanager
def one_thread() -> Iterator[None]:
    """Compute as the single-threaded worker processes do, so maps match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def direct_maps(method: Any, dataset: Blobs, target: Any, **options: Any) -> torch.Tensor:
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return method.attribute(images, target, **options)  # type: ignore[no-any-return]


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(path.glob("items-*.npy"))}


def assert_same_store(a: Path, b: Path) -> None:
    """Same shard files with the same maps, same settings, same manifest."""
    arrays_a, arrays_b = store_arrays(a), store_arrays(b)
    assert list(arrays_a) == list(arrays_b)
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
    for name in ("run.json", "manifest.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text())
    assert not list(a.glob("*.tmp")) and not list(b.glob("*.tmp"))


def worker(argv: list[str]) -> None:
    """Subprocess entry: ``explain OUT N BATCH`` runs IG over ``Blobs(N)`` and, when done, evaluates it.

    With ``ATTRIB_TEST_KILL_AT_RENAME=NAME`` it SIGKILLs itself when the store is about to rename
    ``NAME.tmp`` onto ``NAME`` (the temp file written and fsynced, the rename not done).

    Under ``torchrun`` it also runs ``attrib run`` (IG through the command's registry) into ``OUT-cli``.
    """
    torch.set_num_threads(1)
    kill_at = os.environ.get(KILL_AT_RENAME)
    if kill_at:  # die like `kill -9` just before the store renames a temp file onto ``kill_at``
        rename = os.replace

        def rename_or_die(source: Any, destination: Any) -> None:
            if Path(destination).name == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            rename(source, destination)

        os.replace = rename_or_die
    _, out, n, batch = argv
    dataset = Blobs(int(n))
    store = explain_dataset(
        ig_method(), dataset, out, target="label", batch_size=int(batch), progress=False, **IG_OPTIONS
    )
    scores = evaluate_dataset(lambda maps, items: maps.flatten(1).sum(1), store, dataset)
    from attrib.dataset import rank_context, reduce_across_ranks

    context = rank_context()
    ranks = reduce_across_ranks(torch.tensor([1.0, float(context.rank)]))
    if context.rank == 0:
        torch.save({"scores": scores, "ranks": ranks}, Path(out).parent / "evaluation.pt")
    if context.world_size > 1:
        from attrib.cli import main

        command = ["run", "--model", "tests.test_dataset:tiny_model", "--data", "tests.test_dataset:small_blobs"]
        options = ["--method", "ig", "--option", "n_steps=4", "--target", "label", "--batch-size", "3"]
        assert main([*command, *options, "--out", f"{out}-cli"]) == 0


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom tests.test_dataset import worker\nworker(sys.argv[1:])\n"
    )
    return script


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_job(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in its own process group; on timeout kill the whole group (torchrun and its workers)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n(killed after {timeout} s)"
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# Results -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [None, 2, "label", "callable"])
def test_store_holds_the_methods_maps(tmp_path: Path, target: Any) -> None:
    dataset = Blobs(11)
    labels = torch.tensor(dataset.labels)

    def picked(output: torch.Tensor, row_labels: torch.Tensor) -> torch.Tensor:
        return output.gather(1, row_labels.unsqueeze(1)).squeeze(1)

    run_target = picked if target == "callable" else target
    # method_batch_size=3 makes IG's forward blocks mix rows of different items.
    store = explain_dataset(
        ig_method(),
        dataset,
        tmp_path,
        target=run_target,
        batch_size=4,
        method_batch_size=3,
        progress=False,
        **IG_OPTIONS,
    )
    expected = direct_maps(
        ig_method(), dataset, labels if target in ("label", "callable") else target, batch_size=3, **IG_OPTIONS
    )
    assert store.complete and len(store) == 11 and store.indices() == list(range(11))
    assert store.length == 11 and store.shard_size == 4
    torch.testing.assert_close(store.stack(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(store[np.int64(7)], expected[7], rtol=1e-5, atol=1e-6)
    assert 10 in store and 11 not in store and -1 not in store
    assert store.method == "IntegratedGradients(ResidualBNNet)"
    assert store.options == {"n_steps": 4}
    assert [(s.start, s.stop) for s in store.shards()] == [(0, 4), (4, 8), (8, 11)]


@pytest.mark.parametrize("kind", ["rise", "noise_tunnel"])
def test_callable_target_sees_each_rows_label(tmp_path: Path, kind: str) -> None:
    """RISE wraps the target (softmax scores) and NoiseTunnel selects its rows: the labels must still follow."""
    from attrib.methods.noise_tunnel import NoiseTunnel
    from attrib.methods.rise import RISE

    def picked(output: torch.Tensor, row_labels: torch.Tensor) -> torch.Tensor:
        return output.gather(1, row_labels.unsqueeze(1)).squeeze(1)

    method = RISE(tiny_model()) if kind == "rise" else NoiseTunnel(Saliency(tiny_model()))
    options = {"num_masks": 16, "num_cells": 2} if kind == "rise" else {"n_samples": 3, "method_batch_size": 2}
    dataset = Blobs(5)
    runs = [
        explain_dataset(method, dataset, tmp_path / str(i), target=t, batch_size=3, progress=False, seed=1, **options)
        for i, t in enumerate(["label", picked])
    ]
    torch.testing.assert_close(runs[1].stack(), runs[0].stack(), rtol=1e-5, atol=1e-6)


def test_maps_independent_of_items_per_call(tmp_path: Path) -> None:
    dataset = Blobs(9)
    a = explain_dataset(Saliency(tiny_model()), dataset, tmp_path / "a", batch_size=2, progress=False)
    b = explain_dataset(Saliency(tiny_model()), dataset, tmp_path / "b", batch_size=9, progress=False)
    torch.testing.assert_close(a.stack(), b.stack(), rtol=1e-5, atol=1e-6)


def test_mapstore_readable_with_numpy_alone(tmp_path: Path) -> None:
    store = explain_dataset(Saliency(tiny_model()), Blobs(7), tmp_path, batch_size=3, progress=False)
    reader = (
        "import json, pathlib, sys\nimport numpy as np\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "run = json.loads((out / 'run.json').read_text())\n"
        "manifest = json.loads((out / 'manifest.json').read_text())\n"
        "maps = np.concatenate([np.load(out / s['file']) for s in manifest['shards']])\n"
        "assert 'torch' not in sys.modules and 'attrib' not in sys.modules\n"
        "np.save(out.parent / 'read.npy', maps)\n"
        "print(run['settings']['method'], manifest['complete'], maps.shape)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", reader, str(tmp_path)], capture_output=True, text=True, timeout=60, env=_env()
    )
    _check(result)
    assert result.stdout.split() == ["Saliency(ResidualBNNet)", "True", "(7,", "3,", "8,", "8)"]
    np.testing.assert_array_equal(np.load(tmp_path.parent / "read.npy"), store.stack().numpy())


def test_evaluate_dataset_equals_the_metric_on_the_whole_set(tmp_path: Path) -> None:
    from attrib.metrics.deletion import Deletion
    from attrib.postprocess import ReduceChannels

    model, dataset = tiny_model(), Blobs(9)
    method = Saliency(model).then(ReduceChannels("abs_max"))
    store = explain_dataset(method, dataset, tmp_path, target="label", batch_size=4, progress=False)
    auc = evaluate_dataset(lambda maps, items: Deletion(model, items[0], items[1], steps=8)(maps), store, dataset)
    images, labels = (torch.stack([dataset[i][0] for i in range(9)]), torch.tensor(dataset.labels))
    expected = Deletion(model, images, labels, steps=8)(store.stack())
    assert auc.dtype == torch.float64 and auc.shape == (9,)
    torch.testing.assert_close(auc, expected.double(), rtol=1e-5, atol=1e-6)

    with pytest.raises(TypeError, match="one score per item"):
        evaluate_dataset(lambda maps, items: maps.sum(), store, dataset)
    with pytest.raises(TypeError, match="binds its data first"):
        evaluate_dataset(Deletion(model, images, labels), store, dataset)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="items"):
        evaluate_dataset(lambda maps, items: maps.flatten(1).sum(1), store, Blobs(8))
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="not complete"):
        evaluate_dataset(lambda maps, items: maps.flatten(1).sum(1), tmp_path, dataset)


# Resuming ------------------------------------------------------------------------------


# Where the worker is killed: (environment, items stored before the kill, whether the kill waits for a marker).
KILL_POINTS: dict[str, tuple[dict[str, str], int, bool]] = {
    "between shards": ({BLOCK_AT: "12"}, 12, True),
    "between a shard's temp write and its rename": ({KILL_AT_RENAME: "items-000000008-000000012.npy"}, 8, False),
    "between the last shard and the manifest": ({KILL_AT_RENAME: "manifest.json"}, 20, False),
}


@pytest.mark.parametrize("kill", list(KILL_POINTS))
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: str) -> None:
    environment, stored, wait = KILL_POINTS[kill]
    out, marker = tmp_path / "killed" / "store", tmp_path / "blocked"
    out.parent.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(_script(tmp_path)), "explain", str(out), "20", "4"],
        env=_env(**environment, **{MARKER: str(marker)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while wait and not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the worker never reached item 12"
            time.sleep(0.05)
        if wait:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=90)  # (the other kill points: the worker SIGKILLs itself)
    finally:
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-3000:]

    partial = MapStore(out)
    assert not partial.complete and partial.indices() == list(range(stored)) and len(partial) == stored
    if stored < 20:
        with pytest.raises(KeyError, match="not stored yet"):
            partial[stored]

    fetched: list[int] = []
    monkeypatch.setattr(Blobs, "fetched", fetched)
    with one_thread():
        resumed = explain_dataset(
            ig_method(), Blobs(20), out, target="label", batch_size=4, progress=False, **IG_OPTIONS
        )
    # Item 0 is read first for the settings' fingerprint; then only the missing items were computed.
    assert fetched[0] == 0 and sorted(fetched[1:]) == list(range(stored, 20))
    monkeypatch.setattr(Blobs, "fetched", None)
    assert resumed.complete and resumed.indices() == list(range(20))

    with one_thread():
        explain_dataset(
            ig_method(), Blobs(20), tmp_path / "whole", target="label", batch_size=4, progress=False, **IG_OPTIONS
        )
    assert_same_store(out, tmp_path / "whole")


def test_half_written_shard_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = Blobs(10)
    explain_dataset(Saliency(tiny_model()), dataset, tmp_path, batch_size=3, progress=False)
    before = store_arrays(tmp_path)
    # A crash that kept a shard's name but not all its bytes, a temp file of another shard, no manifest.
    torn = tmp_path / "items-000000003-000000006.npy"
    torn.write_bytes(torn.read_bytes()[:-50])
    (tmp_path / "items-000000006-000000009.npy.tmp").write_bytes(b"\x93NUMPY half")
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "notes.tmp").write_text("the user's own file")

    store = MapStore(tmp_path)
    assert not store.complete
    assert store.indices() == [0, 1, 2, 6, 7, 8, 9] and 4 not in store
    with pytest.raises(KeyError):
        store[4]

    fetched: list[int] = []
    monkeypatch.setattr(Blobs, "fetched", fetched)
    resumed = explain_dataset(Saliency(tiny_model()), dataset, tmp_path, batch_size=3, progress=False)
    assert fetched[0] == 0 and sorted(fetched[1:]) == [3, 4, 5]  # (item 0: the fingerprint)
    assert resumed.complete and len(resumed) == 10
    after = store_arrays(tmp_path)
    assert list(after) == list(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert [p.name for p in tmp_path.glob("*.tmp")] == ["notes.tmp"]  # ours removed, the user's kept


def test_complete_run_is_not_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explain_dataset(Saliency(tiny_model()), Blobs(6), tmp_path, batch_size=4, progress=False)
    fetched: list[int] = []
    monkeypatch.setattr(Blobs, "fetched", fetched)
    store = explain_dataset(Saliency(tiny_model()), Blobs(6), tmp_path, batch_size=4, progress=False)
    assert fetched == [0] and store.complete  # item 0 read for the fingerprint, nothing computed
    fetched.clear()
    explain_dataset(Saliency(tiny_model()), Blobs(6), tmp_path, batch_size=4, resume=False, progress=False)
    assert sorted(fetched[1:]) == list(range(6))  # resume=False starts over



def test_a_layer_chosen_on_the_first_call_resumes(tmp_path: Path) -> None:
    # GradCAM(model) names its layer in repr only after the first call; the same object must still resume.
    from attrib.methods.cam import GradCAM

    method = GradCAM(ResidualBNNet())
    first = explain_dataset(method, Blobs(6), tmp_path, batch_size=4, progress=False)
    assert "chose" in repr(method)
    again = explain_dataset(method, Blobs(6), tmp_path, batch_size=4, progress=False)
    assert again.complete and torch.equal(again[5], first[5])

CHANGES: dict[str, Any] = {
    "options": lambda: (ig_method(), Blobs(8), {"target": "label", "n_steps": 5}),
    "target": lambda: (ig_method(), Blobs(8), {"target": None, "n_steps": 4}),
    "method": lambda: (InputXGradient(tiny_model()), Blobs(8), {"target": "label"}),
    "model": lambda: (ig_method(tiny_model(seed=1)), Blobs(8), {"target": "label", "n_steps": 4}),
    "length": lambda: (ig_method(), Blobs(9), {"target": "label", "n_steps": 4}),
    "first_item": lambda: (ig_method(), Blobs(8, seed=1), {"target": "label", "n_steps": 4}),
    "shard_size": lambda: (ig_method(), Blobs(8), {"target": "label", "n_steps": 4, "batch_size": 3}),
}


def test_changed_settings_are_refused(tmp_path: Path) -> None:
    explain_dataset(ig_method(), Blobs(8), tmp_path, target="label", batch_size=4, progress=False, **IG_OPTIONS)
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    for name, change in CHANGES.items():
        method, dataset, kwargs = change()
        kwargs = {"batch_size": 4, "progress": False, **kwargs}
        expected = "batch_size=4" if name == "shard_size" else ("length" if name == "length" else name)
        with pytest.raises(SettingsMismatchError, match=expected):
            explain_dataset(method, dataset, tmp_path, **kwargs)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files  # nothing touched


def test_bad_arguments(tmp_path: Path) -> None:
    method, data = Saliency(tiny_model()), Blobs(4)
    with pytest.raises(TypeError, match="attrib.Attribution"):
        explain_dataset(tiny_model(), data, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        explain_dataset(method, data, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="target"):
        explain_dataset(method, data, tmp_path, target="labels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        explain_dataset(method, Blobs(0), tmp_path)
    with pytest.raises(ValueError, match="seed"):
        explain_dataset(method, data, tmp_path, generator=torch.Generator())
    with pytest.raises(ValueError, match="method_batch_size"):
        explain_dataset(method, data, tmp_path, method_batch_size=0)
    with pytest.raises(ValueError, match="no label"):
        explain_dataset(method, torch.randn(4, 3, 8, 8), tmp_path / "x", target="label", progress=False)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="no attrib map store"):
        MapStore(tmp_path / "nothing")
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "items-000000000-000000004.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="no run.json"):
        explain_dataset(method, data, tmp_path / "stale", progress=False)


# Several processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadRank(RankContext):
    """A rank of a fake job whose ranks are threads; ``all_ok`` meets the others at a barrier."""

    group: Any = field(default=None, compare=False)

    def all_ok(self, ok: bool) -> bool:
        flags, barrier = self.group
        flags[self.rank] = ok
        barrier.wait()
        result = all(flags)
        barrier.wait()
        return result


@settings(max_examples=8)
@given(n=st.integers(1, 13), shard=st.integers(1, 5), world=st.integers(2, 4))
def test_any_world_size_writes_the_one_process_store(
    tmp_path_factory: pytest.TempPathFactory, n: int, shard: int, world: int
) -> None:
    base = tmp_path_factory.mktemp("world")
    dataset, model = Blobs(n, seed=n), tiny_model()
    explain_dataset(Saliency(model), dataset, base / "one", batch_size=shard, progress=False)

    local = threading.local()
    group = ([True] * world, threading.Barrier(world, timeout=60))
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        local.context = ThreadRank(rank, world, rank, group)
        try:
            explain_dataset(Saliency(model), dataset, base / "many", batch_size=shard, progress=False)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    original = explain_module.rank_context
    explain_module.rank_context = lambda: local.context
    try:
        threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        explain_module.rank_context = original
    assert not errors, errors
    # Every item was computed once, by the rank owning its shard, and the files are the one-process files.
    assert [(s.start, s.stop) for s in listed_shards(base / "many")] == shard_grid(n, shard)
    assert_same_store(base / "one", base / "many")


def test_torchrun_two_processes_equal_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attrib.cli import main

    (tmp_path / "two").mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(_script(tmp_path)), "explain", str(tmp_path / "two" / "store"), "14", "3",
    ]  # fmt: skip
    _check(_run_job(command, timeout=180))

    dataset = Blobs(14)
    with one_thread():
        one = explain_dataset(
            ig_method(), dataset, tmp_path / "one", target="label", batch_size=3, progress=False, **IG_OPTIONS
        )
    assert_same_store(tmp_path / "two" / "store", tmp_path / "one")
    evaluation = torch.load(tmp_path / "two" / "evaluation.pt")
    # Per-item scores gathered from both ranks, in item order; a reduction saw both ranks.
    torch.testing.assert_close(evaluation["scores"], one.stack().flatten(1).sum(1).double())
    assert evaluation["ranks"].tolist() == [2.0, 1.0]

    # `attrib run` under torchrun wrote the store the command writes in one process.
    monkeypatch.chdir(ROOT)
    command = ["run", "--model", "tests.test_dataset:tiny_model", "--data", "tests.test_dataset:small_blobs"]
    options = ["--method", "ig", "--option", "n_steps=4", "--target", "label", "--batch-size", "3"]
    with one_thread():
        assert main([*command, *options, "--out", str(tmp_path / "one-cli"), "--no-progress"]) == 0
    assert_same_store(tmp_path / "two" / "store-cli", tmp_path / "one-cli")


# The command ---------------------------------------------------------------------------


def _image_folder(root: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for label in ("circle", "square"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_cli_run_on_an_image_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision import datasets, transforms

    from attrib.cli import main
    from attrib.cli.registry import build_method

    monkeypatch.chdir(ROOT)
    folder = _image_folder(tmp_path / "images")
    args = ["run", "--model", "tests.test_dataset:tiny_model", "--data", str(folder), "--method", "saliency"]
    options = ["--target", "label", "--size", "16", "--normalize", "none", "--batch-size", "4"]
    assert main([*args, *options, "--out", str(tmp_path / "out")]) == 0
    assert "6 maps" in capsys.readouterr().out
    store = MapStore(tmp_path / "out")
    assert store.complete and store[0].shape == (1, 16, 16)

    transform = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.ToTensor()])
    images = datasets.ImageFolder(str(folder), transform=transform)
    assert images.classes == ["circle", "square"]  # labels from the folder names
    x = torch.stack([images[i][0] for i in range(6)])
    expected = build_method("saliency", tiny_model()).attribute(x, torch.tensor(images.targets))
    torch.testing.assert_close(store.stack(), expected, rtol=1e-5, atol=1e-6)


def test_cli_run_module_dataset_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attrib.cli import main

    monkeypatch.chdir(ROOT)
    base = ["run", "--model", "tests.test_dataset:tiny_model", "--data", "tests.test_dataset:small_blobs"]
    out = str(tmp_path / "out")
    assert main([*base, "--method", "ig", "--option", "n_steps=3", "--out", out, "--no-progress"]) == 0
    store = MapStore(out)
    assert store.complete and store.options == {"n_steps": 3} and len(store) == 10
    capsys.readouterr()

    bad = {
        "data": [*base[:3], "--data", str(tmp_path / "missing"), "--method", "ig", "--out", out],
        "target": [*base, "--method", "ig", "--target", "dog", "--out", out],
        "option": [*base, "--method", "ig", "--option", "n_steps", "--out", out],
        "method": [*base, "--method", "nope", "--out", out],
        "settings": [*base, "--method", "ig", "--option", "n_steps=5", "--out", out],
        "model": ["run", "--model", "nope:nothing", "--data", str(tmp_path), "--method", "ig", "--out", out],
    }
    for name, argv in bad.items():
        status = main(argv)
        err = capsys.readouterr().err
        assert status != 0, name
        assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("attrib run: error"), (name, err)
