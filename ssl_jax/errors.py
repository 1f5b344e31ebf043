"""Error messages a user can act on: the one line of an exception that a message quotes."""


def first_line(error, max_chars=300):
    """An exception's (or a message's) first non-empty line, at most `max_chars` long; KeyError's repr quotes are
    dropped; the exception's type name when its text is empty."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:max_chars] if lines else type(error).__name__
