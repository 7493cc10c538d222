"""Errors a user can cause: reported as one line naming the culprit and the fix."""


class UserError(Exception):
    """A problem with the user's input (paths, names, config values).

    The CLI prints ``str(error)`` as a single line and exits non-zero, without a traceback
    unless ``--debug`` is given.
    """
