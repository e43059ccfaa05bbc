"""`python -m rerank.cli.commands ...`: the `rerank` command."""

import sys

from rerank.cli.commands import main

sys.exit(main())
