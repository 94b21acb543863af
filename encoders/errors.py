"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""

from __future__ import annotations

import importlib
import inspect
import re


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
    """An error's message on one line: jsonargparse's run over several indented lines, the terminal and logs want one.

    jsonargparse's "Option 'X' is not accepted" for a class given by class_path (a product's `method`)
    gets the flag and the options that class does take."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    match = re.search(r'Parser key "([\w.]+)": Problem with given class_path \'([\w.]+)\': Option \'(\w+)\' is not accepted', text)
    if match:
        key, class_path, option = match.groups()
        module, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
            options = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        except (ImportError, AttributeError, ValueError, TypeError):
            return text
        return f"--{key}.{option}: not an option of {name} (the {key} given); its options are {options}"
    return text


def cause_of(error: BaseException) -> "EncodersError | None":
    """The EncodersError that `error` was raised from, if any: a parser that tries each type of a union
    (jsonargparse) re-raises a user error as its own ValueError with the whole traceback in its text."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, EncodersError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
