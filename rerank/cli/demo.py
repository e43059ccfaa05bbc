"""The built-in example: one query and a dozen passages written for this project."""

from __future__ import annotations

DEMO_QUERY = "how do honey bees keep their hive warm in winter"

DEMO_PASSAGES = [
    "Honey bees survive winter by forming a tight cluster inside the hive and shivering their flight "
    "muscles without moving their wings, which generates heat that keeps the core near 35 degrees Celsius.",
    "The queen bee lays up to two thousand eggs a day during the peak of spring.",
    "Bumblebee queens hibernate alone underground; the rest of the colony dies in autumn.",
    "Beekeepers often wrap hives in insulation or add a windbreak so the colony spends less honey on heating.",
    "A tight winter cluster rotates slowly: bees on the cold outer shell move inward to warm up while "
    "others take their place, sharing the work of producing heat.",
    "Honey is made from flower nectar that worker bees evaporate by fanning their wings.",
    "Wasps build paper nests from chewed wood fibres mixed with saliva.",
    "In winter a colony eats its stored honey as fuel; a strong hive may need 25 kilograms to last until spring.",
    "Solar panels on a roof can heat water for a house even on cloudy winter days.",
    "Worker bees communicate the direction of flowers with the waggle dance.",
    "Condensation inside a hive in cold weather can drip onto the cluster and chill the bees, so vents matter.",
    "Penguins huddle together in Antarctic storms, taking turns at the windy edge of the group.",
]


def run_demo(model: str | None = None, top_k: int | None = None, scoring: str | None = None) -> str:
    """Rerank the built-in example with full ranking and return a printable report."""
    import time

    from rerank.reranker import Reranker

    start = time.perf_counter()
    # The demo's passages are hand-written, not a retriever's ranking: fusing with their order (the
    # shipped default's first_stage_weight) would only blur what the model does, so it is off here.
    reranker = Reranker.from_pretrained(model, scoring=scoring, first_stage_weight=0.0)
    load = time.perf_counter() - start
    result = reranker.rerank(DEMO_QUERY, DEMO_PASSAGES, top_k=top_k)
    s = result.stats
    name = "default (SmolLM2-135M-Instruct + shipped weights)" if model is None else model
    lines = [
        f"query: {DEMO_QUERY}",
        f"model: {name}, scoring={reranker.config.scoring}, first-stage fusion off (loaded in {load:.1f} s)",
        "",
    ]
    for rank, index in enumerate(result.order, start=1):
        text = DEMO_PASSAGES[index]
        more = "..." if len(text) > 90 else ""
        lines.append(f"{rank:>2}. [{index + 1:>2}] score={result.scores[index]:+.3f}  {text[:90]}{more}")
    lines += [
        "",
        f"strategy={s.strategy} llm_calls={s.llm_calls} prompt_tokens={s.prompt_tokens} "
        f"generated_tokens={s.generated_tokens}",
        f"prefill {s.prefill_seconds:.2f} s + decode {s.decode_seconds:.2f} s = {s.total_seconds:.2f} s "
        f"(constraint {1000 * s.constraint_seconds:.1f} ms)",
    ]
    return "\n".join(lines)
