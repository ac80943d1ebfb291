"""The one exception type for unusable data, so the CLI can print it without a traceback."""


class DataError(ValueError):
    """A data file or folder is missing, corrupt, truncated or of the wrong shape; the message names it."""
