"""``python -m rerank.labels`` = ``rerank labels``."""

from rerank.labels.job import main

raise SystemExit(main())
