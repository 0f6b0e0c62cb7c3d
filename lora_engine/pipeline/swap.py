"""Swap LoRA adapters in and out of a pipeline's weights in one pass, and restore the base bit for bit.

What this is for: the one operation the server does between requests. For every layer the new adapter
touches, ``W = original + scale * scaling * (B @ A)`` is written straight into the live weight (one
``addmm``, or the one-pass kernel below), computed from a kept copy of the original, never from the current
``W``. Layers the old adapter touched and the new one does not are copied back from their originals. Going
back to the base model is "copy every touched layer back". Because nothing is ever computed from a previously
modified weight, errors cannot accumulate: the base after a million swaps is the base at start, byte for byte, and
an adapter applied twice gives identical weights both times.

Compared with diffusers' ``load_lora_weights`` → ``fuse_lora`` … ``unfuse_lora`` →
``unload_lora_weights`` (the reference design): no modules are injected or removed, no adapter state
lives on the modules, each touched weight is written once per swap, and ``unfuse`` (``W -= delta``),
which rounds differently from the fuse and drifts, never happens.

What this is not for: reading files or deciding what to cache (``adapters.parse``, ``adapter_cache``),
or threading: the caller (the engine's worker thread) owns the pipeline and calls this from that thread.

Originals are kept for exactly the layers some adapter has touched (cloned on first touch, or up front
with :meth:`Swapper.keep_originals` so the first swap costs no more than later ones), on the weights'
device, or in pinned host memory when ``originals_device="cpu"`` on an accelerator.

On CPUs with AMX, bfloat16 layers are written by ``pipeline.cpu_kernel``'s one-pass kernel when the swapper is
given one (torch's CPU ``addmm(..., out=W)`` copies the original into ``W`` before adding: two passes).
A given layer and adapter always take the same path, so the same adapter always gives the same bits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..adapters.parse import COMPONENTS, LayerIndex, LoraLayer, ParsedAdapter

if TYPE_CHECKING:
    from .cpu_kernel import AmxAddmm

__all__ = ["ActiveAdapter", "SwapStats", "Swapper", "weights_digest"]


@dataclass(frozen=True)
class ActiveAdapter:
    """What is currently written into the weights.

    Args:
        adapter_id (`str`): the adapter's id.
        scale (`float`): the LoRA scale it was applied with.
    """

    adapter_id: str
    scale: float


@dataclass(frozen=True)
class SwapStats:
    """What one swap did.

    Args:
        layers_written (`int`): layers given ``original + delta``.
        layers_restored (`int`): layers copied back to their original.
        originals_cloned (`int`): originals kept for the first time during this swap.
    """

    layers_written: int
    layers_restored: int
    originals_cloned: int


def _fingerprint(t: torch.Tensor) -> int:
    """A position-weighted sum of the tensor's bits, computed where the tensor lives (no host copy).

    Every element's bit pattern, as an integer, is multiplied by an odd weight (``2 i + 1``) and summed
    modulo 2**64, so any single changed element changes the result, and so does moving values around.
    """
    flat = t.detach().reshape(-1)
    int_dtype = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
    # copy=True: for int64 buffers (position ids) .to() would alias the live tensor and mul_ would corrupt it.
    bits = flat.view(int_dtype).to(torch.int64, copy=True)
    weights = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64).mul_(2).add_(1)
    return int(bits.mul_(weights).sum()) & 0xFFFFFFFFFFFFFFFF


def weights_digest(pipeline, components: Iterable[str] = COMPONENTS) -> str:
    """A digest of every parameter and buffer of the adaptable components (hex, 32 chars).

    Two equal digests mean equal weights for any practical purpose: it is how tests and the
    ``lora_engine_base_digest`` metric show that the base came back exactly.
    """
    h = hashlib.blake2b(digest_size=16)
    for component in components:
        model = getattr(pipeline, component, None)
        if model is None:
            continue
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            h.update(f"{component}.{name}:{t.dtype}:{tuple(t.shape)}:".encode())
            h.update(_fingerprint(t).to_bytes(8, "little"))
    return h.hexdigest()


class Swapper:
    """Writes adapters into a pipeline's weights and takes them out again; see the module docstring.

    Args:
        pipeline: a diffusers SDXL pipeline (the caller owns it and serialises calls).
        index (`LayerIndex`): the pipeline's layers, from ``LayerIndex.from_pipeline``.
        originals_device (`str`, *optional*): ``"same"`` keeps originals beside the weights (fastest);
            ``"cpu"`` keeps them in (pinned, on accelerators) host memory to save device memory.
        kernel (`AmxAddmm`, *optional*): the one-pass CPU bf16 kernel (``pipeline.cpu_kernel.load_amx_addmm``);
            layers it does not apply to, or all layers without it, use ``torch.addmm``.
    """

    def __init__(self, pipeline, index: LayerIndex, originals_device: str = "same", kernel: AmxAddmm | None = None):
        self._index = index
        self._weights: dict[tuple[str, str], torch.Tensor] = {}
        for component in COMPONENTS:
            model = getattr(pipeline, component, None)
            if model is None:
                continue
            modules = dict(model.named_modules())
            for comp, key in index.layers:
                if comp == component:
                    self._weights[(comp, key)] = modules[key].weight.data
        self._originals: dict[tuple[str, str], torch.Tensor] = {}
        self._originals_device = originals_device
        self._kernel = kernel if kernel is not None and kernel.available else None
        self._applied: set[tuple[str, str]] = set()
        self.active: ActiveAdapter | None = None
        # Tests set this to raise in the middle of a swap and check the rollback; None in production.
        self._before_layer: Callable[[int], None] | None = None

    @property
    def kernel_name(self) -> str:
        """``"amx-bf16"`` when the one-pass CPU kernel is in use (for layers it applies to), else ``"torch.addmm"``."""
        return self._kernel.name if self._kernel is not None else "torch.addmm"

    @property
    def originals_bytes(self) -> int:
        """Bytes held by kept originals."""
        return sum(t.numel() * t.element_size() for t in self._originals.values())

    def keep_originals(self, keys: Iterable[tuple[str, str]]) -> int:
        """Clone the originals of ``keys`` now rather than on first touch; returns how many were new."""
        new = 0
        for key in keys:
            if key not in self._originals and key in self._weights:
                self._keep(key)
                new += 1
        return new

    def _keep(self, key: tuple[str, str]) -> None:
        w = self._weights[key]
        if self._originals_device == "cpu" and w.device.type != "cpu":
            copy = torch.empty(w.shape, dtype=w.dtype, device="cpu", pin_memory=True)
            copy.copy_(w)
        else:
            copy = w.clone()
        self._originals[key] = copy

    def apply(self, adapter: ParsedAdapter | None, scale: float = 1.0) -> SwapStats:
        """Make the weights ``base + scale * adapter`` (or the base, for ``None`` or ``scale == 0``).

        The adapter's factors must already be on the weights' device and dtype (``ParsedAdapter.to``).
        On any exception the weights are rolled back to the exact base before it propagates.
        """
        if adapter is not None and scale == 0.0:
            # Exactly the base, not base + 0 * delta (which is base too, but only up to -0.0 and NaN).
            adapter = None
        target = {} if adapter is None else {(lay.component, lay.module): lay for lay in adapter.layers}
        cloned = restored = written = 0
        try:
            for key in self._applied - target.keys():
                self._weights[key].copy_(self._originals[key], non_blocking=True)
                restored += 1
            for i, (key, lay) in enumerate(target.items()):
                if self._before_layer is not None:
                    self._before_layer(i)
                if key not in self._originals:
                    self._keep(key)
                    cloned += 1
                at_original = key not in self._applied
                self._applied.add(key)
                self._write(self._weights[key], self._originals[key], lay, scale * lay.scaling, at_original)
                written += 1
        except BaseException:
            self.restore_base()
            raise
        self._applied = set(target)
        self.active = None if adapter is None else ActiveAdapter(adapter.adapter_id, scale)
        return SwapStats(layers_written=written, layers_restored=restored, originals_cloned=cloned)

    def _write(self, w: torch.Tensor, orig: torch.Tensor, lay: LoraLayer, alpha: float, at_original: bool) -> None:
        """``w = orig + alpha * (B @ A)`` for one layer, in as few passes over ``w`` as the hardware allows."""
        out_features = w.shape[0]
        w2d = w.view(out_features, -1)
        b2d, a2d = lay.b.view(out_features, -1), lay.a.view(lay.a.shape[0], -1)
        # A layer no adapter occupies holds its exact original already, so it can be its own source.
        source = w2d if at_original else orig.view(out_features, -1)
        if self._kernel is not None and self._kernel.addmm_(w2d, source, b2d, a2d, alpha):
            return  # one pass; in place or from the original, the same arithmetic
        if at_original:
            w2d.addmm_(b2d, a2d, beta=1, alpha=alpha)  # one pass over W
        elif orig.device != w.device:
            w.copy_(orig, non_blocking=True)
            w2d.addmm_(b2d, a2d, beta=1, alpha=alpha)
        else:
            torch.addmm(source, b2d, a2d, beta=1, alpha=alpha, out=w2d)  # torch: a copy, then an add

    def verify_base(self) -> bool:
        """Whether every layer with a kept original equals it exactly (call when no adapter is applied).

        This is the cheap, per-return check (one read of the kept layers); ``weights_digest`` covers every
        weight and is for start-up, tests and health checks.
        """
        return all(torch.equal(self._weights[key], original) for key, original in self._originals.items())

    def restore_base(self) -> int:
        """Copy every touched layer back from its original; returns how many were copied."""
        n = 0
        for key in self._applied:
            self._weights[key].copy_(self._originals[key])
            n += 1
        self._applied = set()
        self.active = None
        return n
