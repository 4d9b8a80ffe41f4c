"""The one exception type that means "the user gave us something wrong".

The CLI turns it into a one-line message and exit status 2 (no traceback unless --debug). Everything else is a
bug or an environment failure and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a message that names the field or file and says how to fix it."""

    def __init__(self, where: str, problem: str, hint: str = "") -> None:
        self.where, self.problem, self.hint = where, problem, hint
        text = f"{where}: {problem}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)
