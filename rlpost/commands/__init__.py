"""Extra ``rlpost`` subcommands: every module here exposes ``register(subparsers)``; rlpost/cli.py
discovers them, so adding a subcommand is adding one file (serve, sft, dpo, reproduce, bench ...)."""
