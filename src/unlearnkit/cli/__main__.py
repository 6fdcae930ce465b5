"""``python -m unlearnkit.cli``: the command line."""

from unlearnkit.cli import main

main()
