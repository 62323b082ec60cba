"""One-line errors for every command-line tool: `run(main)` and `ArgumentParser`.

A user mistake (a config typo, a missing file or folder, a bad flag value, a workdir that is a file, data that
fails a check) ends in one line on stderr, `error: <what, naming the flag / field / file>`, and exit status 2.
The traceback is kept for `--debug` (taken out of the arguments before the tool parses them) or the environment
variable STCL_DEBUG=1. Other exceptions (bugs) keep their traceback.

`quiet_logging(verbose)` is the logging setup the tools share: stcl_jax's INFO lines, other libraries (Orbax, JAX,
absl) at WARNING unless `--verbose`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# What a user can cause by what they typed or pointed at: shown as one line, exit 2.
USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError, ImportError)
DEBUG_FLAG = "--debug"


class UsageError(ValueError):
    """A bad combination of flags or config fields (the message names them)."""


def debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("STCL_DEBUG", "") not in ("", "0")


def one_line(e: BaseException) -> str:
    """The exception's message on one line (KeyError's repr quotes dropped)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e) or type(e).__name__
    return " ".join(str(text).split())


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(main, argv: list[str] | None = None) -> None:
    """Calls `main(argv)` (argv without `--debug`) and exits with its status; user errors become one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        code = main(argv)
    except USER_ERRORS as e:
        if debug:
            raise
        fail(one_line(e))
    sys.exit(code or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (`error: --alpha must be ...`, exit 2) and no abbreviated flags
    (so an error always names the flag as the user typed it)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        fail(f"{' '.join(message.split())} (see {self.prog} --help)")


def quiet_logging(verbose: bool = False) -> None:
    """stcl_jax INFO lines on stdout; Orbax / JAX / absl at WARNING unless `verbose`."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("stcl_jax").setLevel(logging.INFO)
    try:  # Orbax logs through absl, which has its own verbosity
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    except ImportError:
        pass


def add_verbose_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="also show other libraries' INFO lines (Orbax, JAX)")
