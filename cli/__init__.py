"""The ``streamrec`` command: the composition root above every program (``streamrec.cli.main``).

It is the one place that imports the programs (lazily, inside each subcommand), so that the programs never
import each other and the core (``streamrec``) imports none of them.
"""
