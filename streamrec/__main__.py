"""``python -m streamrec`` is the ``streamrec`` command."""

from streamrec.cli import main

main()
