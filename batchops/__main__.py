"""`python -m batchops`: the same as the `batchops` command."""

from batchops.cli import main

main()
