"""The Gradio UI and the HTTP surface of the SDXL multi-LoRA server. Start it with ``python app.py``.

What this is for: wiring. ``build_demo(engine, catalogue)`` builds the Blocks (catalogue browser, prompt,
settings, result) and the two named ``gradio_client`` endpoints, ``/generate`` and ``/catalogue``;
``build_app`` puts them on a FastAPI app next to ``POST /`` (the Hub inference API's text-to-image shape)
and ``GET /metrics`` (Prometheus); ``main()`` reads the configuration once, builds the engine and the
catalogue, and serves. Only this file translates errors for users: the engine's and the catalogue's typed
errors become ``gr.Error`` / HTTP 4xx-5xx with their message; anything else is logged with its traceback
and shown as a short generic message.

What it is not for: generation, scheduling, adapter checks (``lora_engine``), or discovery and search
(``catalogue``). Importing this module is cheap: gradio, torch and the model load only when ``main()`` or
``build_demo()`` run.
"""

# No ``from __future__ import annotations`` here: Gradio and FastAPI read handler annotations at runtime
# (``gr.SelectData``, ``Request``) and must see real types, not strings.
import argparse
import asyncio
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import ClassVar

from catalogue import caption, describe_entry, with_trigger_words
from lora_engine import (
    ConfigError,
    EngineConfig,
    EngineError,
    GenerationRequest,
    ImageService,
    InlineImageService,
    Kind,
    QueueFull,
    Settings,
    setting,
)
from lora_engine.serving import ClusterConfig

logger = logging.getLogger("app")

__all__ = ["build_app", "build_demo", "main"]

#: Entries per gallery page ("Load more" appends the next page).
PAGE_SIZE = 24
#: Small adjustments: demo images are 64 px, so show them scaled up with crisp pixels; keep thumbnails small.
CSS = """
#result img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#catalogue .thumbnail-item { max-width: 180px; }
"""
#: Shown to users for errors that are bugs; the traceback goes to the log instead.
GENERIC_ERROR = "Something went wrong on the server (it has been logged). Please try again."
HUB_WEB = "https://huggingface.co"


@dataclass(frozen=True)
class AppConfig(Settings):
    """The app's own settings: where it listens, its log, the catalogue it shows, ZeroGPU. Build with ``from_args``.

    Declared here, with the one settings machinery (``lora_engine.Settings``), rather than in a package: these
    settings belong to this process's wiring, and neither ``lora_engine`` nor ``catalogue`` reads them.
    """

    settings_title: ClassVar[str] = "app"

    # Gradio's own variable names, so that Spaces and Gradio users set the address as they always have.
    server_name: str = setting(
        "127.0.0.1", env="GRADIO_SERVER_NAME", help="the address to listen on (0.0.0.0: all interfaces)"
    )
    server_port: int = setting(
        7860, env="GRADIO_SERVER_PORT", kind=Kind.INT, at_least=0, at_most=65535, help="the port to listen on"
    )
    # The listing is refreshed in the background, so searches never wait on the Hub; hourly spares its rate limits.
    catalogue_refresh_s: float = setting(
        3600.0,
        env="CATALOGUE_REFRESH_S",
        kind=Kind.SECONDS,
        help="seconds between background Hub catalogue refreshes",
    )
    # Air-gapped hosts, or hosts serving only their own LoRAs, list the local folders alone.
    no_hub_catalogue: bool = setting(False, env="CATALOGUE_NO_HUB", kind=Kind.BOOL, help="list local LoRAs only")
    # The level names logging knows; anything else would fail inside logging, later and less clearly.
    log_level: str = setting(
        "INFO", env="LOG_LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), help="the log level"
    )
    # ZeroGPU Spaces set it: a GPU is then lent per call, so each request runs inside a spaces.GPU call.
    zero_gpu: bool = setting(
        False,
        env="SPACES_ZERO_GPU",
        kind=Kind.BOOL,
        help="run each request inside a spaces.GPU call (ZeroGPU Spaces set it)",
    )


def _user_error(exc: BaseException):
    """The ``gr.Error`` a user sees for ``exc``: the message of known errors, a generic one for bugs."""
    import gradio as gr

    if isinstance(exc, EngineError):
        return gr.Error(str(exc), title="Request refused" if exc.client_error else "Server busy or Hub unavailable")
    logger.error("unexpected error in a handler", exc_info=exc)
    return gr.Error(GENERIC_ERROR)


def banner_text(engine, catalogue) -> str:
    """The banners above the UI: demo model, stale catalogue."""
    parts = []
    if engine.info.is_demo:
        parts.append(
            "**Demo model.** No GPU or model was configured, so this serves the built-in tiny SDXL-architecture "
            'model, trained on simple 64 px scenes: ask for "a {red|green|blue|yellow} {circle|square|triangle} '
            'on a {white|black} background" and pick a LoRA to see its effect. '
            "Set `MODEL_ID` on a CUDA machine to serve real SDXL."
        )
    status = catalogue.status()
    if status.state == "snapshot":
        age = status.snapshot_age_s or 0.0
        parts.append(
            f"**Catalogue snapshot from {_age(age)} ago**: the Hub could not be reached ({status.last_error}). "
            "Listing from the last saved copy."
        )
    return "\n\n".join(f"> {p}" for p in parts)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


class RequestWaiter:
    """One submitted request, polled from the handler's thread (progress is never reported from the worker).

    ``cancel()`` drops the request if it has not started; handlers call it when their caller goes away.
    """

    def __init__(self, engine, request: GenerationRequest):
        self._latest: list[tuple[int, int]] = []
        self._engine = engine
        self.future = engine.submit(request, on_progress=lambda step, total: self._latest.append((step, total)))

    def poll(self, timeout: float):
        """The result, or None if it is not ready within ``timeout`` seconds; raises the request's error."""
        try:
            return self.future.result(timeout=timeout)
        except TimeoutError:
            return None

    @property
    def position(self) -> int | None:
        return self._engine.position(self.future)

    @property
    def step(self) -> tuple[int, int] | None:
        return self._latest[-1] if self._latest else None

    def cancel(self) -> None:
        self.future.cancel()


def zero_gpu_decorator(enabled: bool):
    """``spaces.GPU`` when running on a ZeroGPU Space (``enabled``: ``AppConfig.zero_gpu``) and ``spaces`` is
    importable, else None."""
    if not enabled:
        return None
    try:
        import spaces
    except ImportError:
        logger.warning("SPACES_ZERO_GPU is set but the `spaces` package is missing; running without it")
        return None
    return spaces.GPU(duration=120)


def _inline_call(engine: ImageService, gpu_call):
    """``engine.generate_inline`` wrapped by ``gpu_call`` (such as ``spaces.GPU``), or None without a ``gpu_call``.

    Raises:
        TypeError: a ``gpu_call`` for an engine whose pipeline is not in this process (not an
            ``InlineImageService``, such as a Ray Serve ``ClusterClient``).
    """
    if gpu_call is None:
        return None
    if not isinstance(engine, InlineImageService):
        raise TypeError(
            "`gpu_call` needs an engine that runs requests in this process (an InlineImageService) but the engine "
            f"is a {type(engine).__name__}"
        )
    return gpu_call(engine.generate_inline)


def build_demo(engine: ImageService, catalogue, *, hub_web: str = HUB_WEB, gpu_call=None):
    """Build the Gradio Blocks for ``engine`` and ``catalogue``; launches nothing.

    Args:
        engine (`lora_engine.ImageService`): generates the images (an ``Engine``, or a Ray Serve ``ClusterClient``).
        catalogue (`catalogue.Catalogue`): lists and searches LoRAs.
        hub_web (`str`, *optional*): where "Hub page" links point.
        gpu_call (`Callable`, *optional*): a decorator such as ``spaces.GPU(duration=...)``. When given, each
            request runs inside a call wrapped by it (``engine.generate_inline``, so ``engine`` must be an
            ``InlineImageService``), which restores the base weights before returning, since on ZeroGPU nothing
            done inside such a call outlives it.

    Returns:
        `gr.Blocks`: with the named endpoints ``/generate`` and ``/catalogue``.
    """
    import gradio as gr

    # The engine's limits: the sliders' ranges, and defaults that fit its model (1024 px/25 steps SDXL, tiny demo).
    limits = engine.limits
    inline = _inline_call(engine, gpu_call)

    def gallery_items(entries):
        placeholder = str(catalogue.placeholder_thumbnail())
        items = []
        for e in entries:
            thumb = catalogue.thumbnail_file(e.repo_id)
            items.append((str(thumb) if thumb is not None else placeholder, caption(e)))
        return items

    def first_page(query: str, sort: str):
        try:
            page = catalogue.search(query or "", sort=sort, limit=PAGE_SIZE, offset=0)
        except ValueError as e:  # catalogue.InvalidSearch is a ValueError
            raise gr.Error(str(e)) from None
        ids = [e.repo_id for e in page.entries]
        return gallery_items(page.entries), ids, gr.update(visible=page.total > len(ids)), _count_text(page)

    def more_page(query: str, sort: str, shown: list[str]):
        page = catalogue.search(query or "", sort=sort, limit=PAGE_SIZE, offset=len(shown))
        entries = [catalogue.get(r) for r in shown] + list(page.entries)
        entries = [e for e in entries if e is not None]
        ids = [e.repo_id for e in entries]
        return gallery_items(entries), ids, gr.update(visible=page.total > len(ids)), _count_text(page, len(ids))

    def _count_text(page, shown: int | None = None):
        shown = len(page.entries) if shown is None else shown
        return f"{page.total} LoRAs match; showing {shown}."

    def on_select(shown: list[str], prompt: str, previous: str, evt: gr.SelectData):
        repo_id = shown[evt.index] if 0 <= evt.index < len(shown) else ""
        entry = catalogue.get(repo_id)
        if entry is None:
            return gr.update(), prompt, "No LoRA selected: the base model.", previous
        old = catalogue.get(previous)
        new_prompt = with_trigger_words(prompt, entry.trigger_words, old.trigger_words if old else None)
        return entry.repo_id, new_prompt, describe_entry(entry, hub_web), entry.repo_id

    def check_lora(repo_id: str, prompt: str, previous: str):
        repo_id = (repo_id or "").strip()
        if not repo_id:
            return "No LoRA selected: the base model.", prompt, ""
        try:
            key = engine.check_adapter(repo_id)
        except EngineError as e:
            raise _user_error(e) from None
        entry = catalogue.get(repo_id)
        old = catalogue.get(previous)
        if entry is not None:
            new_prompt = with_trigger_words(prompt, entry.trigger_words, old.trigger_words if old else None)
            return describe_entry(entry, hub_web), new_prompt, repo_id
        text = (
            f"### {repo_id}\n\nUsable with this base model: weight file `{key.weight_name}` at `{key.revision[:12]}`."
        )
        return text, prompt, repo_id

    def generate(
        prompt: str,
        negative_prompt: str = "",
        lora: str = "",
        lora_scale: float = 1.0,
        num_inference_steps: int = limits.default_steps,
        guidance_scale: float = limits.default_guidance,
        width: int = limits.default_side,
        height: int = limits.default_side,
        seed: int = -1,
        progress=gr.Progress(),  # noqa: B008 (Gradio's documented way to receive a progress tracker)
    ):
        """Generate one image; returns the PNG and a dict of details (seed, lora, timings)."""
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt if negative_prompt is not None else "",
            lora=(lora or "").strip(),
            lora_scale=lora_scale,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            seed=-1 if seed is None else seed,
        )

        try:
            if inline is not None:
                result = inline(request)
            else:
                waiter = RequestWaiter(engine, request)
                try:
                    # A generator, so that when the caller cancels or leaves, Gradio stops iterating and closes
                    # it at a yield: the finally below then drops the request if it has not started yet.
                    while (result := waiter.poll(0.25)) is None:
                        if waiter.step is not None:
                            progress(waiter.step, desc="Generating", unit="steps")
                        elif waiter.position is not None:
                            eta = engine.estimate_s(waiter.future)
                            eta_text = f", about {eta:.0f} s" if eta is not None else ""
                            progress(0.0, desc=f"Queued: {waiter.position} ahead{eta_text}")
                        yield gr.skip(), gr.skip()
                finally:
                    waiter.cancel()
        except EngineError as e:
            raise _user_error(e) from None
        except Exception as e:  # a bug: _user_error logs the traceback and shows a generic message
            raise _user_error(e) from None
        yield result.image, result.details_dict()

    def catalogue_endpoint(query: str = "", sort: str = "downloads", limit: int = 100, offset: int = 0) -> list[dict]:
        """Search the LoRA catalogue; returns entries with repo_id, title, trigger_words, thumbnail, downloads,
        likes and weight_name."""
        try:
            page = catalogue.search(query or "", sort=sort, limit=int(limit), offset=int(offset))
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return [_public_thumbnail(e.as_api_dict()) for e in page.entries]

    with gr.Blocks(title="SDXL LoRA server") as demo:
        gr.Markdown("# SDXL LoRA server\nBrowse LoRAs for the loaded base model, pick one, and generate.")
        banner = gr.Markdown(banner_text(engine, catalogue), elem_id="banner")
        selected_id = gr.State("")
        shown = gr.State([])
        with gr.Row():
            with gr.Column(scale=5):
                with gr.Row():
                    query = gr.Textbox(
                        label="Search LoRAs", placeholder="pixel art, anime, ...", elem_id="search", scale=3
                    )
                    sort = gr.Dropdown(["downloads", "likes", "recent"], value="downloads", label="Sort by", scale=1)
                count = gr.Markdown(elem_id="count")
                gallery = gr.Gallery(
                    label="Catalogue",
                    columns=4,
                    height=520,
                    allow_preview=False,
                    object_fit="contain",
                    elem_id="catalogue",
                )
                more = gr.Button("Load more", visible=False)
            with gr.Column(scale=4):
                selected = gr.Markdown("No LoRA selected: the base model.", elem_id="selected")
                with gr.Row():
                    lora = gr.Textbox(
                        "",
                        label="LoRA (Hub repo id, empty for the base model)",
                        elem_id="lora",
                        scale=3,
                        placeholder="owner/name",
                    )
                    check = gr.Button("Check LoRA", scale=1)
                example = "a red circle on a white background" if engine.info.is_demo else "a photo of ..."
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt", placeholder=example)
                negative = gr.Textbox("", label="Negative prompt", elem_id="negative")
                with gr.Accordion("Advanced settings", open=False):
                    steps = gr.Slider(1, limits.max_steps, value=limits.default_steps, step=1, label="Steps")
                    guidance = gr.Slider(0, 30, value=limits.default_guidance, step=0.5, label="Guidance scale")
                    with gr.Row():
                        side = {"minimum": limits.min_side, "maximum": limits.max_side, "value": limits.default_side}
                        width = gr.Slider(**side, step=8, label="Width")
                        height = gr.Slider(**side, step=8, label="Height")
                    seed = gr.Number(-1, precision=0, label="Seed (-1: random)")
                    scale = gr.Slider(-4, 4, value=1.0, step=0.05, label="LoRA scale")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                image = gr.Image(
                    label="Result", format="png", type="pil", elem_id="result", interactive=False, height=384
                )
                details = gr.JSON(label="Details", elem_id="details")

        listing = [gallery, shown, more, count]
        gr.on([demo.load, query.submit, sort.change], first_page, [query, sort], listing, api_visibility="private")
        more.click(more_page, [query, sort, shown], listing, api_visibility="private")
        demo.load(lambda: banner_text(engine, catalogue), None, banner, api_visibility="private")
        gallery.select(
            on_select, [shown, prompt, selected_id], [lora, prompt, selected, selected_id], api_visibility="private"
        )
        gr.on(
            [check.click, lora.submit],
            check_lora,
            [lora, prompt, selected_id],
            [selected, prompt, selected_id],
            api_visibility="private",
        )
        gr.on(
            [run.click, prompt.submit],
            generate,
            [prompt, negative, lora, scale, steps, guidance, width, height, seed],
            [image, details],
            api_name="generate",
            # Hand the engine up to a full queue at once, so it can group requests by adapter; Gradio's own
            # queue (with its position display) holds the rest.
            concurrency_limit=engine.config.max_queue,
        )
        gr.api(catalogue_endpoint, api_name="catalogue", queue=False)
    return demo


def build_app(engine: ImageService, catalogue, demo=None, *, max_gradio_queue: int | None = None, gpu_call=None):
    """A FastAPI app with ``POST /`` and ``GET /metrics``, and the Gradio UI mounted at ``/``."""
    import gradio as gr
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST

    demo = demo if demo is not None else build_demo(engine, catalogue, gpu_call=gpu_call)
    inline = _inline_call(engine, gpu_call)
    demo.queue(max_size=max_gradio_queue or 4 * engine.config.max_queue)
    app = FastAPI(title="SDXL LoRA server", docs_url=None, redoc_url=None)

    def error(status: int, message: str, kind: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message, "error_type": kind}, status_code=status, headers=headers)

    @app.post("/")
    async def text_to_image(http: Request):
        """The Hub inference API's text-to-image shape: JSON in, PNG out; the LoRA in a ``lora`` header."""
        try:
            body = json.loads(await http.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(400, f"the body must be JSON ({e})", "invalid_json")
        try:
            request = request_from_inference_json(body, http.headers.get("lora", ""))
        except ValueError as e:
            return error(400, str(e), "invalid_request")
        if inline is not None:
            try:
                result = await asyncio.to_thread(inline, request)
            except EngineError as e:
                return error(400 if e.client_error else 502, str(e), e.kind)
            return await _png_response(result)
        try:
            future = engine.submit(request)
        except QueueFull as e:
            return error(503, str(e), e.kind, **{"Retry-After": "5"})
        except EngineError as e:
            return error(400, str(e), e.kind)
        wrapped = asyncio.wrap_future(future)
        while not wrapped.done():
            await asyncio.wait({wrapped}, timeout=0.5)
            if not wrapped.done() and await http.is_disconnected():
                future.cancel()  # the caller left: drop the request if it has not started
                return error(499, "client closed the request", "cancelled")
        try:
            result = wrapped.result()
        except QueueFull as e:  # a Ray Serve application refuses through the future (lora_engine.serving.cluster)
            return error(503, str(e), e.kind, **{"Retry-After": "5"})
        except EngineError as e:
            return error(400 if e.client_error else 502, str(e), e.kind)
        except Exception:  # a bug: logged with its traceback, and a short message to the caller
            logger.exception("POST / failed")
            return error(500, GENERIC_ERROR, "internal")
        return await _png_response(result)

    async def _png_response(result):
        png = await asyncio.to_thread(_png_bytes, result.image)
        headers = {
            "X-Seed": str(result.seed),
            "X-Lora": result.lora,
            "X-Timings": json.dumps(result.timings.to_dict(), separators=(",", ":")),
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/metrics")
    def metrics():
        status = catalogue.status()
        lines = [
            "# HELP lora_catalogue_entries Entries the catalogue serves.",
            "# TYPE lora_catalogue_entries gauge",
            f"lora_catalogue_entries {status.entries}",
            "# HELP lora_catalogue_live 1 when the Hub listing is fresh, 0 when serving a snapshot or local only.",
            "# TYPE lora_catalogue_live gauge",
            f"lora_catalogue_live {1 if status.state == 'live' else 0}",
        ]
        if status.snapshot_age_s is not None:
            lines += [
                "# HELP lora_catalogue_age_seconds Age of the Hub listing being served.",
                "# TYPE lora_catalogue_age_seconds gauge",
                f"lora_catalogue_age_seconds {status.snapshot_age_s:.3f}",
            ]
        body = engine.metrics_text() + ("\n".join(lines) + "\n").encode()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # Thumbnails live in the local LoRA folders and the catalogue cache; let Gradio serve files from there.
    allowed = [*engine.info.local_lora_dirs, str(catalogue.cache_dir)]
    return gr.mount_gradio_app(app, demo, path="/", allowed_paths=allowed, css=CSS)


_INFERENCE_PARAMETERS = {
    "negative_prompt",
    "lora_scale",
    "num_inference_steps",
    "guidance_scale",
    "width",
    "height",
    "seed",
    "lora",
}


def request_from_inference_json(body, lora_header: str = "") -> GenerationRequest:
    """``{"inputs": prompt, "parameters": {...}}`` -> ``GenerationRequest``; the range checks come later.

    Raises:
        ValueError: the shape is wrong (naming the field), or a parameter is unknown.
    """
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object with `inputs`, not {type(body).__name__}")
    if "inputs" not in body:
        raise ValueError("the body must have `inputs` (the prompt)")
    if not isinstance(body["inputs"], str):
        raise ValueError(f"`inputs` must be a string (the prompt) but is {body['inputs']!r}")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ValueError(f"`parameters` must be an object but is {params!r}")
    params = dict(params)
    size = params.pop("target_size", None)  # the inference API's {"width", "height"} form
    if isinstance(size, dict):
        params.setdefault("width", size.get("width"))
        params.setdefault("height", size.get("height"))
    unknown = sorted(set(params) - _INFERENCE_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {sorted(_INFERENCE_PARAMETERS)}")
    lora = params.pop("lora", None) or lora_header or ""
    return GenerationRequest(prompt=body["inputs"], lora=lora.strip(), **params)


def _public_thumbnail(item: dict) -> dict:
    """Local thumbnail files become URLs this server serves (Gradio's file route); Hub URLs stay as they are."""
    thumb = item.get("thumbnail")
    if thumb and not thumb.startswith(("http://", "https://")):
        item = {**item, "thumbnail": f"/gradio_api/file={thumb}"}
    return item


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _build_catalogue(engine, app_config: AppConfig):
    from huggingface_hub import constants as hub_constants

    from catalogue import Catalogue, HubSource, LocalSource

    # HF_HUB_OFFLINE and HF_ENDPOINT are huggingface_hub's: read as it parsed them, not parsed again here.
    offline = hub_constants.HF_HUB_OFFLINE
    # The demo model's LoRAs are local; the public Hub has none for it, so only list another Hub (HF_ENDPOINT).
    pointless = engine.info.is_demo and hub_constants.ENDPOINT.rstrip("/") == HUB_WEB
    use_hub = not (offline or pointless or app_config.no_hub_catalogue)
    hub = HubSource(timeout_s=engine.config.hub_timeout_s) if use_hub else None
    local = [LocalSource(d) for d in engine.info.local_lora_dirs]
    return Catalogue(
        base_model=engine.info.base_model_id,
        local=local,
        hub=hub,
        refresh_interval_s=app_config.catalogue_refresh_s,
    )


def main(argv: list[str] | None = None) -> None:
    """Read the configuration, build the engine and catalogue, serve the UI and API."""
    parser = argparse.ArgumentParser(
        description="SDXL multi-LoRA server. Each setting is read once at start from its environment variable; "
        "its flag overrides it. huggingface_hub's own variables (HF_ENDPOINT, HF_HOME, HF_TOKEN, HF_HUB_OFFLINE) "
        "apply as huggingface_hub defines them."
    )
    for settings in (AppConfig, EngineConfig, ClusterConfig):
        settings.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        app_config = AppConfig.from_args(args)
        config = EngineConfig.from_args(args)
        cluster = ClusterConfig.from_args(args, engine=config)
    except ConfigError as e:
        parser.error(str(e))  # the usage and the message, exit status 2: a bad setting is the caller's to fix
    logging.basicConfig(level=app_config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from lora_engine import Engine

    started = time.monotonic()
    gpu_call = None
    if cluster.enabled:
        # The same UI and HTTP surface in front of a Ray Serve application; ray is imported only here.
        from lora_engine.serving import start_cluster

        engine = start_cluster(cluster)
    else:
        engine = Engine.from_config(config)
        gpu_call = zero_gpu_decorator(app_config.zero_gpu)
    logger.info("engine ready in %.1f s: %s", time.monotonic() - started, engine.info)
    catalogue = _build_catalogue(engine, app_config)
    catalogue.start()
    app = build_app(engine, catalogue, gpu_call=gpu_call)
    logger.info("serving on http://%s:%d", app_config.server_name, app_config.server_port)
    try:
        uvicorn.run(app, host=app_config.server_name, port=app_config.server_port, log_level="warning")
    finally:
        catalogue.stop()
        engine.close()


if __name__ == "__main__":
    main()
