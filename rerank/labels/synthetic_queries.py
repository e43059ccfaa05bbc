"""Synthetic training queries for a corpus without judgements (the InPars / Promptagator recipe).

    rerank generate-queries --collection ../shared/data/beir-scifact --output runs/sq/queries.jsonl \\
        --max_passages 500 [--model base | PATH | openai:MODEL --base_url URL] [--per_passage 1]

1. **Generate**: for sampled passages, a few-shot prompt (three hand-written passage -> query pairs,
   then the passage) is completed by an LLM: the local default model, any local causal LM, or an
   OpenAI-compatible endpoint. Each query keeps its mean token log-probability.
2. **Clean**: the first line of the answer, quotes and a leading ``Query:`` removed; empty answers,
   answers of fewer than 2 or more than 40 words, and copies of the passage's opening are dropped
   and counted by reason: bad model output never stops the run.
3. **Filter**: round trip (keep a query only if BM25 over the whole corpus puts its source passage
   in the top ``--round_trip_depth``) and log-probability (keep the best ``--keep_fraction``).

Outputs, ready for ``rerank labels`` (``--input CANDIDATES --qrels QRELS``) and training:
``queries.jsonl`` (``_id``, ``text``, ``source``, ``logprob``, ``source_rank``), ``<stem>.qrels.txt``
(the source passage is the judged-relevant one) and ``<stem>.candidates.jsonl`` (BM25 top
``--depth`` per kept query). Every generation is appended to ``<stem>.raw.jsonl`` as it happens, so
a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import urllib.error
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)

# Written for this project: short, varied, and unlike any evaluation set's queries.
FEW_SHOT = (
    (
        "The honey bee colony survives winter by forming a tight cluster; workers shiver their flight "
        "muscles to produce heat and rotate between the cold surface and the warm core.",
        "how do honey bees stay warm in winter",
    ),
    (
        "Metformin lowers blood glucose mainly by reducing glucose production in the liver, and it is "
        "usually the first drug prescribed for type 2 diabetes.",
        "first line medication for type 2 diabetes",
    ),
    (
        "The Treaty of Westphalia, signed in 1648, ended the Thirty Years' War and set out the principle "
        "that each state has sovereignty over its own territory.",
        "what war ended with the treaty of westphalia",
    ),
)
_QUERY_PREFIX = re.compile(r"^\s*(query|question)\s*[:\-]\s*", re.IGNORECASE)


def few_shot_prompt(passage: str, max_words: int = 200) -> str:
    """The completion prompt for one passage (cut to ``max_words`` words)."""
    words = " ".join(passage.split()[:max_words])
    shots = "".join(f"Passage: {p}\nQuery: {q}\n\n" for p, q in FEW_SHOT)
    return f"Write a search query that the passage answers.\n\n{shots}Passage: {words}\nQuery:"


def clean_query(raw: str, passage: str) -> tuple[str | None, str]:
    """``(query, "ok")`` or ``(None, reason)`` for a raw model completion."""
    line = raw.strip().split("\n", 1)[0].strip()
    line = _QUERY_PREFIX.sub("", line).strip().strip("\"'`").strip()
    words = line.split()
    if not words:
        return None, "empty"
    if len(words) < 2:
        return None, "too_short"
    if len(words) > 40:
        return None, "too_long"
    if " ".join(passage.split()).lower().startswith(line.lower()) and len(words) > 5:
        return None, "copies_passage"
    return line, "ok"


class Generator(Protocol):
    name: str

    def generate(self, prompts: Sequence[str]) -> list[tuple[str, float]]:
        """Completion text and mean token log-probability per prompt."""


class LocalGenerator:
    """Greedy completions from a local causal LM with transformers, batched, left-padded."""

    def __init__(
        self, model: str | None = "base", device: str | None = None, max_new_tokens: int = 32, batch_size: int = 8
    ):
        from rerank.models import load_model_and_tokenizer

        self.model, self.tokenizer = load_model_and_tokenizer(model, device=device)
        self.tokenizer.padding_side = "left"
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.name = f"local:{model or 'default'}"
        newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
        self.stop_ids = [self.tokenizer.eos_token_id] + newline[-1:]

    def generate(self, prompts: Sequence[str]) -> list[tuple[str, float]]:
        import torch

        out = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start : start + self.batch_size])
            # The prompts hold passages (caller text): a "<|endoftext|>" in one is read as plain characters.
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, split_special_tokens=True)
            enc = enc.to(self.model.device)
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            new = gen.sequences[:, enc["input_ids"].shape[1] :]
            logps = torch.stack([s.float().log_softmax(-1) for s in gen.scores], 1)  # [B, T, V]
            token_logp = logps.gather(-1, new[..., None]).squeeze(-1)
            for row in range(len(chunk)):
                ids = new[row].tolist()
                # Up to and including the first stop token: what follows is padding.
                end = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids) - 1) + 1
                text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
                out.append((text, float(token_logp[row, :end].mean())))
        return out


class OpenAIGenerator:
    """An OpenAI-compatible ``/chat/completions`` endpoint with ``logprobs`` (the key from the environment).

    The key travels under the rules of :mod:`rerank.keyed_http`, shared with the OpenAI teacher:
    https, or plain http to a loopback address only (unless ``allow_insecure_key``), never to a
    proxy in clear, never along a redirect.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_new_tokens: int = 32,
        allow_insecure_key: bool = False,
    ):
        from rerank.keyed_http import KeyedClient

        self.name, self.model = f"openai:{model}", model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._client = KeyedClient(self.url, api_key_env, timeout=timeout, allow_insecure_key=allow_insecure_key)
        self.api_key = self._client.api_key
        self.timeout, self.max_new_tokens = timeout, max_new_tokens

    def _one(self, prompt: str) -> tuple[str, float]:
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_new_tokens,
            "logprobs": True,
            "stop": ["\n"],
        }
        try:
            reply = self._client.post_json(payload)
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
            tokens = ((choice.get("logprobs") or {}).get("content")) or []
            logp = sum(t["logprob"] for t in tokens) / len(tokens) if tokens else float("nan")
            return text, logp
        except (
            urllib.error.URLError,
            TimeoutError,
            OSError,
            KeyError,
            IndexError,
            TypeError,
            json.JSONDecodeError,
        ) as exc:
            logger.warning("generation request failed: %s", exc)
            return "", float("nan")  # counted as an empty answer, never a crash

    def generate(self, prompts: Sequence[str]) -> list[tuple[str, float]]:
        return [self._one(p) for p in prompts]


@dataclass
class GenerationConfig:
    """Options of ``rerank generate-queries``."""

    collection: str = field(metadata={"help": "Collection folder with corpus.jsonl (shared or BEIR layout)."})
    output: str = field(metadata={"help": "queries.jsonl to write (qrels, candidates and raw log go beside it)."})
    model: str = field(
        default="base",
        metadata={"help": "'base' (raw SmolLM2-135M-Instruct), 'default', a local path, or openai:MODEL."},
    )
    base_url: str | None = field(default=None, metadata={"help": "Endpoint for openai:MODEL."})
    per_passage: int = field(
        default=1, metadata={"help": "Queries asked per passage (greedy local decoding gives one distinct query)."}
    )
    max_passages: int | None = field(default=None, metadata={"help": "Sample this many passages (seeded); None = all."})
    round_trip_depth: int = field(
        default=10,
        metadata={
            "help": "Keep a query only if BM25 ranks its source passage in this top k; 0 = no round-trip filter."
        },
    )
    keep_fraction: float = field(default=1.0, metadata={"help": "Then keep the best fraction by mean log-probability."})
    depth: int = field(default=20, metadata={"help": "BM25 candidates per kept query in the candidates file."})
    batch_size: int = field(default=8, metadata={"help": "Prompts generated together (local model)."})
    seed: int = field(default=13, metadata={"help": "Passage sampling seed."})
    exclude_queries_of: str | None = field(
        default=None,
        metadata={"help": "Never use passages judged for this collection's queries (keeps test judgements out)."},
    )

    def __post_init__(self):
        if self.per_passage < 1 or self.batch_size < 1 or self.depth < 1 or self.round_trip_depth < 0:
            raise ValueError("per_passage, batch_size and depth must be >= 1 and round_trip_depth >= 0")
        if self.max_passages is not None and self.max_passages < 1:
            raise ValueError(f"max_passages must be >= 1 or None, got {self.max_passages}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must lie in (0, 1], got {self.keep_fraction}")


def build_generator(spec: str, base_url: str | None, batch_size: int) -> Generator:
    if spec.startswith("openai:"):
        model = spec.partition(":")[2]
        if not model:
            raise ValueError("--model openai:MODEL needs a model name")
        return OpenAIGenerator(model, base_url or "https://api.openai.com/v1")
    return LocalGenerator(None if spec == "default" else spec, batch_size=batch_size)


def _sample_passages(corpus: dict[str, str], cfg: GenerationConfig) -> list[str]:
    docids = sorted(d for d, t in corpus.items() if t.strip())
    if cfg.max_passages is not None and cfg.max_passages < len(docids):
        docids = random.Random(cfg.seed).sample(docids, cfg.max_passages)
    return docids


def generate_queries(cfg: GenerationConfig, generator: Generator | None = None, progress: bool = True) -> dict:
    """Run generation (resumable), cleaning and filtering; write the outputs; return a summary."""
    from tqdm.auto import tqdm

    from rerank.data.bm25 import BM25Index
    from rerank.data.collection import load_collection
    from rerank.data.resume import append_record, recover_records

    coll = load_collection(cfg.collection)
    if not coll.corpus:
        raise ValueError(f"{cfg.collection}: corpus.jsonl holds no passage")
    excluded = set()
    if cfg.exclude_queries_of:
        excluded = {d for judged in load_collection(cfg.exclude_queries_of).qrels.values() for d in judged}
    docids = [d for d in _sample_passages(coll.corpus, cfg) if d not in excluded]
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw_path = out.with_name(out.stem + ".raw.jsonl")
    done: dict[tuple[str, int], dict] = {}
    for rec in recover_records(raw_path):
        done[(rec["source"], rec["k"])] = rec
    jobs = [(d, k) for d in docids for k in range(cfg.per_passage) if (d, k) not in done]
    if jobs:
        generator = generator or build_generator(cfg.model, cfg.base_url, cfg.batch_size)
    bar = tqdm(total=len(docids) * cfg.per_passage, initial=len(done), desc="generate queries", disable=not progress)
    start = time.perf_counter()
    with open(raw_path, "a", encoding="utf-8") as fh:
        for i in range(0, len(jobs), cfg.batch_size):
            chunk = jobs[i : i + cfg.batch_size]
            answers = generator.generate([few_shot_prompt(coll.corpus[d]) for d, _ in chunk])
            for (d, k), (text, logp) in zip(chunk, answers):
                query, status = clean_query(text, coll.corpus[d])
                rec = {
                    "source": d,
                    "k": k,
                    "raw": text,
                    "query": query,
                    "status": status,
                    "logprob": None if logp != logp else round(logp, 4),
                }
                append_record(fh, rec)
                done[(d, k)] = rec
            bar.update(len(chunk))
    bar.close()
    records = [done[(d, k)] for d in docids for k in range(cfg.per_passage) if (d, k) in done]
    statuses = Counter(r["status"] for r in records)
    good = [r for r in records if r["status"] == "ok"]
    # Round trip: the source passage must come back near the top for its own query.
    index = BM25Index.build(coll.corpus, show_progress=False)
    hits = (
        index.search([r["query"] for r in good], max(cfg.depth, cfg.round_trip_depth or 1), show_progress=False)
        if good
        else []
    )
    kept = []
    for rec, ranked in zip(good, hits):
        ids = [d for d, _ in ranked]
        rank = ids.index(rec["source"]) + 1 if rec["source"] in ids else None
        if cfg.round_trip_depth and (rank is None or rank > cfg.round_trip_depth):
            continue
        kept.append((rec, rank, ids[: cfg.depth]))
    after_round_trip = len(kept)
    kept.sort(key=lambda x: -(x[0]["logprob"] if x[0]["logprob"] is not None else float("-inf")))
    kept = kept[: max(1, int(round(cfg.keep_fraction * len(kept))))] if kept else []
    kept.sort(key=lambda x: (x[0]["source"], x[0]["k"]))
    qrels_path = out.with_name(out.stem + ".qrels.txt")
    cand_path = out.with_name(out.stem + ".candidates.jsonl")
    with (
        open(out, "w", encoding="utf-8") as fq,
        open(qrels_path, "w", encoding="utf-8") as fr,
        open(cand_path, "w", encoding="utf-8") as fc,
    ):
        for rec, rank, ids in kept:
            qid = f"gen-{rec['source']}-{rec['k']}"
            fq.write(
                json.dumps(
                    {
                        "_id": qid,
                        "text": rec["query"],
                        "source": rec["source"],
                        "logprob": rec["logprob"],
                        "source_rank": rank,
                    }
                )
                + "\n"
            )
            fr.write(f"{qid} 0 {rec['source']} 1\n")
            fc.write(
                json.dumps(
                    {
                        "qid": qid,
                        "query": rec["query"],
                        "candidates": [{"docid": d, "text": coll.corpus[d]} for d in ids],
                    }
                )
                + "\n"
            )
    summary = {
        "passages": len(docids),
        "generated": len(records),
        "dropped_by_reason": {k: v for k, v in statuses.items() if k != "ok"},
        "clean": len(good),
        "after_round_trip": after_round_trip,
        "kept": len(kept),
        "model": getattr(generator, "name", cfg.model),
        "seconds": round(time.perf_counter() - start, 1),
        "queries": str(out),
        "qrels": str(qrels_path),
        "candidates": str(cand_path),
    }
    out.with_name(out.stem + ".summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``rerank generate-queries`` (see the module docstring)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        GenerationConfig,
        prog="rerank generate-queries",
        description="Synthetic training queries for a corpus (InPars-style).",
    )
    try:
        (cfg,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    print(json.dumps(generate_queries(cfg), indent=1))
    return 0
