"""One module per ``psi`` subcommand, each with ``register(subparsers)``."""
