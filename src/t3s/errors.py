"""The one exception type users see: a single line that names the file, row or field at fault."""


class T3SError(Exception):
    """A problem with the user's input or environment, reported as one line and a non-zero exit."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
