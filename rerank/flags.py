"""One flag style for every command, and the old spellings that still work.

Vocabulary (the same in the API, CLI, configs and JSON):

* ``depth``: how many first-stage candidates per query are reranked (``rerank eval``,
  ``rerank labels``, ``rerank retrieve``, the eval scripts). Old spellings, still accepted with a
  warning: ``--top-k`` / ``--top_k`` (eval, retrieve) and ``--top-n`` / ``--top_n`` (labels, scripts).
* ``top_k``: how many of the best the reranker decides and returns (``Reranker.rerank(top_k=)``,
  ``rerank demo --top_k``, ``rerank rank-llm --top_k``). ``rerank eval`` passes it on as
  ``--rank_top_k``, because its ``--top-k`` meant the depth in earlier releases and still does.
* ``top_n``: only where a wire protocol or framework fixes the name (Cohere/Jina/TEI requests to
  ``rerank serve``; the LangChain and LlamaIndex adapters, like their Cohere peers there).

Flags are spelled like the config fields they set (``--max_passage_tokens``, as in YAML and
``HfArgumentParser``); the dashed spelling (``--max-passage-tokens``) is accepted everywhere.
"""

from __future__ import annotations

import argparse
import logging
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)

# Old flag -> current flag, for commands whose first-stage depth used to be called top-k / top-n.
DEPTH_ALIASES: Mapping[str, str] = {"--top-k": "--depth", "--top_k": "--depth", "--top-n": "--depth",
                                    "--top_n": "--depth"}
# Old settings key -> current key, for settings files saved before the rename (resume checks).
RENAMED_SETTINGS: Mapping[str, str] = {"top_k": "depth", "top_n": "depth"}


def upgrade_argv(argv: Sequence[str], renamed: Mapping[str, str], command: str) -> list[str]:
    """Rewrite old flag spellings (``--top_k 20`` or ``--top_k=20``) to current ones, warning once each."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag in renamed:
            logger.warning("%s: %s is now spelled %s (the old spelling still works)", command, flag, renamed[flag])
            arg = renamed[flag] + eq + value
        out.append(arg)
    return out


def _both_spellings(names: Sequence[str], kwargs: dict) -> tuple[list[str], dict]:
    spelled = list(names)
    for name in names:
        if name.startswith("--"):
            for other in (name.replace("_", "-"), "--" + name[2:].replace("-", "_")):
                if other not in spelled:
                    spelled.append(other)
    if "dest" not in kwargs and spelled and spelled[0].startswith("--"):
        kwargs = {**kwargs, "dest": spelled[0][2:].replace("-", "_")}
    return spelled, kwargs


class FlagParser(argparse.ArgumentParser):
    """``argparse`` with the house flag style: ``--max_passage_tokens`` also answers to
    ``--max_passage_tokens`` (and the other way round), like ``HfArgumentParser``; argument groups too.

    >>> p = FlagParser(prog="x"); _ = p.add_argument("--max_passage_tokens", type=int)
    >>> p.parse_args(["--max_passage_tokens", "50"]).max_passage_tokens
    50
    """

    def add_argument(self, *names, **kwargs):
        spelled, kwargs = _both_spellings(names, kwargs)
        return super().add_argument(*spelled, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        plain = group.add_argument

        def add_argument(*names, **kw):
            spelled, kw = _both_spellings(names, kw)
            return plain(*spelled, **kw)

        group.add_argument = add_argument  # type: ignore[method-assign]
        return group
