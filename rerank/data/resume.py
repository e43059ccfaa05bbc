"""Resuming append-only JSONL logs, and refusing to resume them under other settings.

Every resumable job (``rerank eval``, ``rerank generate-queries``, the benchmark scripts) appends one
JSON record per finished unit of work and, when restarted, skips what its log already holds. Two
rules keep that safe:

* Good records are never rewritten. A run killed mid-append leaves at most one torn LAST line;
  :func:`recover_records` cuts it off by truncating the file in place (one ``truncate``, then
  ``fsync``), so a crash during the repair leaves the old file or the repaired one, never an empty
  log. A bad line anywhere else is no crash artefact: it raises, naming file and line, instead of
  silently dropping every record after it.
* Records made under other settings are never mixed. :func:`save_settings` keeps the settings
  beside the log; :func:`check_same_settings` compares them with this run's and names each change.

Example:
    >>> with open(log, "a", encoding="utf-8") as fh:           # doctest: +SKIP
    ...     append_record(fh, {"qid": "q1", "ranking": ["d2", "d1"]})
    >>> recover_records(log)                                    # doctest: +SKIP
    [{'qid': 'q1', 'ranking': ['d2', 'd1']}]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)


class _BadLine(ValueError):
    """A line that is not one JSON object (the reason is the message)."""


def _parse_line(raw: bytes) -> dict:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadLine("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _BadLine(f"invalid JSON at character {exc.pos + 1} ({exc.msg})") from None
    if not isinstance(record, dict):
        raise _BadLine(f"expected a JSON object, got {type(record).__name__}")
    return record


def _cut_off(path: Path, length: int, lineno: int, size: int) -> None:
    """Truncate ``path`` to ``length`` bytes in place and make it durable.

    Truncation never touches the bytes before ``length``: a crash during it leaves either the old
    file (the torn tail is cut on the next resume) or the repaired one.
    """
    logger.warning(
        "%s:%d: cutting off a torn last line (%d bytes) left by an interrupted run", path, lineno, size - length
    )
    with open(path, "r+b") as fh:
        os.truncate(fh.fileno(), length)
        os.fsync(fh.fileno())


def _end_last_line(path: Path) -> None:
    """Append the newline a complete last record lacks, so the next append starts a fresh line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"\n")  # one byte: it lands whole or not at all
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_records(path: str | os.PathLike, project: Callable[[dict], Any] | None = None) -> list[Any]:
    """The records of an append-only JSONL log, repaired for the next append; a missing file is an empty log.

    A torn last line (an interrupted write) is cut off in place; a complete last record without its
    newline gets one. An unreadable line with records after it raises ``ValueError`` naming file and
    line. ``project`` maps each record to what the caller keeps (e.g. only its id, so a large log
    never sits in memory); a record it rejects (KeyError, TypeError, ValueError) raises with file
    and line too. The file is read line by line, never whole.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records: list[Any] = []
    good_end = 0  # byte offset just past the last good record's line
    last_good_has_newline = True
    bad: tuple[int, str] | None = None  # (line, reason) of a bad line not yet known to be the last
    size = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            size += len(raw)
            if not raw.strip():
                continue
            if bad is not None:  # a record follows the bad line, so it was no torn tail
                raise ValueError(
                    f"{path}:{bad[0]}: {bad[1]}, with more records after it: only the last line "
                    "can be torn by an interrupted run; fix or remove that line"
                )
            try:
                record = _parse_line(raw)
            except _BadLine as exc:
                bad = (lineno, str(exc))
                continue
            if project is not None:
                try:
                    record = project(record)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{path}:{lineno}: unusable record ({exc!r})") from None
            records.append(record)
            good_end, last_good_has_newline = size, raw.endswith(b"\n")
    if bad is not None:
        _cut_off(path, good_end, bad[0], size)
    elif good_end == size and not last_good_has_newline:
        _end_last_line(path)
    return records


def append_record(fh: IO[str], record: Mapping[str, Any], *, ensure_ascii: bool = True) -> None:
    """Append ``record`` to an open text log as one JSON line; flush and fsync before returning.

    Syncing each record means a record the job counts as done is on disk, and a power loss can tear
    at most the line being written (the last), which :func:`recover_records` repairs.
    ``ensure_ascii=True`` keeps the line valid in whatever encoding ``fh`` was opened with.
    """
    fh.write(json.dumps(record, ensure_ascii=ensure_ascii) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def load_settings(path: str | os.PathLike) -> dict | None:
    """The settings saved at ``path`` (a JSON object), or None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable settings file ({exc})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got {type(saved).__name__}")
    return saved


def save_settings(path: str | os.PathLike, settings: Mapping[str, Any], *, keep_saved: bool = False) -> None:
    """Write the settings a log's records are made with (temp file, fsync, rename: never half written).

    ``keep_saved`` keeps saved keys this run does not set (a benchmark rerun that covers fewer
    groups must not forget the settings of the records it leaves alone).
    """
    path = Path(path)
    data = {**(load_settings(path) or {}), **settings} if keep_saved else dict(settings)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def check_same_settings(
    path: str | os.PathLike,
    settings: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
    what: str | None = None,
    advice: str = "",
) -> None:
    """Refuse to resume records made under other settings: mixing them would measure no single system.

    Compares the settings saved at ``path`` with ``settings`` and raises ``ValueError`` listing
    each change as ``field: old -> new``. Only keys both hold are compared, so a setting added
    since (or a new benchmark group) is no change; ``ignore`` names settings that change no record
    (output folder, batch size). No saved file means nothing to compare with. ``what`` names the
    records in the message (default: the settings file's folder), ``advice`` says what to do.
    """
    saved = load_settings(path)
    if saved is None:
        return
    now = json.loads(json.dumps(dict(settings)))  # compare as saved: tuples become lists
    skip = set(ignore)
    changed = sorted(k for k in now if k not in skip and k in saved and saved[k] != now[k])
    if changed:
        changes = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        where = what or str(Path(path).parent)
        raise ValueError(
            f"{where} holds records made with other settings ({changes})" + (f"; {advice}" if advice else "")
        )


def guard_records(
    records_path: str | os.PathLike, settings_path: str | os.PathLike, settings: Mapping[str, Any]
) -> None:
    """Before appending to ``records_path``: refuse settings that differ from the ones its records were
    made with, then save ``settings`` beside them (a benchmark's resumable records).
    """
    exists = Path(records_path).is_file()
    if exists:
        check_same_settings(
            settings_path,
            settings,
            what=str(records_path),
            advice="use another --output, or move the records away to start over",
        )
    save_settings(settings_path, settings, keep_saved=exists)
