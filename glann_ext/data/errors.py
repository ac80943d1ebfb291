"""The one exception type for unusable data, so the CLI can print it without a traceback."""

from glann_ext.errors import GlannError


class DataError(GlannError, ValueError):
    """A data file or folder is missing, corrupt, truncated or of the wrong shape; the message names it."""
