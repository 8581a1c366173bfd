"""The one error type for what a user can fix: a wrong option or setting, a missing or malformed
input, a missing tool. `codemill` prints its message and exits with code 2; any other exception is a
bug and keeps its traceback."""


class UserError(ValueError):
    """Raised with a message that says what to do next."""
