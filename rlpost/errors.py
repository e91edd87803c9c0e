"""The error boundary of every ``rlpost`` subcommand: bad input is one line and exit 2, a failed engine or worker
one line and exit 3 (``--debug`` shows the traceback). Its own module, below the command line and the
subcommands that use it (rlpost/cli.py, rlpost/eval/cli.py)."""
from __future__ import annotations

import functools
import sys


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """The error types that mean bad input (a config key, a file, a row, a reward function): one line, exit 2."""
    from rlpost.config import ConfigError
    from rlpost.data import DataError
    return ConfigError, DataError, KeyError, FileNotFoundError, PermissionError, NotADirectoryError


def input_error(err: BaseException, args) -> int:
    """Print ``err`` as one line (its traceback only with --debug) and return exit code 2."""
    if getattr(args, "debug", False):
        raise err
    from rlpost.config import ConfigError
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    kind = "config error" if isinstance(err, ConfigError) else "error"
    print(f"{kind}: {' '.join(str(text).split())}", file=sys.stderr)
    return 2


def error_boundary(command):
    """The error boundary of every subcommand ``command(args) -> exit code``: bad input (:func:`bad_input_errors`) is
    one line and exit 2, a failed engine or worker (EngineError) one line and exit 3; --debug shows the traceback
    instead. A command that sets ``args.running`` (train, after step 0) says its input was fine: from then on only a
    ConfigError or DataError still counts as bad input, and a KeyError or OSError keeps its traceback."""
    @functools.wraps(command)
    def run(args) -> int:
        from rlpost.config import ConfigError
        from rlpost.data import DataError
        from rlpost.engines.base import EngineError
        try:
            return command(args)
        except bad_input_errors() as err:
            if getattr(args, "running", False) and not isinstance(err, (ConfigError, DataError)):
                raise
            return input_error(err, args)
        except EngineError as err:
            if getattr(args, "debug", False):
                raise
            print(f"engine error: {err}", file=sys.stderr)
            return 3
    return run
