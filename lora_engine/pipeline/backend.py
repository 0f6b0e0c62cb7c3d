"""The pipeline side of the engine: load the SDXL pipeline, swap adapters in its weights, run it.

What this is for: everything that touches torch/diffusers objects of the live pipeline, behind a small
:class:`DiffusersBackend` that the engine's single worker thread calls. It resolves ``device``/``dtype``
("auto"), loads ``MODEL_ID`` (or builds the offline demo model), touches memory-mapped weights once so the
first swap pays no copy-on-write, keeps originals, and runs the pipeline with a per-request CPU generator
(so the same seed gives the same pixels on any device and whatever ran before). The engine uses it through its
methods only (``prepare``, ``swap``, ``active``, ``originals_bytes``, ``verify_base``, ``digest``, ``generate``);
the :class:`~lora_engine.pipeline.swap.Swapper` inside is this module's business.

What it is not for: queueing or threads (``engine``), caching decisions (``adapters.store``), fetching
(``adapters.fetch``), parsing (``adapters.parse``). Nothing here is safe to call from two threads at once; the
engine guarantees one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ..adapters.parse import LayerIndex, ParsedAdapter
from ..backend_info import BackendInfo
from ..config import SDXL_BASE_MODEL_ID, EngineConfig
from .cpu_kernel import kernel_for
from .swap import ActiveAdapter, Swapper, SwapStats, weights_digest

logger = logging.getLogger(__name__)

__all__ = ["ActiveAdapter", "BackendInfo", "DiffusersBackend", "resolve_device", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA if available, then Apple MPS, else the CPU; anything else as torch reads it."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"``: float16 on accelerators (SDXL's usual serving dtype), float32 on the CPU."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    return _DTYPES[name]


class DiffusersBackend:
    """Owns one SDXL pipeline; see the module docstring.

    Args:
        pipeline: a ``StableDiffusionXLPipeline`` already on its device and dtype.
        info (`BackendInfo`): what it is.
        originals_device (`str`): ``"same"``, ``"cpu"`` or ``"auto"`` (see ``EngineConfig``).
        eager_originals (`bool`): keep originals of the usual LoRA targets now, not on first touch.
        swap_kernel (`str`): ``"auto"`` (the one-pass AMX kernel for bf16 weights on CPUs that have AMX) or
            ``"torch"`` (see ``EngineConfig.swap_kernel``).
    """

    def __init__(
        self,
        pipeline,
        info: BackendInfo,
        *,
        originals_device: str = "auto",
        eager_originals: bool = True,
        swap_kernel: str = "auto",
    ):
        self.pipeline = pipeline
        self.info = info
        self.device = pipeline.device
        self.dtype = pipeline.unet.dtype
        pipeline.set_progress_bar_config(disable=True)
        _own_weights(pipeline)
        self.index = LayerIndex.from_pipeline(pipeline)
        if originals_device == "auto":
            originals_device = "same"
        kernel = kernel_for(swap_kernel, self.device, self.dtype)
        if kernel is not None and not kernel.available:
            logger.info("one-pass swap kernel not used (torch.addmm instead): %s", kernel.status.reason)
        self.swapper = Swapper(pipeline, self.index, originals_device=originals_device, kernel=kernel)
        if eager_originals:
            self.swapper.keep_originals(k for k in self.index.layers if _usual_target(*k))
        self.base_digest = weights_digest(pipeline)
        logger.info(
            "pipeline ready: %s on %s/%s, base digest %s, originals %.1f MB, swap kernel %s",
            info.model_id,
            self.device,
            self.dtype,
            self.base_digest,
            self.swapper.originals_bytes / 1e6,
            self.swapper.kernel_name,
        )

    @classmethod
    def from_config(cls, config: EngineConfig) -> DiffusersBackend:
        """Load the pipeline ``config`` names (or the demo model) on its device and dtype."""
        from diffusers import StableDiffusionXLPipeline

        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        model_id = config.model_id
        if model_id is None and device.type != "cuda":
            from ..demo.model import DEMO_BASE_MODEL_ID, ensure_demo_assets

            assets = ensure_demo_assets(Path(config.demo_dir) if config.demo_dir else None)
            pipeline = StableDiffusionXLPipeline.from_pretrained(assets.model_dir, dtype=dtype)
            info = BackendInfo.describe(
                config,
                model_id=DEMO_BASE_MODEL_ID,
                base_model_id=config.base_model_id or DEMO_BASE_MODEL_ID,
                device=device,
                dtype=dtype,
                is_demo=True,
                extra_lora_dirs=(str(assets.loras_dir),),
            )
        else:
            model_id = model_id or SDXL_BASE_MODEL_ID
            pipeline = StableDiffusionXLPipeline.from_pretrained(model_id, dtype=dtype, use_safetensors=True)
            is_folder = Path(model_id).exists()
            base = config.base_model_id or (SDXL_BASE_MODEL_ID if is_folder else model_id)
            info = BackendInfo.describe(
                config, model_id=model_id, base_model_id=base, device=device, dtype=dtype, is_demo=False
            )
        pipeline.to(device)
        return cls(
            pipeline,
            info,
            originals_device=config.originals_device,
            eager_originals=config.eager_originals,
            swap_kernel=config.swap_kernel,
        )

    def prepare(self, adapter: ParsedAdapter) -> ParsedAdapter:
        """The adapter's factors on the weights' device and dtype, ready for ``swap``."""
        return adapter.to(self.device, self.dtype)

    def swap(self, adapter: ParsedAdapter | None, scale: float) -> SwapStats:
        """Make the weights ``base + scale * adapter`` (the base for None or ``scale == 0``).

        ``adapter`` comes from ``prepare``. On any exception the weights are back at the exact base before it
        propagates (``Swapper.apply``).
        """
        stats = self.swapper.apply(adapter, scale)
        if self.device.type == "cuda":
            # The swap is asynchronous on CUDA; count its time as swap time, not inference time.
            torch.cuda.synchronize(self.device)
        return stats

    def active(self) -> ActiveAdapter | None:
        """The adapter written into the weights and its scale; None when they are the base."""
        return self.swapper.active

    def originals_bytes(self) -> int:
        """Bytes held by the kept copies of original weights (what exact restores cost in memory)."""
        return self.swapper.originals_bytes

    def verify_base(self) -> bool:
        """Whether every layer a swap ever touched equals its kept original (call when ``active()`` is None).

        The cheap per-return check (one read of the touched layers); ``digest`` covers every weight.
        """
        return self.swapper.verify_base()

    def digest(self) -> str:
        """The digest of every weight of the adaptable components (``swap.weights_digest``)."""
        return weights_digest(self.pipeline)

    def generate(self, request, on_step: Callable[[int, int], None] | None = None):
        """Run the pipeline for a validated request; returns a PIL image."""
        steps = request.num_inference_steps

        def callback(pipe, step, timestep, kwargs):
            if on_step is not None:
                on_step(step + 1, steps)
            return kwargs

        # A CPU generator: the same seed gives the same initial noise on every device.
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        with torch.inference_mode():
            out = self.pipeline(
                prompt=request.prompt,
                # None, not "": SDXL then uses zero negative embeddings (force_zeros_for_empty_prompt).
                negative_prompt=request.negative_prompt or None,
                num_inference_steps=steps,
                guidance_scale=request.guidance_scale,
                width=request.width,
                height=request.height,
                generator=generator,
                callback_on_step_end=callback,
                output_type="pil",
            )
        return out.images[0]


def _usual_target(component: str, module: str) -> bool:
    """Layers nearly every SDXL LoRA touches: UNet attention/feed-forward linears, text-encoder linears."""
    if component == "unet":
        return ".transformer_blocks." in module
    return ".layers." in module


def _own_weights(pipeline) -> None:
    """Give every adaptable weight its own memory (CPU only), so the first swap pays no copy-on-write.

    ``from_pretrained`` on the CPU can leave weights backed by the memory-mapped safetensors file; the first
    write to each page then copies it (6-7 s for SDXL in the reference design). Cloning once at start moves
    that cost out of the first request. On accelerators the weights were copied to the device already.
    """
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipeline, component, None)
        if model is None:
            continue
        for p in model.parameters():
            if p.device.type == "cpu":
                p.data = p.data.clone()
