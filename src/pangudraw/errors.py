"""The one error type a user sees as a one-line message (exit code 2 in the CLI)."""


class UserError(ValueError):
    """Bad input that the user can fix; the message says what was wrong and what to do."""
