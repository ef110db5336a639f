"""One exception type for problems a user can fix; the CLI prints its message without a traceback."""


class PortcheckError(Exception):
    """A problem with the user's input or machine, with a message that names the problem and the fix."""
