"""Errors a user can cause: reported as one line naming the culprit and the fix."""


class UserError(Exception):
    """A problem with the user's input (paths, names, config values).

    The CLI prints ``str(error)`` as a single line and exits non-zero, without a traceback
    unless ``--debug`` is given.
    """


def unknown_flow(name: str, known) -> UserError:
    """The error for a flow name that is not one of ``known``.

    >>> str(unknown_flow("cam_vco", ["cam_voc", "acr_voc"]))
    "unknown flow 'cam_vco': `python cli.py list-flows` lists acr_voc, cam_voc"
    """
    return UserError(f"unknown flow {name!r}: `python cli.py list-flows` lists {', '.join(sorted(known))}")
