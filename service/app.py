"""The HTTP API: a FastAPI app over a `VideoService`, no Ray in sight.

Ray Serve wraps this app in its ingress deployment (service/deployments.py) and sets
`app.state.service`; tests can set it to a service with an in-process model backend.

Uploads are read through a byte counter, so a body over the limit is refused after at most
limit + one chunk, never buffered whole; multipart bodies are parsed from that same stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO, Literal

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service import problems
from service.problems import Problem
from service.responses import (
    Classification,
    Detection,
    ModelCard,
    ProblemDetail,
    Status,
    TimelineSummary,
    TimelineWindow,
    problem_responses,
    stream_response,
)
from service.tasks import ClassifyParams, DetectParams
from service.timeline import TimelineParams
from service.video_service import VideoService, parse_boxes


def create_app() -> FastAPI:
    app = FastAPI(
        title="zeroi2v",
        summary="Video action recognition with ZeroI2V models: image-transformer cost, video "
        "understanding.",
        version="0.1.0",
    )
    app.add_exception_handler(Problem, problems.problem_handler)
    # Starlette's own 404 and 405 (and any other HTTPException) as problem+json too.
    app.add_exception_handler(StarletteHTTPException, problems.http_exception_handler)

    @app.middleware("http")
    async def _headers_and_metrics(request: Request, call_next):
        start = time.perf_counter()
        svc = getattr(request.app.state, "service", None)
        limit = svc.settings.max_header_bytes if svc is not None else None
        scope = request.scope
        size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])  # ": " and CRLF
        size += len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if limit is not None and size > limit:
            response = problems.headers_too_large(size, limit).response(request.url.path)
        else:
            response = await call_next(request)
        if svc is not None and svc.metrics is not None:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", "other")  # the template, never the raw URL
            svc.metrics.observe_request(endpoint, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'body'))}: {e['msg']}"
            for e in exc.errors()
        )
        return problems.bad_parameters(detail).response(request.url.path)

    def service(request: Request) -> VideoService:
        return request.app.state.service

    def authorize(request: Request) -> None:
        key = service(request).settings.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
            raise problems.unauthorized()

    def serving(request: Request, task: str) -> VideoService:
        """The service for an inference endpoint: authorised, and serving `task`'s model."""
        authorize(request)
        svc = service(request)
        svc.require_task(task)
        return svc

    @app.get("/livez", tags=["health"])
    async def livez() -> Status:
        """The process is up (it may still be loading the model)."""
        return Status(status="alive")

    @app.get("/readyz", tags=["health"], responses=problem_responses(503))
    async def readyz(request: Request) -> Status:
        """The model is loaded and warmed up: requests will be served."""
        if not await service(request).ready():
            raise problems.not_ready()
        return Status(status="ready")

    @app.get("/v1/model", tags=["model"], responses=problem_responses(401))
    async def model_card(request: Request) -> ModelCard:
        """Architecture, classes, frames, views, parameters and GFLOPs of the served model."""
        authorize(request)
        return await service(request).model_card()

    @app.post(
        "/classify", tags=["inference"], openapi_extra=video_body(), responses=INFERENCE_PROBLEMS
    )
    async def classify(
        request: Request,
        top_k: int = Query(5, ge=1, description="labels to return"),
        temporal_clips: int | None = Query(None, ge=1, description="default: the model's"),
        spatial_crops: int | None = Query(None, description="1 or 3; default: the model's"),
        sampling: Literal["exact", "fast"] = Query(
            "exact",
            description="exact: the frames the model was evaluated with. fast: each frame "
            "moved to a keyframe less than half a frame gap away where the video has one, so "
            "less is decoded; lossy, see benchmarks/README.md",
        ),
    ) -> Classification:
        """Action labels for one uploaded video (multipart field `file`, or a raw video body)."""
        start = time.perf_counter()
        svc = serving(request, "classify")
        params = svc.check(ClassifyParams(top_k, temporal_clips, spatial_crops, sampling))
        body, _ = await receive(request, svc)
        async with svc.admission():
            return await within_deadline(svc, svc.predict(body, params, start))

    @app.post(
        "/detect",
        tags=["inference"],
        openapi_extra=video_body(
            boxes={
                "type": "string",
                "description": 'JSON {"<seconds>": [[x1, y1, x2, y2], ...]}: actor boxes per '
                "key frame, normalised to [0, 1]; key frames without boxes use the model's "
                "localiser",
            }
        ),
        responses=INFERENCE_PROBLEMS,
    )
    async def detect(
        request: Request,
        timestamps: str | None = Query(
            None,
            description="key-frame times in seconds, comma-separated (default: 1 Hz, or "
            "the times of the given boxes)",
        ),
        boxes: str | None = Query(None, description="as the `boxes` form field (raw uploads)"),
        score_threshold: float = Query(
            DetectParams.score_threshold, ge=0, le=1, description="box score x action prob."
        ),
        box_threshold: float = Query(
            DetectParams.box_threshold,
            ge=0.05,
            le=1,
            description="localiser box score (the model returns boxes down "
            "to 0.05, at most 20 per key frame)",
        ),
    ) -> Detection:
        """AVA-style detection: per key frame, actor boxes with their actions and scores."""
        start = time.perf_counter()
        svc = serving(request, "detect")
        times = None
        if timestamps is not None:
            try:
                times = [float(t) for t in timestamps.split(",") if t.strip()]
            except ValueError:
                raise problems.bad_parameters(
                    f"timestamps: {timestamps!r} is not a comma-separated list of seconds"
                ) from None
        params = svc.check(DetectParams(times, parse_boxes(boxes), score_threshold, box_threshold))
        body, form = await receive(request, svc, ("boxes",))
        if "boxes" in form:
            if boxes is not None:
                raise problems.bad_parameters("boxes: send them as the form field or the "
                                              "query parameter, not both")  # fmt: skip
            params = svc.check(
                DetectParams(times, parse_boxes(form["boxes"]), score_threshold, box_threshold)
            )
        async with svc.admission():
            return await within_deadline(svc, svc.predict(body, params, start))

    @app.post(
        "/timeline",
        tags=["inference"],
        openapi_extra=video_body(),
        response_class=StreamingResponse,
        responses={
            **stream_response(
                NDJSON,
                "Streamed as windows are scored: a TimelineWindow per window, then a "
                "TimelineSummary; a failure after the first line ends the stream with a "
                "problem+json record (ProblemDetail) instead of the summary",
                TimelineWindow,
                TimelineSummary,
                ProblemDetail,
            ),  # fmt: skip
            **problem_responses(400, 401, 408, 409, 413, 415, 422, 431, 500, 503, 507),
        },
    )
    async def timeline(
        request: Request,
        stride_s: float | None = Query(
            None, gt=0, description="seconds between window starts; default: half a window"
        ),
        top_k: int = Query(5, ge=1, description="labels per window"),
        spatial_crops: int | None = Query(None, description="1 or 3; default: the model's"),
    ) -> StreamingResponse:
        """The labels of a long video over time: sliding windows, each one clip of the model's
        frames, decoded in one pass front to back and streamed as NDJSON as they are scored,
        then a summary with the segments where the top label stays the same. The upload (up to
        max_timeline_upload_bytes; videos up to max_timeline_seconds) is spooled to disk. A
        client that disconnects stops the work."""
        authorize(request)
        svc = service(request)
        params = svc.check_timeline(TimelineParams(stride_s, top_k, spatial_crops))
        s = svc.settings
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(svc.timeline_slot())
            upload = await stack.enter_async_context(spooled_upload(s.spool_dir))
            try:
                limit, rate = s.max_timeline_upload_bytes, s.min_timeline_upload_bytes_per_s
                await read_upload(request, limit, (), rate, s.upload_grace_s, into=upload)
            except OSError as e:
                reason = e.strerror or type(e).__name__
                raise problems.cannot_store(f"spooling the upload failed: {reason}") from e
            # Messages name the upload as /classify's do, not by the spool file's path.
            name = f"<{upload.tell()} bytes>"
            records = await svc.timeline(upload.name, params, stack, name)
        except BaseException:
            await closing(stack.aclose)
            raise
        lines = ndjson(records, request.url.path)
        return ClosingStreamingResponse(lines, stack.aclose, media_type=NDJSON)

    return app


NDJSON = "application/x-ndjson"


class ClosingStreamingResponse(StreamingResponse):
    """A streamed answer that calls `on_close` once it is over however it ends: sent, failed,
    or the client gone (Starlette and Ray cancel the stream then)."""

    def __init__(self, content, on_close: Callable[[], Awaitable[None]], **kwargs):
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await closing(self.on_close)


async def closing(close: Callable[[], Awaitable[None]]) -> None:
    """`close()` to its end even in a cancelled task: Starlette's middleware cancels through an
    anyio scope that cancels every await again, which would free a timeline's slot and file
    while its decode worker still runs."""
    with anyio.CancelScope(shield=True):
        await close()


async def ndjson(records: AsyncIterator, instance: str) -> AsyncIterator[str]:
    """Records as NDJSON lines; a problem after the first line is the last record."""
    try:
        async for record in records:
            yield record.model_dump_json() + "\n"
    except Problem as e:
        yield json.dumps(e.record(instance)) + "\n"


class SpoolingParser(MultiPartParser):
    """Starlette's multipart parser with the `file` part written straight into `into` (in a
    thread, as Starlette writes its own temporary files) instead of a temporary file of its
    own in the system's folder: one copy on disk, where spool_dir says."""

    def __init__(self, headers, stream, into: BinaryIO):
        # A timeline reads no text fields: a few small ones at most, not Starlette's 1000 of
        # 1 MiB each, held in memory.
        super().__init__(headers, stream, max_files=1, max_fields=8, max_part_size=64 * 1024)
        self.into = into

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is None:  # a text field
            if self._current_part.field_name == "file":
                raise MultiPartException("the `file` field must be a file upload, not text")
            return
        upload.file.close()  # Starlette's, still empty
        if self._current_part.field_name != "file":  # refused before its bytes are stored
            raise MultiPartException(
                f"the file part is named {self._current_part.field_name!r}; send it as `file`"
            )
        upload.file = self.into  # not closed through the upload: the caller owns it


@contextlib.asynccontextmanager
async def spooled_upload(folder: str | None) -> AsyncIterator[BinaryIO]:
    """A temporary file for an upload, closed and removed in a thread when done (a stalled
    disk must not stall the event loop)."""
    try:
        f = tempfile.NamedTemporaryFile(prefix="zeroi2v-", suffix=".upload", dir=folder)  # noqa: SIM115 (its errors become a 507 here)
    except OSError as e:  # the message, not the server's paths
        reason = e.strerror or type(e).__name__
        raise problems.cannot_store(f"no temporary file for the upload: {reason}") from e
    try:
        yield f
    finally:
        try:
            await anyio.to_thread.run_sync(f.close)
        finally:  # a cancelled wait may not have run it (closing twice is harmless)
            f.close()


# What an upload can be refused with (service/problems.py says when).
INFERENCE_PROBLEMS = problem_responses(400, 401, 408, 409, 413, 415, 422, 431, 503, 504)


def video_body(**fields: dict) -> dict:
    """OpenAPI request body of an upload: multipart (`file` plus `fields`) or a raw video."""
    properties = {"file": {"type": "string", "format": "binary"}, **fields}
    multipart = {"type": "object", "properties": properties, "required": ["file"]}
    return {
        "requestBody": {
            "content": {
                "multipart/form-data": {"schema": multipart},
                "video/*": {"schema": {"type": "string", "format": "binary"}},
            },
            "required": True,
        }
    }


async def within_deadline(svc: VideoService, work):
    """The answer of `work`, or 504 once it has taken request_timeout_s (and it is cancelled)."""
    try:
        return await asyncio.wait_for(work, svc.settings.request_timeout_s)
    except asyncio.TimeoutError:
        raise problems.timed_out(svc.settings.request_timeout_s) from None


async def receive(
    request: Request, svc: VideoService, fields: tuple[str, ...] = ()
) -> tuple[bytes, dict[str, str]]:
    """A request's upload, received within the service's upload limits (before admission)."""
    s = svc.settings
    async with svc.receiving():
        return await read_upload(
            request, s.max_upload_bytes, fields, s.min_upload_bytes_per_s, s.upload_grace_s
        )


async def read_upload(
    request: Request,
    limit: int,
    fields: tuple[str, ...] = (),
    min_rate: float | None = None,
    grace_s: float = 0.0,
    into: BinaryIO | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The video bytes of a multipart (`file` field) or raw body, refused past `limit` bytes
    (413) or once it falls behind `min_rate` bytes/s on average after `grace_s` (408), and the
    multipart text fields named in `fields` that the body carries. With `into`, the bytes are
    written to that file as they come instead (and b"" is returned)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise problems.too_large(limit)

    async def counted():
        seen, start = 0, time.monotonic()
        chunks = request.stream().__aiter__()
        while True:
            wait = None
            if min_rate is not None:
                # The next chunk is due when the bytes so far no longer cover the time spent
                # at min_rate, and never more than grace_s after the last one: a burst does not
                # buy a long silence.
                now = time.monotonic()
                wait = max(0.0, min(start + grace_s + seen / min_rate - now, grace_s))
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), wait)
            except StopAsyncIteration:
                return
            except ClientDisconnect:
                raise problems.client_disconnected() from None
            except asyncio.TimeoutError:
                raise problems.upload_too_slow(
                    int(min_rate), seen, time.monotonic() - start
                ) from None
            seen += len(chunk)
            if seen > limit:
                raise problems.too_large(limit)
            yield chunk

    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()  # RFC 9110: case-insensitive
    texts: dict[str, str] = {}
    data = b""
    if media_type == "multipart/form-data":
        parser = (
            MultiPartParser(request.headers, counted(), max_files=1)
            if into is None
            else SpoolingParser(request.headers, counted(), into)
        )
        try:
            form = await parser.parse()
        except MultiPartException as e:
            raise problems.bad_parameters(f"multipart body: {e.message}") from e
        upload = form.get("file")
        if upload is None:
            raise problems.bad_parameters("the multipart body has no `file` field")
        if not isinstance(upload, UploadFile):
            raise problems.bad_parameters("the `file` field must be a file upload, not text")
        for name in fields:
            value = form.get(name)
            if value is not None:  # max_files=1: a second file is refused by the parser
                texts[name] = value
        if into is None:
            try:
                data = await upload.read()
            finally:
                await upload.close()
    elif media_type.startswith("video/") or media_type in ("application/octet-stream", ""):
        if into is None:
            data = b"".join([chunk async for chunk in counted()])
        else:  # written in a thread: a disk that stalls must not stall the event loop (and
            # on the anyio cancellation the app's middleware delivers, the thread is waited for,
            # so the file is not closed under it)
            async for chunk in counted():
                await anyio.to_thread.run_sync(into.write, chunk)
    else:
        raise problems.unsupported(
            f"content type {content_type!r}: send multipart/form-data with a `file` field, or "
            f"a raw video/* body"
        )
    if into is not None:
        await anyio.to_thread.run_sync(into.flush)
        if into.seek(0, 2) == 0:  # (the multipart parser rewinds its files)
            raise problems.empty_body()
        return b"", texts
    if not data:
        raise problems.empty_body()
    return data, texts
