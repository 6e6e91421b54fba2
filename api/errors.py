"""One error shape for every 4xx/5xx: ``{"error": {"type", "code", "message", "param"}}``.

Exception tree of the API layer (domain packages have their own trees with the same attributes)::

    ApiError(Exception)                          400 invalid_request_error / invalid_request
    ├── InvalidRequest                           400 invalid_request_error / parameter_invalid
    ├── Unauthorized                             401 authentication_error  / invalid_api_key
    ├── Forbidden                                403 permission_error / insufficient_permissions
    ├── NotFound                                 404 invalid_request_error / resource_missing
    ├── MethodNotAllowed                         405 invalid_request_error / method_not_allowed
    ├── IdempotencyError                         400 idempotency_error     / idempotency_error
    ├── IdempotencyKeyInUse                      409 idempotency_error     / idempotency_key_in_use
    ├── PayloadTooLarge                          413 invalid_request_error / request_too_large
    ├── RateLimited                              429 rate_limit_error      / rate_limit
    └── ServerError                              500 api_error             / api_error

Any exception (from ``crm``, ``wallet`` or anywhere) whose class or instance has an ``int``
``status_code`` and a ``str`` ``code`` is rendered the same way (duck typing: this module imports no
domain package); ``type`` defaults from the status, ``param`` to ``None``, ``message`` to
``str(exc)``. 5xx messages are always the generic one and the exception is logged instead.
Validation errors become 422 ``parameter_invalid`` with ``param`` set to the field path
(``enabled_events[0]``); unknown routes 404 ``resource_missing``; unhandled exceptions 500
``api_error``.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

__all__ = [
    "DEFAULT_ERROR_RESPONSES",
    "GENERIC_SERVER_MESSAGE",
    "ApiError",
    "ErrorDetail",
    "ErrorResponse",
    "Forbidden",
    "IdempotencyError",
    "IdempotencyKeyInUse",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RedactingFilter",
    "ServerError",
    "Unauthorized",
    "error_json",
    "error_responses",
    "find_domain_error",
    "install_error_handlers",
    "install_log_redaction",
    "is_domain_error",
    "redact",
    "render_exception",
]

logger = logging.getLogger("followpay.api")

GENERIC_SERVER_MESSAGE = "An internal error occurred. It has been logged; please retry later."


class ApiError(Exception):
    """Base of the API-side errors; subclasses set the class attributes."""

    status_code: int = 400
    type: str = "invalid_request_error"
    code: str = "invalid_request"
    param: str | None = None
    message: str = "The request is invalid."

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or type(self).message
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.message)


class InvalidRequest(ApiError):
    code = "parameter_invalid"


class Unauthorized(ApiError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"
    message = "Invalid API key provided. Send it as 'Authorization: Bearer <key>'."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="FollowPay"')


class Forbidden(ApiError):
    status_code = 403
    type = "permission_error"
    code = "insufficient_permissions"
    message = "This API key is not allowed to perform this request."


class NotFound(ApiError):
    status_code = 404
    code = "resource_missing"
    message = "No such object."


class MethodNotAllowed(ApiError):
    status_code = 405
    code = "method_not_allowed"
    message = "This method is not allowed on this URL."


class IdempotencyError(ApiError):
    """The Idempotency-Key was already used with a different request (method, path or body)."""

    type = "idempotency_error"
    code = "idempotency_error"
    message = (
        "Keys for idempotent requests can only be used with the same parameters they were first "
        "used with. Try using a key other than the one used in the original request."
    )


class IdempotencyKeyInUse(ApiError):
    """Another request with the same Idempotency-Key is still being processed."""

    status_code = 409
    type = "idempotency_error"
    code = "idempotency_key_in_use"
    message = (
        "There is currently another in-progress request using this Idempotency-Key. "
        "Retry this request later."
    )


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "request_too_large"
    message = "The request body is too large."


class RateLimited(ApiError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit"
    message = "Too many requests hit the API too quickly. Retry after the Retry-After delay."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = max(1, int(retry_after))


class ServerError(ApiError):
    status_code = 500
    type = "api_error"
    code = "api_error"
    message = GENERIC_SERVER_MESSAGE


# --------------------------------------------------------------------------------------- rendering


def is_domain_error(exc: BaseException) -> bool:
    """True for anything carrying an int ``status_code`` and a str ``code`` (duck typing)."""
    status = getattr(exc, "status_code", None)
    return (
        isinstance(status, int)
        and not isinstance(status, bool)
        and isinstance(getattr(exc, "code", None), str)
    )


def find_domain_error(exc: BaseException | None) -> BaseException | None:
    """``exc`` itself or the first domain error in its explicit ``__cause__`` chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if is_domain_error(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def error_json(
    status: int,
    *,
    type: str | None = None,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "type": type or _default_type(status),
            "code": code,
            "message": message,
            "param": param,
        }
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


_SECRET_PATTERNS = (
    (re.compile(r"\b(fp_(?:live|test)_|whsec_)[A-Za-z0-9_-]{4,}"), r"\1[REDACTED]"),
    (re.compile(r"(://[^:/\s@]+:)[^@\s]+@"), r"\1[REDACTED]@"),
    (re.compile(r"(?i)(bearer\s+)[^\s'\"]+"), r"\1[REDACTED]"),
    # the customer's single-use link token is the path segment after these prefixes
    (re.compile(r"(/v1/public/(?:feedback|consent|messages)/)[^/?\s\"']+"), r"\1[REDACTED]"),
    # a checkout link is ``<invoice id>.<token>``: the id stays readable
    (re.compile(r"(/v1/public/checkout/[^/.?\s\"']+\.)[^/?\s\"']+"), r"\1[REDACTED]"),
    # RPC providers put the project key in the URL path (…/v3/<key>, …/v2/<key>)
    (re.compile(r"(https?://[^/\s]+/(?:[^/\s]+/)*)[A-Za-z0-9_-]{24,}"), r"\1[REDACTED]"),
)


class RedactingFilter(logging.Filter):
    """Applies :func:`redact` to every record of the logger it is on (uvicorn's access log
    writes each request's path, and customer links carry their token in the path).

    The record keeps its shape: each argument is masked in place, because formatters read
    ``record.args`` themselves (uvicorn's ``AccessFormatter`` unpacks it; a record whose args
    were replaced by ``None`` printed a logging traceback for every customer link click)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_masked(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _masked(arg) for key, arg in record.args.items()}
        return True


def _masked(arg: object) -> object:
    """``arg``, or its text masked when that text holds a secret (numbers pass untouched, so
    ``%d`` still formats)."""
    if isinstance(arg, int | float) or arg is None:
        return arg
    text = str(arg)
    masked = redact(text)
    return arg if masked == text else masked


def install_log_redaction(names: tuple[str, ...] = ("uvicorn.access", "uvicorn.error")) -> None:
    """Put one :class:`RedactingFilter` on each named logger (idempotent)."""
    for name in names:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in target.filters):
            target.addFilter(RedactingFilter())


def redact(text: str) -> str:
    """Mask API keys, webhook secrets, URL passwords and bearer tokens in free text. A text
    that hides one behind percent-encoding (``/v1/public/%66eedback/<token>`` reaches the
    route, and the access log prints the raw path) is masked in its decoded form."""
    masked = _masked_text(text)
    if "%" in masked:
        decoded = unquote(masked)
        again = _masked_text(decoded)
        if again != decoded:
            return again
    return masked


def _masked_text(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _log_server_error(exc: BaseException, where: str) -> None:
    # The traceback without locals, with known secret shapes masked; engines are built with
    # hide_parameters=True and no request header or body is ever formatted into the line.
    trace = redact("".join(traceback.format_exception(exc)))
    # ``where`` is the concrete path: a customer link's token is in it
    logger.error("unhandled %s during %s\n%s", type(exc).__name__, redact(where), trace)


def _render_domain(exc: BaseException, where: str) -> JSONResponse:
    status = int(getattr(exc, "status_code", 500))
    if not 400 <= status <= 599:
        status = 500
    headers = getattr(exc, "headers", None)
    headers = dict(headers) if isinstance(headers, Mapping) else None
    if status >= 500:
        _log_server_error(exc, where)
        return error_json(
            status,
            type="api_error",
            code=str(getattr(exc, "code", "api_error")),
            message=GENERIC_SERVER_MESSAGE,
        )
    message = getattr(exc, "message", None)
    if not isinstance(message, str) or not message:
        message = str(exc) or "The request could not be completed."
    param = getattr(exc, "param", None)
    etype = getattr(exc, "type", None)
    return error_json(
        status,
        type=etype if isinstance(etype, str) else None,
        code=str(getattr(exc, "code", "invalid_request")),
        message=message,
        param=param if isinstance(param, str) else None,
        headers=headers,
    )


def _param_path(loc: Iterable[Any]) -> str | None:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    if not parts or not isinstance(parts[0], str):
        return None
    return parts[0] + "".join(f"[{p}]" for p in parts[1:])


def _render_validation(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first: Mapping[str, Any] = errors[0] if errors else {}
    param = _param_path(first.get("loc", ()))
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return _not_json()
    if kind == "missing" and param:
        message = f"Missing required param: {param}."
    elif param:
        message = f"Invalid {param}: {first.get('msg', 'invalid value')}."
    else:
        message = f"Invalid request: {first.get('msg', 'invalid value')}."
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    code = "parameter_missing" if kind == "missing" else "parameter_invalid"
    return error_json(422, type="invalid_request_error", code=code, message=message, param=param)


#: FastAPI's detail when ``json.loads`` raised something other than a syntax error.
_BODY_UNPARSED = "There was an error parsing the body"


def _not_json() -> JSONResponse:
    """One answer for every body that is not usable JSON, whatever stopped the parser."""
    return error_json(
        422,
        type="invalid_request_error",
        code="parameter_invalid",
        message="The request body is not valid JSON.",
    )


def _render_http(exc: StarletteHTTPException, method: str, path: str) -> JSONResponse:
    status = exc.status_code
    headers = dict(exc.headers or {})
    detail = exc.detail if isinstance(exc.detail, str) else None
    if status == 404:
        return error_json(
            404,
            code="resource_missing",
            message=f"Unrecognized request URL ({method}: {path}).",
        )
    if status == 405:
        return error_json(
            405,
            code="method_not_allowed",
            message=f"The {method} method is not allowed on {path}.",
            headers=headers,
        )
    if status == 413:
        return error_json(413, code="request_too_large", message=PayloadTooLarge.message)
    if status == 400 and detail == _BODY_UNPARSED:  # nested too deep, a 5,000-digit number
        return _not_json()
    if status >= 500:
        return error_json(status, code="api_error", message=GENERIC_SERVER_MESSAGE)
    return error_json(
        status,
        code="invalid_request",
        message=detail or "The request could not be processed.",
        headers=headers,
    )


def _nul_in_text(exc: BaseException) -> bool:
    """PostgreSQL refused a NUL character in a text value (from a path, query or body): the
    client's input, and the request's transaction is rolled back. SQLite stores it."""
    return isinstance(exc, sa_exc.DataError) and "NUL (0x00)" in str(exc.orig)


def render_exception(exc: BaseException, *, method: str = "", path: str = "") -> JSONResponse:
    """The error response for any exception (unknown ones: logged, generic 500)."""
    where = f"{method} {path}".strip() or "request"
    if isinstance(exc, RequestValidationError):
        return _render_validation(exc)
    domain = find_domain_error(exc)
    if domain is not None:
        return _render_domain(domain, where)
    if isinstance(exc, StarletteHTTPException):
        return _render_http(exc, method, path)
    if _nul_in_text(exc):
        return error_json(
            400, code="invalid_request", message="Text may not contain NUL (0x00) characters."
        )
    _log_server_error(exc, where)
    return error_json(500, type="api_error", code="api_error", message=GENERIC_SERVER_MESSAGE)


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path: Starlette names only the first
    route whose path matched (``PUT /v1/api_keys`` said ``Allow: POST``, though GET works)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers for the exception classes FastAPI dispatches itself.

    Duck-typed domain errors and unhandled exceptions are caught by the app's outer middleware
    (see :mod:`api.app`), which calls :func:`render_exception` as well.
    """

    async def _handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
            exc = StarletteHTTPException(405, headers={"Allow": _allowed_methods(request)})
        return render_exception(exc, method=request.method, path=request.url.path)

    app.add_exception_handler(StarletteHTTPException, _handle)
    app.add_exception_handler(RequestValidationError, _handle)
    app.add_exception_handler(ApiError, _handle)


# ----------------------------------------------------------------------------------------- OpenAPI


class ErrorDetail(BaseModel):
    type: str = Field(
        description="api_error, authentication_error, idempotency_error, invalid_request_error, "
        "permission_error or rate_limit_error (domain errors may add their own)."
    )
    code: str = Field(description="A short, stable, snake_case string to branch on.")
    message: str = Field(description="A human-readable message; never contains secrets.")
    param: str | None = Field(
        default=None, description="The parameter the error relates to, e.g. `url` or `data[0]`."
    )


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "message": "No such webhook endpoint: 'we_123'.",
                    "param": None,
                }
            }
        }
    )

    error: ErrorDetail


_EXAMPLES: dict[int, tuple[str, str, str, str | None, str]] = {
    400: ("invalid_request_error", "parameter_invalid", "Invalid request.", None, "Bad request"),
    401: (
        "authentication_error",
        "invalid_api_key",
        Unauthorized.message,
        None,
        "No valid API key",
    ),
    403: ("permission_error", "insufficient_permissions", Forbidden.message, None, "Forbidden"),
    404: (
        "invalid_request_error",
        "resource_missing",
        "No such object: 'we_123'.",
        None,
        "Not found",
    ),
    409: (
        "idempotency_error",
        "idempotency_key_in_use",
        IdempotencyKeyInUse.message,
        None,
        "Conflict",
    ),
    413: ("invalid_request_error", "request_too_large", PayloadTooLarge.message, None, "Too large"),
    422: (
        "invalid_request_error",
        "parameter_invalid",
        "Invalid url: Input should be a valid URL.",
        "url",
        "Invalid parameters",
    ),
    429: ("rate_limit_error", "rate_limit", RateLimited.message, None, "Rate limited"),
    500: ("api_error", "api_error", GENERIC_SERVER_MESSAGE, None, "Server error"),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: each status documented with the error schema."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        etype, code, message, param, description = _EXAMPLES.get(
            status, (_default_type(status), "invalid_request", "Error.", None, "Error")
        )
        out[status] = {
            "model": ErrorResponse,
            "description": description,
            "content": {
                "application/json": {
                    "example": {
                        "error": {"type": etype, "code": code, "message": message, "param": param}
                    }
                }
            },
        }
    return out


DEFAULT_ERROR_RESPONSES = error_responses(400, 401, 403, 404, 422, 429, 500)
