"""User-facing errors: bad input becomes one line on stderr and exit code 2.

Scripts wrap their entry point with `run_cli(main)`. Anything the user can fix
(bad flag value, missing file, malformed data) is raised as `UserError` with a
message that names the fix; everything else is a bug and keeps its traceback.
"""
import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input the user can fix; the message is shown as a single line."""


def first_line(e: BaseException) -> str:
    """An exception's first line, for one-line messages that quote a library's error."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_cli(main: Callable[[], int | None]) -> None:
    try:
        code = main()
    except UserError as e:
        fail(" ".join(str(e).split()))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
