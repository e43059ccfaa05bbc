"""Command-line entry points: `rerank demo | eval | labels | retrieve | serve | ...`."""

from rerank.cli.commands import main

__all__ = ["main"]
