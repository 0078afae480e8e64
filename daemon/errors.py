"""The error every command-line module raises for a problem the user can fix."""


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""
