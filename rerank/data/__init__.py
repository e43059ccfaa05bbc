"""Collections, TREC runs and qrels, the BM25 first stage, rank_llm files, resumable logs, window memos."""
