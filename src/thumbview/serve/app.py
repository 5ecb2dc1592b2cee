"""The FastAPI app: a JSON API over a loaded model, and the one-page front end.

The model (and the SAE, when configured) loads once in `create_app`; every request that
uses it takes a lock, so concurrent requests queue instead of multiplying memory. Errors
always come back as `{"error": "<what went wrong, in words>"}`: validation, size caps,
undecodable uploads and the library's own errors get their message; anything unexpected
gets a generic 500 while the traceback goes to the server log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from thumbview import __version__
from thumbview.predict.workflow import load_model, predict_loaded
from thumbview.serve.jobs import FrameJobs, JobError
from thumbview.serve.uploads import (
    DecodedImage,
    Limits,
    UploadError,
    check_video,
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
STUDY_FILES = ("all_features.csv", "features.csv")
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


class Engine:
    """The loaded models behind one lock: the only place requests touch them."""

    def __init__(self, model_dir: Path, sae_dir: Path | None, study_dir: Path | None):
        self.model_dir = Path(model_dir)
        self.model, self.encoders = load_model(self.model_dir)
        self.sae = self.sae_encoder = self.study = self.sae_dir = None
        self.lock = threading.Lock()
        study_dir = study_dir or _find_study(sae_dir)
        if sae_dir is not None and study_dir is not None:
            from thumbview.sae.analyze import load_sae_encoder
            from thumbview.sae.explain import load_study

            self.sae, self.sae_encoder = load_sae_encoder(sae_dir)
            self.study, self.sae_dir = load_study(study_dir), Path(sae_dir)
        elif sae_dir is not None or study_dir is not None:
            log.warning("explanations need both an SAE and its study; /explain is disabled")

    def predict(self, images: list[DecodedImage], titles: list[str]) -> list[dict[str, Any]]:
        with self.lock:
            found = predict_loaded(
                self.model,
                self.encoders,
                [d.image for d in images],
                [d.name for d in images],
                titles or [""],
            )
        return [asdict(p) for p in found]

    def compare(self, images: list[DecodedImage], titles: list[str]) -> dict[str, Any]:
        from thumbview.compare import compare

        with self.lock:
            result = compare(
                self.model,
                self.encoders,
                [d.image for d in images],
                [d.name for d in images],
                titles or [""],
                study=self.study,
                sae_dir=self.sae_dir,
                coverage=self.model.config.coverage,
                sae_models=(self.sae, self.sae_encoder) if self.study is not None else None,
            )
        # `images` in upload order lets the page match candidates to its previews.
        return {"images": [d.name for d in images], **result.to_json_dict()}

    def require_study(self) -> None:
        if self.study is None:
            raise UploadError(
                "explanations are not available: start the server with an SAE and its study "
                "(thumbview serve --sae DIR)",
                409,
            )

    def explain(self, image: DecodedImage, top: int) -> list[dict[str, Any]]:
        self.require_study()
        from thumbview.sae.analyze import encode_sparse
        from thumbview.sae.explain import explain_latents

        with self.lock:
            acts = self.sae_encoder.encode([image.image])  # (1, d_in)
            z = encode_sparse(self.sae, acts).toarray()[0]  # (d_sae,)
        return [_feature_json(f) for f in explain_latents(z, self.study, top)]

    def example(self, latent: int, k: int) -> Path:
        """A study thumbnail for a latent: looked up in the study, not built from the URL."""
        names = self.study.examples.get(latent, ()) if self.study else ()
        root = self.study.dataset_root if self.study else None
        path = root / names[k] if root is not None and 0 <= k < len(names) else None
        if path is None or path.suffix.lower() not in EXAMPLE_SUFFIXES or not path.is_file():
            raise UploadError("no such example thumbnail", 404)
        return path

    def health(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "status": "ok",
            "version": __version__,
            "model": self.model_dir.name,
            "encoders": list(cfg.encoders),
            "target": cfg.target,
            "coverage": cfg.coverage,
            "explain": self.study is not None,
        }


def _find_study(sae_dir: Path | None) -> Path | None:
    """A study saved inside the SAE folder (or its `study/`), when none is named."""
    if sae_dir is None:
        return None
    for folder in (Path(sae_dir), Path(sae_dir) / "study"):
        if any((folder / name).is_file() for name in STUDY_FILES):
            return folder
    return None


def _feature_json(f) -> dict[str, Any]:
    return {
        "latent": f.latent,
        "activation": f.activation,
        "ratio": f.ratio,
        "q": f.q,
        "group_views": f.group_views,
        "examples": [f"/explain/examples/{f.latent}/{i}" for i in range(len(f.examples))],
    }


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


def _install_body_cap(app: FastAPI, limits: Limits) -> None:
    """Refuse an oversized body from its Content-Length, before a byte of it is parsed."""

    @app.middleware("http")
    async def _cap(request: Request, call_next: Callable):
        size = request.headers.get("content-length")
        cap = limits.max_request_bytes(video=request.url.path.startswith("/frames"))
        if size is not None and size.isdigit() and int(size) > cap:
            return _error(413, f"request body is larger than the {cap / 2**20:.0f} MB limit")
        return await call_next(request)


# ----- the app -------------------------------------------------------------------------------
def create_app(
    model_dir: str | Path,
    sae_dir: str | Path | None = None,
    study_dir: str | Path | None = None,
    limits: Limits = Limits(),
    bot_dir: str | Path | None = None,
) -> FastAPI:
    """The app with its model loaded; frame jobs are cleaned up when the server stops."""
    engine = Engine(
        Path(model_dir),
        Path(sae_dir) if sae_dir else None,
        Path(study_dir) if study_dir else None,
    )
    jobs = FrameJobs(_frame_ranker(engine), limits.max_frame_jobs, limits.keep_finished_jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.close()

    app = FastAPI(
        title="thumbview",
        version=__version__,
        summary="Predict the views of YouTube thumbnails and titles, compare and explain them.",
        lifespan=lifespan,
        docs_url=None,  # served below from local Swagger UI files: the page must work offline
    )
    app.state.engine, app.state.jobs, app.state.limits = engine, jobs, limits
    _install_error_handlers(app)
    _install_body_cap(app, limits)
    _add_model_routes(app, engine, limits)
    _add_frames_routes(app, jobs, limits)
    _add_page_routes(app, engine)
    if bot_dir is not None:  # the thumbnailbot's "generate" panel at /bot (thumbview[bot])
        from thumbview.bot.web import bot_router

        app.include_router(bot_router(bot_dir))
    return app


def _frame_ranker(engine: Engine) -> Callable[..., Any]:
    """Frame jobs score with the models the engine already holds: no second copy in memory."""

    def rank(video: Path, out_dir: Path, progress: Callable[[float], None], **options: Any):
        from thumbview.frames.rank import rank_frames

        loaded = (engine.model, engine.encoders)
        return rank_frames(video, loaded, out_dir=out_dir, progress=progress, **options)

    return rank


ImageUpload = Annotated[UploadFile, File(description="A thumbnail (JPEG, PNG, WebP, GIF, BMP).")]
Title = Annotated[str, Form(description="The video title (optional).")]


def _add_model_routes(app: FastAPI, engine: Engine, limits: Limits) -> None:
    @app.post("/predict", summary="Predicted views for one thumbnail (and title)")
    def predict(image: ImageUpload, title: Title = "") -> dict[str, Any]:
        titles = clean_titles([title], limits)
        found = engine.predict(_images([image], limits), titles)
        return {"prediction": found[0], "coverage": engine.model.config.coverage}

    @app.post("/compare", summary="Rank 2-6 thumbnails x 1-3 titles")
    def compare(
        images: Annotated[list[UploadFile], File(description="2 to 6 thumbnails.")],
        titles: Annotated[list[str] | None, Form(description="0 to 3 titles.")] = None,
    ) -> dict[str, Any]:
        _count(images, 2, limits.max_images)
        titles_ = clean_titles(titles, limits)
        return engine.compare(_images(images, limits), titles_)

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
    ) -> dict[str, Any]:
        titles = clean_titles([title], limits)
        job = jobs.new(title=titles[0] if titles else "", top=top)
        try:
            label = job.label = display_name(video.filename, 0)
            path = job.dir / f"upload{video_suffix(video.filename)}"
            save_capped(video.file, path, limits.max_video_bytes, label)
            check_video(path, label)
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
    """OpenAPI docs at /docs with Swagger UI from the swagger-ui-bundle package, not a CDN."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount(
        "/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets"
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="thumbview API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def run(
    model_dir: str | Path,
    sae_dir: str | Path | None = None,
    study_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits = Limits(),
    bot_dir: str | Path | None = None,
) -> None:
    """Serve the app with uvicorn (blocks until interrupted). Loopback only by default."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the app", host)
    uvicorn.run(create_app(model_dir, sae_dir, study_dir, limits, bot_dir), host=host, port=port)
