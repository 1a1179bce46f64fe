"""User-facing errors.

A `StreamerError` is a mistake the user can fix (a missing file, a bad option, no camera).
Its message is one line that names the problem and the fix; the CLI prints it without a
traceback and exits non-zero. Anything else that escapes is a bug and keeps its traceback.
"""

EXIT_DAMAGED_INPUT = 3
"""Exit status of a job that finished, but whose input was damaged or truncated (one warning line)."""


class StreamerError(Exception):
    """A problem the user can fix; `str(err)` is one line naming the problem and the fix."""

    exit_code = 2


class ConfigError(StreamerError):
    """A bad configuration value or option."""


class MediaError(StreamerError):
    """An input that cannot be opened or decoded, or an output that cannot be written."""


class WeightsError(StreamerError):
    """Weights that are missing, unreachable or of the wrong architecture."""


class DeviceError(StreamerError):
    """A device (GPU, camera, virtual camera) that is missing or busy."""
