"""How the scripts end: a user's mistake (a bad flag, a missing folder, a checkpoint that cannot be converted) is
one line on stderr, `error: <message>`, and exit code 2; any other exception is a bug and keeps its traceback.

    if __name__ == "__main__":
        run(main)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

# What the library raises for the user's input: a value that does not fit (ValueError; hf_xlstm.conversion's
# ConversionError is one) or a file or folder that is not there. The messages name the flag or input and the fix.
USER_ERRORS = (ValueError, FileNotFoundError)


class UsageError(Exception):
    """argparse's complaint about the command line (unknown flag, missing argument, value of the wrong type)."""


def _usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    raise UsageError(f"{message} (see {parser.prog} --help)")


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> NoReturn:
    """Call `main(argv)` (default: the command line) and exit: with main's return value when it is an int, else 0;
    with 2 and one `error:` line on stderr for a user error. argparse's own errors (exit code 2 already) become that
    one line too instead of the usage text, which for the pretraining script runs to a hundred lines."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argparse_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _usage_error  # every parser main builds, HfArgumentParser included
    try:
        code = main(argv)
    except (UsageError, *USER_ERRORS) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        argparse.ArgumentParser.error = argparse_error
    sys.exit(code if isinstance(code, int) else 0)
