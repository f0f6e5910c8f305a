"""infer.py's console: the interactive loop (multi-line prompts ended by '.', /commands) and the --demo prompts."""
from typing import TextIO

from common.inference.session import Session, describe_syntax

DEMO_PROMPTS = [
    ("is_palindrome", 'def is_palindrome(text: str) -> bool:\n    """Return True if text reads the same forwards and '
                      'backwards, ignoring case.\n    >>> is_palindrome("Level")\n    True\n    """\n'),
    ("running_max", 'from typing import List\n\n\ndef running_max(numbers: List[int]) -> List[int]:\n    """Return the '
                    'largest value seen so far at each position.\n    >>> running_max([1, 3, 2, 5])\n    [1, 3, 3, 5]\n'
                    '    """\n'),
    ("count_vowels", 'def count_vowels(word: str) -> int:\n    """Count the vowels (a, e, i, o, u) in word, in either '
                     'case.\n    >>> count_vowels("Banana")\n    3\n    """\n'),
    ("fizzbuzz", 'def fizzbuzz(n: int) -> list:\n    """Return the strings for 1..n: "Fizz" for multiples of 3, "Buzz" '
                 'for multiples of 5,\n    "FizzBuzz" for both, else the number itself.\n    >>> fizzbuzz(5)\n'
                 '    [\'1\', \'2\', \'Fizz\', \'4\', \'Buzz\']\n    """\n'),
]


def interactive(session: Session, stdin: TextIO) -> None:
    tty = stdin.isatty()
    if tty:
        session.print("end a prompt with a line holding only '.'; /help for commands, /quit or Ctrl-D to leave")
    lines: list[str] = []
    while True:
        if tty:
            session.print("... " if lines else ">>> ", end="")
        line = stdin.readline()
        if not line:  # end of input: run what is pending, then leave
            if "".join(lines).strip():
                _run_interactive(session, "".join(lines))
            if tty:
                session.print()
            return
        if not lines and line.startswith("/"):
            if not session.command(line):
                return
            continue
        if line.strip() == ".":
            prompt, lines = "".join(lines), []
            if prompt.strip():
                _run_interactive(session, prompt)
            else:
                session.print("empty prompt: type some text first, then a line holding only '.'")
            continue
        lines.append(line if line.endswith("\n") else line + "\n")


def _run_interactive(session: Session, prompt: str) -> None:
    try:
        session.run(prompt)
    except KeyboardInterrupt:
        session.print("\n(generation interrupted)")


def demo(session: Session) -> None:
    rows = []
    for name, prompt in DEMO_PROMPTS:
        session.print(f"##### {name}")
        rows.append((name, session.run(prompt)))
        session.print()
    sides = [side for side, _ in rows[0][1]]
    width = max(len(name) for name, _ in rows) + 2
    session.print(("summary".ljust(width) + "".join(side.ljust(28) for side in sides)).rstrip())
    for name, results in rows:
        session.print((name.ljust(width) + "".join(
            f"{describe_syntax(r.syntax)}, {r.new_tokens} tok".ljust(28) for _, r in results)).rstrip())
