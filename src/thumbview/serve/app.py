"""The FastAPI app: a JSON API over a loaded model, and the one-page front end.

The model (and the SAE, when configured) loads once in `create_app` (see `engine`);
concurrent /predict requests are micro-batched into one model call. `security.Guard`
stands in front of every route (host allow-list, same-origin POSTs, streamed body cap,
form checks, security headers). Errors always come back as `{"error": "<in words>"}`:
validation, size caps, undecodable uploads and the library's own errors get their
message; anything unexpected gets a generic 500 while the traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from thumbview import __version__
from thumbview.frames.rank import PROGRESS_SHARES
from thumbview.predict.card import POOLED
from thumbview.progress import Progress
from thumbview.serve.engine import Batching, Engine, steady_heap
from thumbview.serve.jobs import FrameJobs, JobError
from thumbview.serve.security import BodyPace, Guard, Security
from thumbview.serve.uploads import (
    DecodedImage,
    Limits,
    UploadError,
    check_video,
    clean_context,
    clean_titles,
    decode_image,
    display_name,
    read_capped,
    save_capped,
    unique_names,
    video_suffix,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
COMPARE_DOC = (
    "Every thumbnail x title, best first, with the one verdict the CLI and the PNG render "
    "(`reliable`, `verdict`, `tied`, `rank_labels`: '=1' for each tied candidate; `tie`: no "
    "winner may be shown; `no_skill_note`: the model showed no skill at choosing between one "
    "channel's videos, which ties every candidate). `candidates[].p_best` and "
    "`by_image`/`by_title[].p_best` are the chances of being best when the model's typical "
    "errors are replayed. `chance_best_shown` false means every candidate is tied ('=1'): "
    "those numbers are then no ranking, and the page, the CLI and the PNG show '-' in their "
    "place; `chance_best_note` is the line to show under the ranking (what chance best "
    "means, or why it is not shown)."
)
SWAGGER_DIR = STATIC_DIR / "swagger-ui"  # swagger-ui-dist 5 (reads OpenAPI 3.1), shipped


# ----- request parsing -----------------------------------------------------------------------
def _images(uploads: list[UploadFile], limits: Limits) -> list[DecodedImage]:
    """Every upload read under the byte cap and decoded under the pixel cap, or an error."""
    names = unique_names([display_name(u.filename, i) for i, u in enumerate(uploads)])
    out = []
    for upload, name in zip(uploads, names, strict=True):
        data = read_capped(upload.file, limits.max_image_bytes, name)
        out.append(DecodedImage(name, decode_image(data, name, limits.max_image_pixels)))
    return out


def _count(uploads: list[UploadFile], low: int, high: int) -> None:
    if not low <= len(uploads) <= high:
        raise UploadError(f"send between {low} and {high} images, got {len(uploads)}")


# ----- errors --------------------------------------------------------------------------------
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    """'missing field image; top: Input should be ...' instead of pydantic's nested dicts."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        if err.get("type") == "missing":
            parts.append(f"missing field '{field}'")
        else:
            parts.append(f"{field}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    @app.exception_handler(JobError)
    async def _refused(request: Request, exc: UploadError | JobError):
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError):
        if type(exc).__module__.startswith("thumbview."):  # the library's worded errors
            return _error(422, str(exc))
        return await _crash(request, exc)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.error("error serving %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error while handling the request; the server log has details")


# ----- the app -------------------------------------------------------------------------------
def create_app(
    model_dir: str | Path,
    sae_dir: str | Path | None = None,
    study_dir: str | Path | None = None,
    limits: Limits = Limits(),
    security: Security = Security(),
    batching: Batching = Batching(),
    bot_dir: str | Path | None = None,
) -> FastAPI:
    """The app with its models loaded (errors in the folders raise here, before serving);
    frame jobs and the batcher stop when the server stops."""
    engine = Engine.load(
        Path(model_dir),
        Path(sae_dir) if sae_dir else None,
        Path(study_dir) if study_dir else None,
        batching,
        limits.compute_timeout_s,
    )
    jobs = FrameJobs(
        _frame_ranker(engine),
        limits.max_frame_jobs,
        limits.keep_finished_jobs,
        shares=PROGRESS_SHARES,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.close()
        engine.close()

    app = FastAPI(
        title="thumbview",
        version=__version__,
        summary="Predict the views of YouTube thumbnails and titles, compare and explain them.",
        lifespan=lifespan,
        docs_url=None,  # served below from local Swagger UI files: the page must work offline
    )
    app.state.engine, app.state.jobs, app.state.limits = engine, jobs, limits
    _install_error_handlers(app)
    body_cap = lambda path: limits.max_request_bytes(video=path.startswith("/frames"))  # noqa: E731
    pace = BodyPace(limits.body_grace_s, limits.min_body_bytes_per_s)
    app.add_middleware(Guard, security=security, body_cap=body_cap, pace=pace)
    _add_model_routes(app, engine, limits)
    _add_frames_routes(app, jobs, limits)
    _add_page_routes(app, engine)
    if bot_dir is not None:  # the thumbnailbot's "generate" panel at /bot (thumbview[bot])
        from thumbview.serve.bot import bot_router

        app.include_router(bot_router(bot_dir))
    return app


def _frame_ranker(engine: Engine) -> Callable[..., Any]:
    """Frame jobs score with the models the engine already holds: no second copy in memory."""

    def rank(video: Path, out_dir: Path, progress: Progress, **options: Any):
        from thumbview.frames.rank import rank_frames

        return rank_frames(video, engine.predictor, out_dir=out_dir, progress=progress, **options)

    return rank


ImageUpload = Annotated[UploadFile, File(description="A thumbnail (JPEG, PNG, WebP, GIF, BMP).")]
Title = Annotated[str, Form(description="The video title (optional).")]
# The video's context, as `predict --published/--subscribers/--channel-videos`: empty fields
# are the training data's medians, and the answer says what was assumed or ignored.
Published = Annotated[str, Form(description="Upload date YYYY-MM-DD (optional).")]
Subscribers = Annotated[float | None, Form(description="Channel subscribers (optional).")]
ChannelVideos = Annotated[
    float | None, Form(description="Channel size: how many videos it has (optional).")
]


def _add_model_routes(app: FastAPI, engine: Engine, limits: Limits) -> None:
    @app.post("/predict", summary="Predicted views for one thumbnail (and title)")
    def predict(
        image: ImageUpload,
        title: Title = "",
        published: Published = "",
        subscribers: Subscribers = None,
        channel_videos: ChannelVideos = None,
    ) -> dict[str, Any]:
        titles = clean_titles([title], limits)
        context = clean_context(published, subscribers, channel_videos)
        found = engine.predict(_images([image], limits)[0], titles[0] if titles else "", context)
        notes = engine.notes(POOLED, context)
        return {"prediction": found, "coverage": engine.coverage, **notes}

    @app.post("/compare", summary="Rank 2-6 thumbnails x 1-3 titles", description=COMPARE_DOC)
    def compare(
        images: Annotated[list[UploadFile], File(description="2 to 6 thumbnails.")],
        titles: Annotated[list[str] | None, Form(description="0 to 3 titles.")] = None,
        published: Published = "",
        subscribers: Subscribers = None,
        channel_videos: ChannelVideos = None,
    ) -> dict[str, Any]:
        _count(images, 2, limits.max_images)
        titles_ = clean_titles(titles, limits)
        context = clean_context(published, subscribers, channel_videos)
        return engine.compare(_images(images, limits), titles_, context)

    @app.post("/explain", summary="SAE features active in a thumbnail")
    def explain(
        image: ImageUpload,
        top: Annotated[int, Form(ge=1, le=32, description="How many features.")] = 8,
    ) -> dict[str, Any]:
        engine.require_study()  # refuse before decoding the upload
        return {"features": engine.explain(_images([image], limits)[0], top)}

    @app.get("/explain/examples/{latent}/{k}", summary="A study thumbnail for a feature")
    def example(latent: int, k: int) -> FileResponse:
        return FileResponse(engine.example(latent, k))


def _add_frames_routes(app: FastAPI, jobs: FrameJobs, limits: Limits) -> None:
    @app.post("/frames", status_code=202, summary="Start ranking a video's frames as thumbnails")
    def frames(
        video: Annotated[UploadFile, File(description="A video file (MP4, MOV, WebM, ...).")],
        title: Title = "",
        top: Annotated[int, Form(ge=1, le=12, description="How many frames to return.")] = 5,
        published: Published = "",
        subscribers: Subscribers = None,
        channel_videos: ChannelVideos = None,
    ) -> dict[str, Any]:
        titles = clean_titles([title], limits)
        context = clean_context(published, subscribers, channel_videos)
        job = jobs.new(title=titles[0] if titles else "", top=top, context=context)
        try:
            label = job.label = display_name(video.filename, 0)
            path = job.dir / f"upload{video_suffix(video.filename)}"
            save_capped(video.file, path, limits.max_video_bytes, label)
            check_video(path, label, limits.max_frame_pixels)
        except BaseException:
            jobs.discard(job)
            raise
        jobs.submit(job, path)
        return job.to_json_dict()

    @app.get("/frames/{job_id}", summary="Progress and result of a frames job")
    def frames_status(job_id: str) -> dict[str, Any]:
        return jobs.get(job_id).to_json_dict()

    @app.get("/frames/{job_id}/stills/{name:path}", summary="A still from a finished job")
    def still(job_id: str, name: str) -> FileResponse:
        return FileResponse(jobs.still(job_id, name))


def _add_page_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/health", summary="Liveness and what the server can do")
    def health() -> dict[str, Any]:
        return engine.health()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_docs_route(app)


def _add_docs_route(app: FastAPI) -> None:
    """OpenAPI docs at /docs from the Swagger UI 5 files shipped in static/swagger-ui: no
    CDN, and no inline script, so the page's Content-Security-Policy holds there too."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(SWAGGER_DIR / "docs.html")


def run(
    model_dir: str | Path,
    sae_dir: str | Path | None = None,
    study_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits = Limits(),
    security: Security = Security(),
    announce: Callable[[str], None] = print,
    batching: Batching = Batching(),
    bot_dir: str | Path | None = None,
) -> None:
    """Load the models, then say where the page is, then serve (blocks until interrupted;
    stops within `limits.shutdown_grace_s` of SIGTERM / Ctrl+C, see `serve.server`).

    Loopback only by default; the name the server is bound to is added to the allowed hosts.
    """
    from thumbview.serve.server import serve

    steady_heap()  # before the models load, so their buffers follow it too
    app = create_app(
        model_dir, sae_dir, study_dir, limits, security.with_host(host), batching, bot_dir
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the app", host)
    shown = f"[{host}]" if ":" in host else host
    announce(f"thumbview on http://{shown}:{port}  (Ctrl+C to stop)")
    serve(app, host, port, limits.header_timeout_s, limits.shutdown_grace_s)
