"""``python -m streamrec.cli``: the same as the ``streamrec`` command (used to start child processes)."""

from streamrec.cli.main import main

main()
