"""``python -m rerank.labels`` = ``rerank labels``."""

from .job import main

raise SystemExit(main())
