"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class EncodersError(Exception):
    """Base class for errors caused by user input (files, configs, arguments)."""


class DatasetError(EncodersError, ValueError):
    """A dataset file, or data about to be written, breaks the schema.

    The message always names the file, and the session and field where they apply.
    """

    def __init__(self, path: object, problem: str, session: str | None = None, field: str | None = None):
        self.path = str(path)
        self.session = session
        self.field = field
        self.problem = problem
        where = [self.path]
        if session is not None:
            where.append(f"session {session!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join([', '.join(where), problem])}")


def one_line(error: BaseException) -> str:
    """An error's message on one line: jsonargparse's run over several indented lines, the terminal and logs want one."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
