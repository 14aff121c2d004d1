"""Errors as RFC 9457 problem details (`application/problem+json`).

Every rejection the service makes is a `Problem`: a status, a short title that is the same for
every instance of that kind, and a detail that says what was wrong with this request. Nothing a
client sends should produce a 500; a 500 means a bug here, and says so.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers or {}

    def record(self, instance: str | None = None) -> dict:
        """The problem details object: a response's body, or a streamed answer's last record
        when it fails after its first."""
        body = {
            "type": f"https://zeroi2v.dev/problems/{self.title.lower().replace(' ', '-')}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        return body

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(self.record(instance), status_code=self.status,
                            headers=self.headers, media_type=MEDIA_TYPE)  # fmt: skip


def empty_body() -> Problem:
    return Problem(400, "Empty upload", "the request carries no video: send it as the multipart "
                   "field `file` or as a raw video/* body")  # fmt: skip


def too_large(limit: int) -> Problem:
    return Problem(413, "Upload too large", f"the upload exceeds the limit of {limit} bytes")


def upload_too_slow(min_rate: int, received: int, seconds: float) -> Problem:
    detail = f"{received} bytes in {seconds:.1f} s: a body must arrive at >= {min_rate} bytes/s"
    return Problem(408, "Upload too slow", detail, headers={"Connection": "close"})


def client_disconnected() -> Problem:
    return Problem(400, "Client disconnected", "the connection closed before the upload ended")


def cannot_store(detail: str) -> Problem:
    return Problem(507, "Cannot store the upload", detail)


def internal(kind: str) -> Problem:
    return Problem(500, "Internal error", f"{kind} (a bug in the service, or one of its "
                   f"replicas failed; the service's log has the details)")  # fmt: skip


def headers_too_large(size: int, limit: int) -> Problem:
    return Problem(431, "Request headers too large",
                   f"the request headers take {size} bytes; at most {limit}",
                   headers={"Connection": "close"})  # fmt: skip


def timed_out(limit_s: float) -> Problem:
    return Problem(504, "Request timed out", f"the service gives one request at most "
                   f"{limit_s:g} s once its body is in")  # fmt: skip


def unsupported(detail: str) -> Problem:
    return Problem(415, "Not a decodable video", detail)


def bad_parameters(detail: str) -> Problem:
    return Problem(422, "Invalid parameters", detail)


def overloaded(retry_after_s: int, what: str = "too many requests are queued") -> Problem:
    return Problem(503, "Service overloaded", f"{what}; retry later",
                   headers={"Retry-After": str(retry_after_s)})  # fmt: skip


def unauthorized() -> Problem:
    return Problem(401, "Unauthorized", "a valid API key is required (Authorization: Bearer KEY)",
                   headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


def not_ready() -> Problem:
    return Problem(503, "Not ready", "the model is still loading or warming up",
                   headers={"Retry-After": "5"})  # fmt: skip


async def problem_handler(request: Request, exc: Problem) -> JSONResponse:
    return exc.response(instance=request.url.path)


async def http_exception_handler(request: Request, exc: HTTPException) -> JSONResponse:
    """The framework's own errors (404 for an unknown path, 405 for a wrong method, with its
    Allow header) in the same shape as ours."""
    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "Error"
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404:
        detail = f"no endpoint {request.url.path}; see /docs"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path} (allowed: " + (
            f"{(exc.headers or {}).get('Allow', '?')})"
        )
    problem = Problem(exc.status_code, title, detail, headers=dict(exc.headers or {}))
    return problem.response(instance=request.url.path)
