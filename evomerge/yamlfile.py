"""Reading a user's YAML file (a search space, a recipe, an eval-set card): every way it can be unreadable becomes a
one-line error naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import UserError


def load_yaml(path: str | Path, what: str) -> Any:
    """The parsed content of `path`; `what` names the kind of file in hints ("a search-space YAML file")."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(str(p), "no such file", f"check the path to {what}") from None
    except IsADirectoryError:
        raise UserError(str(p), "is a directory", f"pass {what}") from None
    except UnicodeDecodeError as e:
        raise UserError(str(p), f"not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(str(p), f"malformed YAML{at}", "fix the syntax") from None
