"""YAML as every command reads it: a key given twice in one mapping is an error, not a silent override.

PyYAML (and so jsonargparse and LightningCLI) keeps the last of two equal keys, so a config with
`lr: 0.01` and, further down, `lr: 0.1` runs with 0.1 without a word. `strict_yaml()` makes the
loader jsonargparse uses (config files and `--key VALUE` flags alike) refuse such a file, naming
the key and its line; `load_yaml_file` does the same for files read without jsonargparse.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from encoders.errors import EncodersError


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A key given twice in one mapping."""


def check_duplicate_keys(text: str) -> None:
    """Raise DuplicateKeyError (naming the key and both lines) if a mapping in `text` repeats a key."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # not YAML: the loader itself reports it
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value in seen and key.value != "<<":
                    first = seen[key.value].start_mark.line + 1
                    raise DuplicateKeyError(
                        None, None, f"key {key.value!r} given twice (lines {first} and {key.start_mark.line + 1}); "
                        "the second would silently win", key.start_mark)
                seen[key.value] = key
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def strict_yaml() -> None:
    """Make jsonargparse's YAML loader refuse duplicate keys (idempotent)."""
    from jsonargparse import get_loader, set_loader

    loader = get_loader("yaml")
    if getattr(loader, "strict", False):
        return

    def load(stream: str):
        check_duplicate_keys(stream)
        return loader(stream)

    load.strict = True
    set_loader("yaml", load, exceptions=(yaml.YAMLError,))


def load_yaml_file(path: str | Path) -> object:
    """A YAML file's content; EncodersError naming the file (and key and line) if it is unreadable,
    not YAML text, or repeats a key."""
    path = Path(path)
    try:
        text = path.read_text()
        check_duplicate_keys(text)
        return yaml.safe_load(text)
    except DuplicateKeyError as error:
        raise EncodersError(f"{path}: {error.problem}") from None
    except FileNotFoundError:
        raise EncodersError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise EncodersError(f"{path}: not a readable YAML file ({type(error).__name__})") from None
