"""``ApiRouter``: every sync endpoint runs as ONE unit of work in ONE thread-pool call.

FastAPI runs a sync endpoint in the thread pool, then validates its result in another thread-pool
call, and the session dependency commits in a third. Each hop costs more CPU than a SQLite
statement, and the GIL makes the waits long. An ``ApiRouter`` endpoint instead runs, in the
thread FastAPI gives it:

1. the endpoint;
2. validation and JSON rendering of its result with the route's response model, exactly as
   FastAPI would render it (a ``Response`` result is sent as it is);
3. the request's before-commit hooks (the idempotent response is stored with the effects, or a
   duplicate that committed first turns the request into its replay), the commit, then the
   after-commit callbacks (:meth:`api.deps.RequestContext.finish`);

and returns the rendered ``Response``, so FastAPI has nothing left to do in a thread. Any error
rolls the transaction back in the same call and propagates to the one error handler. Routes of
a plain ``APIRouter`` still work: the session dependency then commits after the response.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.datastructures import Default, DefaultPlaceholder
from fastapi.dependencies.utils import get_typed_return_annotation
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import ResponseValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.responses import JSONResponse, Response

from api.deps import current_request

__all__ = ["ApiRouter", "unit_of_work"]

UNIT_OF_WORK = "__followpay_unit_of_work__"


def _response_model(endpoint: Callable[..., Any], declared: Any) -> Any:
    """The model FastAPI validates the result with: the declared one, else the return type."""
    if not isinstance(declared, DefaultPlaceholder):
        return declared
    annotation = get_typed_return_annotation(endpoint)
    if annotation is None or (inspect.isclass(annotation) and issubclass(annotation, Response)):
        return None
    return annotation


def unit_of_work(
    endpoint: Callable[..., Any],
    *,
    response_model: Any = None,
    status_code: int | None = None,
    dump_options: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """Wrap a sync endpoint (see the module docstring). FastAPI reads the original signature
    through ``__wrapped__``."""
    adapter = TypeAdapter(response_model) if response_model is not None else None
    options = {"by_alias": True, **(dump_options or {})}
    status = status_code or 200

    def render(result: Any) -> Response:
        if isinstance(result, Response):
            return result
        if adapter is None:
            return JSONResponse(jsonable_encoder(result), status_code=status)
        try:
            value = adapter.validate_python(result, from_attributes=True)
        except ValidationError as exc:
            raise ResponseValidationError(errors=exc.errors(include_url=False)) from None
        return Response(adapter.dump_json(value, **options), status, media_type="application/json")

    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = current_request()
        if ctx is None:  # called outside a request (e.g. directly in a test)
            return endpoint(*args, **kwargs)
        try:
            response = render(endpoint(*args, **kwargs))
            ctx.finish(response)
        except BaseException:
            ctx.abort()
            raise
        return response

    setattr(run, UNIT_OF_WORK, True)
    return run


class ApiRouter(APIRouter):
    """An ``APIRouter`` whose sync endpoints are wrapped in :func:`unit_of_work`."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint) and not getattr(endpoint, UNIT_OF_WORK, False):
            options = {
                name: kwargs[f"response_model_{name}"]
                for name in ("include", "exclude", "exclude_unset", "exclude_defaults")
                if kwargs.get(f"response_model_{name}") not in (None, False)
            }
            if kwargs.get("response_model_exclude_none"):
                options["exclude_none"] = True
            if kwargs.get("response_model_by_alias") is False:
                options["by_alias"] = False
            endpoint = unit_of_work(
                endpoint,
                response_model=_response_model(
                    endpoint, kwargs.get("response_model", Default(None))
                ),
                status_code=kwargs.get("status_code"),
                dump_options=options,
            )
        super().add_api_route(path, endpoint, **kwargs)
