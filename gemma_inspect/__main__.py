"""`python -m gemma_inspect` runs the command line."""

from .cli import main

main(prog_name="gemma-inspect")
