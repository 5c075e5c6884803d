"""Small helpers every tab shares: friendly errors, submit buttons, choice lists, formatting."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import gradio as gr
from pydantic import ValidationError

from studio.errors import StudioError
from studio.plain_errors import describe_validation_error

logger = logging.getLogger(__name__)


def module_installed(name: str) -> bool:
    """Whether a job kind's module is part of this installation (a tab without it is not shown)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def queue_wait_sentence(job: Any) -> str:
    """A sentence saying the job waits for an unreachable broker, to append to a message; else ""."""
    from studio.jobs.outbox import queue_notice

    notice = queue_notice(job)
    return f" It is {notice}." if notice else ""


def user_message(exc: BaseException) -> str | None:
    """The message of an expected user error (StudioError, a pydantic ValidationError, gr.Error); None otherwise.

    Validation errors are turned into plain words naming the field ('Max steps: must be at least 1').
    """
    if isinstance(exc, gr.Error):
        return str(exc.message)
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, StudioError):
        return str(exc)
    return None


def _as_gradio_error(fn: Callable[..., Any], exc: Exception) -> gr.Error:
    """The toast for a failed handler; call inside ``except``. Only unexpected errors log a traceback."""
    message = user_message(exc)
    if message is None:
        logger.exception("handler %s failed", name_of(fn))
        return gr.Error(_unexpected(exc), print_exception=False)
    # Expected: the person gets the message; the log gets one line, no traceback.
    logger.info("handler %s refused: %s", name_of(fn), message)
    if isinstance(exc, gr.Error):
        exc.print_exception = False
        return exc
    return gr.Error(message, title="Cannot do that", print_exception=False)


def _as_status(fn: Callable[..., Any], exc: Exception) -> str:
    """The status line for a failed handler; call inside ``except``. Only unexpected errors log a traceback."""
    message = user_message(exc)
    if message is None:
        logger.exception("handler %s failed", name_of(fn))
        message = _unexpected(exc)
    else:
        logger.info("handler %s refused: %s", name_of(fn), message)
    return f"⚠ {message}"


def friendly(fn: Callable[..., Any], errors_to: str | None = None) -> Callable[..., Any]:
    """Wrap a handler so a user error becomes a message saying what to do, never a traceback.

    Without ``errors_to`` the message is a toast (``gr.Error`` keeps the handler's outputs
    untouched, though Gradio marks them with its red Error badge). With ``errors_to``, the
    name of a status Markdown among the outputs, the message is written there instead and
    nothing else changes: a form's results stay readable. Unexpected errors are logged with
    their traceback on the server and shown as a short message.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                if errors_to is None:
                    raise _as_gradio_error(fn, exc) from None
                yield {errors_to: _as_status(fn, exc)}

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if errors_to is None:
                raise _as_gradio_error(fn, exc) from None
            return {errors_to: _as_status(fn, exc)}

    return wrapper


def _unexpected(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"Something went wrong ({text}). The server log has the details; try again or check the System tab."


def id_choices(rows: list[Any], label: Callable[[Any], str]) -> list[tuple[str, int]]:
    """``(label, id)`` pairs for a dropdown whose value is the row id."""
    return [(label(row), row.id) for row in rows]


PICKER_LIMIT = 50


def latest_adapters(services: Any, base_model: str | None = None, limit: int = PICKER_LIMIT) -> list[Any]:
    """The newest ``limit`` adapters (optionally of one base model): what adapter pickers offer.

    With 100,000 adapters a picker listing all of them is unusable and slow; the Adapters
    tab's search finds older ones.
    """
    from studio.schema import AdapterFilters

    return services.adapters.page(AdapterFilters(base_model=base_model), limit=limit)[0]


def human_seconds(seconds: float | None) -> str:
    """'45 s', '3 min', '1 h 20 min'; '—' when unknown."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours:.0f} h {rest:.0f} min"


def human_bytes(size: int | None) -> str:
    """'12.3 MB' style sizes."""
    value = float(size or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def ago(moment: datetime | None) -> str:
    """'5 min ago' for a timestamp."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return human_seconds((datetime.now(UTC) - moment).total_seconds()) + " ago"


def bind(
    event: Callable[..., Any],
    fn: Callable[..., dict[str, Any]],
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    errors_to: str | None = None,
    **kwargs: Any,
) -> Any:
    """Wire ``fn`` to a Gradio event with inputs and outputs matched BY NAME, never by position.

    ``fn(**{input name: value})`` returns ``{output name: value or gr.update}``; names it
    leaves out stay unchanged. Generator handlers (streaming) yield such dicts. Errors go
    through :func:`friendly` (into the ``errors_to`` output when given).
    """
    inputs = inputs or {}
    outputs = outputs or {}
    if errors_to is not None and errors_to not in outputs:
        raise KeyError(f"{name_of(fn)}: errors_to={errors_to!r} is not one of its outputs")
    names = list(inputs)
    safe = friendly(fn, errors_to)

    def by_component(result: dict[str, Any]) -> Any:
        unknown = set(result) - set(outputs)
        if unknown:
            raise KeyError(f"{name_of(fn)} returned outputs that are not wired: {sorted(unknown)}")
        if not result:
            # "Nothing changes". Gradio reads an EMPTY dict as one value: with several outputs it logs "didn't
            # return enough output values", with one it writes {} into it. skip() leaves every output as it is.
            return gr.skip() if outputs else None
        return {outputs[name]: value for name, value in result.items()}

    if inspect.isgeneratorfunction(fn):

        def stream_handler(*values):
            for result in safe(**dict(zip(names, values, strict=True))):
                yield by_component(result)

        handler = stream_handler
    else:

        def handler(*values):
            return by_component(safe(**dict(zip(names, values, strict=True))))

    handler.__name__ = name_of(fn)
    return event(handler, inputs=list(inputs.values()), outputs=list(outputs.values()), **kwargs)


def name_of(fn: Callable[..., Any]) -> str:
    """A handler's name, seeing through functools.partial."""
    return getattr(getattr(fn, "func", fn), "__name__", "handler")


def refreshed_jobs(choices_of: Callable[[Any], list[tuple[str, int]]], services: Any) -> dict[str, Any]:
    """A job picker's choices read again, for a timer: their labels carry each job's status ("· running"), which
    otherwise stayed what it was at submit. The chosen value is left as it is."""
    return {"job": gr.update(choices=choices_of(services))}


def new_submission_token() -> str:
    """A fresh one-time token for a form (a ``gr.State`` default: each page load gets its own)."""
    return uuid.uuid4().hex


def bind_submit(
    button: Any,
    fn: Callable[..., dict[str, Any]],
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    status: str = "status",
    token: Any = None,
    **kwargs: Any,
) -> Any:
    """Wire a form's submit button so that one click makes one submission and failures read as words.

    Two guards against a double click, because either alone lets one through: the button
    is disabled while the submission runs (and ``trigger_mode="once"`` drops a click that
    arrives while it is pending), but the browser can send a second click before the
    first one's event registers. With ``token`` (a ``gr.State(new_submission_token)``),
    ``fn`` also gets ``submission_token`` — the service returns the first submission's
    dataset or job for a repeat — and a fresh token replaces it after each success.
    Errors are written into ``outputs[status]``, never shown as an error badge over the
    results (see :func:`friendly`).
    """
    quiet = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
    disabled = button.click(_disabled, None, button, **quiet)
    handler = fn
    if token is not None:
        inputs = inputs | {"submission_token": token}
        outputs = outputs | {"submission_token": token}
        handler = _with_fresh_token(fn)
    event = bind(disabled.then, handler, inputs, outputs, errors_to=status, trigger_mode="once", **kwargs)
    event.then(_enabled, None, button, **quiet)  # .then runs after a failure too
    return event


def _disabled() -> Any:
    return gr.update(interactive=False)


def _enabled() -> Any:
    return gr.update(interactive=True)


def _with_fresh_token(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``fn``, then a new token for the form's next submission (only after a success: a failure stored nothing)."""

    def submit(**values: Any) -> dict[str, Any]:
        return {**fn(**values), "submission_token": new_submission_token()}

    submit.__name__ = name_of(fn)
    return submit
