"""``Reranker.window_memo`` kept on disk: benchmarks that share prompts score each one once."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from rerank.data.resume import append_record, recover_records
from rerank.ranking import WindowRanking


class DiskMemo(dict):
    """A window memo in an append-only JSONL file, keyed by a hash of the prompt's token ids.

    An interrupted run loses at most the prompt it was scoring. With ``read_only`` a prompt that is not
    in the file raises ``KeyError`` instead of being scored: for scripts that must only re-read what a
    benchmark measured (the scores, and the prefill seconds each prompt cost when first scored).
    """

    def __init__(self, path: str | Path, read_only: bool = False):
        super().__init__()
        self.path = Path(path)
        self.read_only = read_only
        for rec in recover_records(self.path) if self.path.is_file() else []:
            super().__setitem__(rec["key"], WindowRanking(**rec["ranking"]))
        self._fh = None if read_only else open(self.path, "a", encoding="utf-8")

    @staticmethod
    def _key(key) -> str:
        ids, top_k, *pruning = key
        # A dense readout keeps the key it always had, so memos written before pruned reads still serve.
        head = f"{top_k}" if not pruning else f"{top_k}|{pruning[0]}"
        return hashlib.sha1(f"{head}:{','.join(map(str, ids))}".encode()).hexdigest()

    def __contains__(self, key) -> bool:
        found = super().__contains__(self._key(key))
        if not found and self.read_only:
            raise KeyError(f"a prompt of {len(key[0])} tokens is not in {self.path} (read-only memo)")
        return found

    def __getitem__(self, key) -> WindowRanking:
        return super().__getitem__(self._key(key))

    def __setitem__(self, key, ranking: WindowRanking) -> None:
        if self._fh is None:
            raise KeyError(f"{self.path} is a read-only memo")
        k = self._key(key)
        super().__setitem__(k, ranking)
        append_record(self._fh, {"key": k, "ranking": asdict(ranking)})  # flushed and synced
