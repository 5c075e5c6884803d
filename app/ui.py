"""Small helpers every tab shares: friendly errors, choice lists, formatting."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import gradio as gr

from studio.errors import StudioError

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


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so a StudioError becomes a warning toast saying what to do, never a traceback.

    Unexpected errors are logged with their traceback on the server and shown as a short
    message; ``gr.Error`` keeps the handler's outputs untouched.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except StudioError as exc:
                raise gr.Error(str(exc), title="Cannot do that", print_exception=False) from None
            except Exception as exc:
                logger.exception("handler %s failed", name_of(fn))
                raise gr.Error(_unexpected(exc), print_exception=False) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except StudioError as exc:
            raise gr.Error(str(exc), title="Cannot do that", print_exception=False) from None
        except Exception as exc:
            logger.exception("handler %s failed", name_of(fn))
            raise gr.Error(_unexpected(exc), print_exception=False) from None

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
    **kwargs: Any,
) -> Any:
    """Wire ``fn`` to a Gradio event with inputs and outputs matched BY NAME, never by position.

    ``fn(**{input name: value})`` returns ``{output name: value or gr.update}``; names it
    leaves out stay unchanged. Generator handlers (streaming) yield such dicts. Errors go
    through :func:`friendly`.
    """
    inputs = inputs or {}
    outputs = outputs or {}
    names = list(inputs)
    safe = friendly(fn)

    def by_component(result: dict[str, Any]) -> dict[Any, Any]:
        unknown = set(result) - set(outputs)
        if unknown:
            raise KeyError(f"{name_of(fn)} returned outputs that are not wired: {sorted(unknown)}")
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
