"""Developer tools beside the CLI: the local stack on loopback (``localstack``, ``stack``) and the
benchmark suite (``bench``). They start and drive the programs, so they live outside the core."""
