"""Data-parallel ``rerank eval`` and ``rerank labels`` under ``accelerate launch``.

Each process takes every N-th query still to do and appends its records to its own shard log
(``rankings.shard-{rank}-of-{N}.jsonl`` beside ``rankings.jsonl``; ``x.shard-{rank}-of-{N}.jsonl``
beside a label file ``x.jsonl``) through :mod:`rerank.data.resume`. After a barrier the main process
appends the shard records missing from the merged file, in the order one process writes them, and
removes the shards, so the merged file is the one a single process writes.

Resume rule (the process count may change between runs): the union of the merged file and every
shard log present, whatever its process count, is "done", keyed by qid; only the rest is sharded
again. A killed run therefore resumes with any ``--num_processes``, and a merged file that already
holds every query means there is nothing left to do.

A plain single process (no ``accelerate launch``, or one process) never touches accelerate or
``torch.distributed``: :func:`detect` returns a one-process context whose collectives are no-ops.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from accelerate import PartialState

from rerank.data.resume import append_record, recover_records

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The accelerate recipe for several CPU processes (``accelerate launch --cpu`` starts only one).
CPU_CONFIG = "configs/accelerate/cpu_2proc.yaml"


@dataclass
class DataParallel:
    """Where this process stands among the processes of one launch.

    ``device`` is where this process's model goes: None lets the library choose (one process, or
    CPU processes), ``cuda:i`` gives each GPU process its own GPU instead of all sharing cuda:0.
    """

    rank: int = 0
    world: int = 1
    device: str | None = None
    state: Any = field(default=None, repr=False)  # accelerate.PartialState when world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, todo: Sequence[T]) -> list[T]:
        """This process's part of the ordered ``todo`` list: items rank, rank + N, rank + 2N, ..."""
        return list(todo[self.rank :: self.world])

    def wait(self) -> None:
        """Barrier: return when every process got here (no-op for one process)."""
        if self.distributed:
            self.state.wait_for_everyone()

    def broadcast(self, obj: T) -> T:
        """The main process's ``obj`` on every process (so only it reads and repairs shared files)."""
        if not self.distributed:
            return obj

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.distributed:
            return [obj]

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def launched_processes() -> int:
    """The process count a launcher (torchrun / accelerate launch) announced; 1 when not launched."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a process count") from None


_CONTEXTS: dict[int, DataParallel] = {}


def detect() -> DataParallel:
    """The data-parallel context of this process, set up only when launched with several processes.

    Why ``cpu=True`` and gloo by hand: on a machine without CUDA a torchrun-launched process would
    otherwise get accelerate's ``DistributedType.NO`` and every rank would believe it is rank 0 and
    redo all queries. ``ACCELERATE_USE_CPU`` forces CPU processes on a GPU machine too.
    """
    world = launched_processes()
    if world > 1 and world in _CONTEXTS:  # accelerate's state is a process-wide singleton: so is ours
        return _CONTEXTS[world]
    if world <= 1:
        if _truthy(os.environ.get("ACCELERATE_USE_CPU")) and os.environ.get("MASTER_ADDR"):
            # accelerate's simple launcher sets MASTER_ADDR for --num_processes > 1 but starts one process.
            logger.warning(
                "running as ONE process: `accelerate launch --cpu` starts only one; use "
                "`accelerate launch --config_file %s` for several CPU processes",
                CPU_CONFIG,
            )
        return DataParallel()

    cpu = not torch.cuda.is_available() or _truthy(os.environ.get("ACCELERATE_USE_CPU"))
    state = PartialState(cpu=True, backend="gloo") if cpu else PartialState()
    if state.num_processes != world:
        raise RuntimeError(
            f"accelerate set up {state.num_processes} process(es) but the launcher started {world}: "
            f"launch with `accelerate launch --config_file {CPU_CONFIG}` (CPU) or --multi_gpu (GPUs)"
        )
    device = None if state.device.type == "cpu" else str(state.device)
    logger.info(
        "data-parallel process %d of %d (%s, device %s)", state.process_index, world, state.backend, device or "cpu"
    )
    _CONTEXTS[world] = DataParallel(rank=state.process_index, world=world, device=device, state=state)
    return _CONTEXTS[world]


def shutdown_process_groups(barrier: bool = True) -> None:
    """Destroy every process group while the interpreter is still fully alive.

    Why: each process group (the default one and the subgroups DeepSpeed creates) is also held by
    torch's C++ group registry, a process-wide static that only ``destroy_process_group`` empties.
    Left alone, the gloo groups and their worker threads are destroyed during C++ static destruction
    at exit, in an unspecified order relative to the objects they use; when a joinable
    ``std::thread`` is destroyed first the runtime calls ``std::terminate`` ("terminate called
    without an active exception", rc 1) after a successful run. The barrier first keeps a fast
    process from tearing down while a slower one is still inside a collective (pass
    ``barrier=False`` after a failure: the other processes may never arrive).
    """

    if not (dist.is_available() and dist.is_initialized()):
        return
    if barrier:
        dist.barrier()
    dist.destroy_process_group()


def shutdown(dp: DataParallel) -> None:
    """End a successful data-parallel job: :func:`shutdown_process_groups` after a final barrier."""
    if dp.distributed:
        shutdown_process_groups()


# ---------------------------------------------------------------------------------------------- shard logs
def _split_name(path: Path) -> tuple[str, str]:
    """``rankings.jsonl`` -> (``rankings``, ``.jsonl``): shard names keep the file's extension."""
    suffix = path.suffix
    return (path.name[: -len(suffix)] if suffix else path.name), suffix


def shard_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """The shard log of process ``rank`` of ``world`` for the merged log ``path``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    path = Path(path)
    stem, suffix = _split_name(path)
    return path.with_name(f"{stem}.shard-{rank}-of-{world}{suffix}")


def existing_shards(path: str | os.PathLike) -> list[Path]:
    """Shard logs of ``path`` present on disk, of any process count, ordered by (count, rank)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stem, suffix = _split_name(path)
    pattern = re.compile(rf"{re.escape(stem)}\.shard-(\d+)-of-(\d+){re.escape(suffix)}")
    found = []
    for name in os.listdir(path.parent):
        match = pattern.fullmatch(name)
        if match:
            found.append(((int(match[2]), int(match[1])), path.parent / name))
    return [p for _, p in sorted(found)]


def own_log(path: str | os.PathLike, dp: DataParallel, shards_present: bool) -> Path:
    """Where this process appends: the merged log itself for a plain single process (as always),
    its shard otherwise. A single process resuming shards of a killed launch writes a shard too, so
    the final merge puts everything in the one-process order."""
    if dp.world == 1 and not shards_present:
        return Path(path)
    return shard_path(path, dp.rank, dp.world)


def load_union(path: str | os.PathLike, key: Callable[[dict], str]) -> dict[str, dict]:
    """Records of the merged log and all its shard logs by ``key`` (first seen wins: merged first).

    Torn last lines are cut off (:func:`rerank.data.resume.recover_records`): call it on the main
    process only, before any process appends, never while another process may be writing.
    """
    union: dict[str, dict] = {}
    for log in [Path(path), *existing_shards(path)]:
        for record in recover_records(log):
            try:
                union.setdefault(key(record), record)
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{log}: a record without a usable id ({exc!r})") from None
    return union


def union_ids(path: str | os.PathLike, key: Callable[[dict], str]) -> set[str]:
    """Ids held by the merged log or any of its shard logs (records are not kept: label logs can be
    large). Repairs torn last lines, so main process only, before anyone appends (see :func:`load_union`)."""
    ids: set[str] = set()
    for log in [Path(path), *existing_shards(path)]:
        ids.update(recover_records(log, project=key))
    return ids


def _line_offsets(path: Path, key: Callable[[dict], str]) -> dict[str, int]:
    """Byte offset of each record's line by id (first seen) in an already repaired log: a merge then
    reads one record at a time instead of holding every shard in memory."""
    offsets: dict[str, int] = {}
    pos = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                offsets.setdefault(key(json.loads(raw)), pos)
            pos += len(raw)
    return offsets


def merge_shards(
    path: str | os.PathLike, order: Sequence[str], key: Callable[[dict], str], *, ensure_ascii: bool = True
) -> int:
    """Append to ``path`` the shard records it lacks, in ``order`` (ids), then remove the shards.

    Only appends (good records are never rewritten, :mod:`rerank.data.resume`): a merge killed midway
    leaves the shards in place, and the next merge appends just what is still missing. Shard records
    whose id is not in ``order`` (queries of an earlier, larger run) follow in shard order, so no
    finished work is lost. ``ensure_ascii`` must be what the records were written with, so a
    merged line is byte for byte the shard's line. Returns how many records were appended.
    """
    shards = existing_shards(path)
    if not shards:
        return 0
    present = set(recover_records(path, project=key))
    where: dict[str, tuple[Path, int]] = {}
    for shard in shards:
        recover_records(shard, project=key)  # cut a torn tail before indexing lines
        for i, offset in _line_offsets(shard, key).items():
            where.setdefault(i, (shard, offset))
    ids = [i for i in order if i in where and i not in present]
    chosen = set(ids)
    ids += [i for i in where if i not in chosen and i not in present]
    readers = {shard: open(shard, "rb") for shard in shards}
    try:
        with open(path, "a", encoding="utf-8") as out:
            for i in ids:
                shard, offset = where[i]
                readers[shard].seek(offset)
                append_record(out, json.loads(readers[shard].readline()), ensure_ascii=ensure_ascii)
    finally:
        for fh in readers.values():
            fh.close()
    for shard in shards:  # only now: the merged file holds (durably) every shard record
        shard.unlink()
    return len(ids)


def merge_appended(path: str | os.PathLike, order_of: Callable[[dict], Any], *, ensure_ascii: bool = True) -> int:
    """Append every record of ``path``'s shard logs to ``path`` (no dedup: an attempt log such as the
    label errors file), stably sorted by ``order_of``, then remove the shards."""
    shards = existing_shards(path)
    records = [r for shard in shards for r in recover_records(shard)]
    records.sort(key=order_of)
    if shards:  # opened even with nothing to add: one process leaves the (empty) file too
        with open(path, "a", encoding="utf-8") as fh:
            for record in records:
                append_record(fh, record, ensure_ascii=ensure_ascii)
    for shard in shards:
        shard.unlink()
    return len(records)


def without_timings(line: str) -> dict:
    """A rankings/labels record with its wall-clock ``stats.*seconds`` fields dropped: what "the same
    output as one process" compares (timings differ between any two runs)."""
    record = json.loads(line)
    if record.get("stats"):
        record["stats"] = {k: v for k, v in record["stats"].items() if not k.endswith("seconds")}
    return record


def remove_logs(paths: Iterable[str | os.PathLike]) -> None:
    """Delete merged logs and all their shards (a run that must not resume)."""
    for path in paths:
        for log in [Path(path), *existing_shards(path)]:
            log.unlink(missing_ok=True)
