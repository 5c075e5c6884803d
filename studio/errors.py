"""User-facing errors: one clear sentence each, never a traceback."""


class StudioError(Exception):
    """An error whose message is meant for the person using the studio.

    The message says what went wrong and, where possible, what to do about it.
    The CLI prints it as one line; the UI shows it as a notification.
    """


class ConfigurationError(StudioError):
    """A setting is malformed or names a service that cannot be reached."""


class NotFoundError(StudioError):
    """A dataset, job, adapter or model that was asked for does not exist."""


class ValidationFailed(StudioError):
    """A request or an uploaded file did not pass validation."""


class JobCancelled(Exception):
    """Raised inside a running job when its cancellation was requested.

    Not a StudioError: it is control flow, caught by the job runner.
    """
