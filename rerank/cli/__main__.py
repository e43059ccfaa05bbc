"""`python -m rerank.cli ...`: the `rerank` command."""

import sys

from rerank.cli.commands import main

sys.exit(main())
