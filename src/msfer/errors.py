"""Errors that msfer reports to a user as a message rather than a traceback."""


class MsferError(Exception):
    """Bad input or a missing resource: the message says what and where, and how to fix it."""
