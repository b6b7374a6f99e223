"""One exception type for every mistake a user can fix.

The CLI prints a ``SproutError`` as one paragraph without a traceback, so its message
must name the file, field or option at fault and say how to fix it.
"""


class SproutError(Exception):
    """A user-fixable problem: bad recipe, bad data, bad checkpoint, unknown plugin."""
