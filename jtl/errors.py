"""User-facing errors.

Every mistake a user can make (bad config, missing file, wrong checksum, shape
mismatch, ...) raises a :class:`JtlError` subclass whose message is one
actionable line. The CLI prints it without a traceback and exits with status 2.
"""


class JtlError(Exception):
    """A user error: one line that says what is wrong and what to do."""

    exit_code = 2


class ConfigError(JtlError):
    """Bad configuration key or value."""


class WeightsError(JtlError):
    """Pretrained weights that cannot be loaded into the requested model."""


class ChecksumError(WeightsError):
    """A file whose sha256 differs from the registry's."""


class DownloadError(WeightsError):
    """A file that could not be fetched (offline, HTTP error, truncated)."""


class DataError(JtlError):
    """A dataset or input file that cannot be read."""
