"""`python -m studio ...` is the same as the `studio` command."""

from studio.cli import main

main()
