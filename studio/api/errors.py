"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from studio.errors import NotFoundError, StudioError, ValidationFailed


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist; GET /v1/models lists the base models and adapters served here.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "invalid_request_error", None, "invalid_api_key")


def queue_full(message: str) -> ApiError:
    return ApiError(429, message, "rate_limit_exceeded", None, "rate_limit_exceeded")


def from_studio_error(exc: StudioError) -> ApiError:
    """A studio error as an API error: not found 404, bad input 400, anything else 500 with its message."""
    from studio.serving.bank import AdapterNotServable
    from studio.serving.scheduler import QueueFull

    if isinstance(exc, QueueFull):
        return queue_full(str(exc))
    if isinstance(exc, NotFoundError):
        return ApiError(404, str(exc), "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, AdapterNotServable):
        return bad_request(str(exc), "model", "model_not_servable")
    if isinstance(exc, ValidationFailed):
        return bad_request(str(exc))
    return ApiError(500, str(exc), "server_error", None, None)


def install_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in OpenAI's shape (validation errors are 400, not FastAPI's 422)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StudioError)
    async def _studio_error(request: Request, exc: StudioError) -> JSONResponse:
        return from_studio_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()


def validation_error(errors: list[dict]) -> ApiError:
    """The first pydantic error as one sentence naming the top-level parameter it is about."""
    if not errors:
        return bad_request("the request body is invalid")
    first = errors[0]
    whole = body_error(first)
    if whole is not None:
        return bad_request(whole)
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None  # union members (``stop.str``) and list indices are details
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param:
        message = f"Invalid value for '{param}': {message}"
    return bad_request(message, param)


def body_error(error: dict) -> str | None:
    """A sentence for an error about the request body as a whole (not JSON, empty, not an object), else None.

    FastAPI reports these at ``("body", <offset>)`` or ``("body",)``; read as a field path they
    would name a parameter ``'1'`` or none, so they are put in words here instead.
    """
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        position = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error", "it could not be parsed")
        return f"The request body is not valid JSON{position}: {reason}."
    if loc != ("body",):
        return None
    if error.get("type") == "missing":
        return 'The request body is empty: send a JSON object such as {"model": ..., "messages": [...]}.'
    return "The request body must be a JSON object, sent with Content-Type: application/json."
