"""How failures become HTTP answers, and the request-size guard.

Every error body is `{"detail": "<what to fix>", "problems": ["<one per problem>", ...]}`,
except under /v1/ (the OpenAI-compatible routes, issue 19), where it is OpenAI's
`{"error": {"message", "type", "param", "code"}}` with OpenAI's status classes (a bad
parameter 400, an unknown model 404, a bad key 401), so that OpenAI clients show it.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    ClientClosed,
    Conflict,
    GatewayTimeout,
    InvalidInput,
    NotFound,
    ServiceError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from service.redact import redact_paths
from service.specs import spec_error_lines

log = logging.getLogger(__name__)

STATUS = {NotFound: 404, Conflict: 409, InvalidInput: 422, TooLarge: 413, Unauthorized: 401}
STATUS |= {Unavailable: 503, GatewayTimeout: 504}  # inference (issue 4)
STATUS |= {TooManyRequests: 429}  # per-tenant quotas (issue 13, item 8)
STATUS |= {ClientClosed: 499}  # nobody reads it: the client has gone (nginx's code)
DB_RETRY_AFTER_SECONDS = 5
INTERNAL_ERROR = ("internal server error: the server logged it; retry, and report it with the time of the "
                  "request if it persists")


def error_response(status: int, problems: list[str], headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": "; ".join(problems), "problems": problems}, status_code=status, headers=headers)


OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                429: "rate_limit_error"}
PARAM = re.compile(r"([A-Za-z_][\w.\[\]]*): .*", re.DOTALL)  # "field: message", by fullmatch


def openai_error_response(status: int, problems: list[str], headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape. 422 becomes 400, and a `model` that names nothing 404."""
    problems = [p.removeprefix("body: ") for p in problems]  # whole-request checks name their field
    match = PARAM.fullmatch(problems[0]) if problems else None
    param = match.group(1) if match else None
    code = None
    if status == 422:
        status = 400
    if param == "model" and status == 400:
        status, code = 404, "model_not_found"
    elif status == 404 and "job" in (problems[0] if problems else ""):
        param, code = "model", "model_not_found"
    elif status == 401:
        code = "invalid_api_key"
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": "; ".join(problems), "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def respond(request: Request, status: int, problems: list[str], headers: dict | None = None) -> JSONResponse:
    """The error in the shape of the route family that was asked."""
    if request.url.path == "/v1" or request.url.path.startswith("/v1/"):
        return openai_error_response(status, problems, headers)
    return error_response(status, problems, headers)


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail", "problems"],
    "properties": {
        "detail": {"type": "string", "description": "What to fix (all problems, joined)."},
        "problems": {"type": "array", "items": {"type": "string"}, "description": "One line per problem."},
    },
}


OPENAI_ERROR_SCHEMA = {
    "title": "OpenAIError",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def document_errors(app: FastAPI) -> None:
    """Make the OpenAPI schema describe the error bodies these handlers send (issue 6,
    case 22, Schemathesis): FastAPI documents 422 as {"detail": [ValidationError]}, but
    every error here is {"detail": str, "problems": [str]}. That schema replaces it, and
    is every operation's `default` response (401, 404, 409, 413, 503, ...)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            schemas["Error"] = ERROR_SCHEMA
            schemas["OpenAIError"] = OPENAI_ERROR_SCHEMA
            for path, operations in schema.get("paths", {}).items():
                # /v1/* answers in OpenAI's shape (issue 19), the rest in the service's own.
                name = "OpenAIError" if path == "/v1" or path.startswith("/v1/") else "Error"
                error = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    if "422" in responses:
                        responses["422"] = {"description": "Invalid request; the message says what to fix", **error}
                    responses.setdefault("default", {"description": "Error; the message says what to fix", **error})
        return app.openapi_schema

    app.openapi = openapi


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and pathological JSON to 4xx answers."""
    document_errors(app)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        status = next((code for cls, code in STATUS.items() if isinstance(error, cls)), 400)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        # Messages relayed from workers may quote server paths (issue 13, item 5).
        problems = [redact_paths(problem, request.app.state.settings) for problem in error.problems]
        return respond(request, status, problems, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _error: Exception) -> JSONResponse:
        # The last resort behind InternalErrors (e.g. a middleware added outside it):
        # Starlette's outermost middleware calls this and logs the traceback; the client gets
        # the documented JSON shape, not a plain-text "Internal Server Error" or the details.
        return respond(request, 500, [INTERNAL_ERROR])

    async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
        # The database is restarting or failing over (issue 6, case 7): a 503 the client can
        # retry, not a 500. Nothing was changed: the transaction rolled back.
        if not is_transient(error):  # issue 13, item 10: a retry cannot succeed, so no 503
            return respond(request, 500, ["the database refused this request (a limit of the database, not an "
                                          "outage); retrying the same request will not help"])
        return respond(request, 503, ["the job database is unavailable right now; retry shortly"],
                              {"Retry-After": str(DB_RETRY_AFTER_SECONDS)})

    for error_class in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(error_class, _database_unavailable)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            loc = [str(part) for part in item.get("loc", ())]
            if loc and loc[0] in ("body", "query", "path", "header"):
                loc = loc[1:] if loc[0] == "body" else loc
            where = ".".join(loc) or "body"
            message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
            if item.get("type") == "extra_forbidden":
                message = "unknown field; remove it (see GET /docs for the job spec's fields)"
            elif item.get("type") == "json_invalid":
                message = "the body is not valid JSON: " + str(item.get("ctx", {}).get("error", message))
            problems.append(f"{where}: {message}")
        return respond(request, 422, problems or spec_error_lines(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400 and "parsing the body" in str(error.detail):
            # FastAPI's answer when the JSON decoder itself fails (e.g. nesting too deep).
            return respond(request, 422, ["body: cannot be parsed as JSON (malformed or nested too deeply)"])
        return respond(request, error.status_code, [str(error.detail)], getattr(error, "headers", None))


class InternalErrors:
    """ASGI middleware, outermost of the app's own: an exception raised before the response
    started (in a route or any middleware inside this one) is logged and answered with the
    documented JSON 500, and the connection stays usable (issue 13, item 5). Once a response
    has started nothing more can be said in its status: the exception propagates (event
    streams end with an `error` message of their own, see api/sse.py)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            path = scope.get("path", "")
            shape = openai_error_response if path == "/v1" or path.startswith("/v1/") else error_response
            await shape(500, [INTERNAL_ERROR])(scope, receive, send)
# SQLSTATE classes of errors that the same statement meets again on retry: data exception,
# syntax or access rule, program limit exceeded (e.g. too many function arguments), feature not supported.
PERMANENT_SQLSTATE_CLASSES = ("22", "42", "54", "0A")
PERMANENT_SQLITE = ("too many", "too big", "too large", "no such", "syntax error", "malformed")


def is_transient(error: Exception) -> bool:
    """Whether a database error may pass on retry (an outage, a lock, a full pool) rather
    than recur for this request (a limit of the database). Only the first is a 503."""
    if not isinstance(error, OperationalError):
        return True  # InterfaceError, pool timeout: the connection, not the statement
    original = getattr(error, "orig", None)
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if sqlstate:
        return not str(sqlstate).startswith(PERMANENT_SQLSTATE_CLASSES)
    if type(original).__module__.startswith("sqlite3"):  # SQLite has no SQLSTATE: its message says
        return not any(part in str(original).lower() for part in PERMANENT_SQLITE)
    return True


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before reading them
    (Content-Length) or as soon as the streamed total passes the cap. Paths in `exempt`
    enforce their own, larger cap while streaming (uploads)."""

    def __init__(self, app, max_bytes: int, exempt: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = error_response(413, [self._message()])
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # an HTTPException passes FastAPI's body parsing as is
                    raise StarletteHTTPException(413, self._message())
            return message

        return await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"body: larger than this deployment's limit of {self.max_bytes} bytes for a request"
