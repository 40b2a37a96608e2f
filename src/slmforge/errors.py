"""The error a user can fix: stages and commands print its message as one line and exit 1 (slmforge.runner)."""


class UserError(Exception):
    """An error the user can fix; stages print its message as one line and exit 1."""
