"""Adapter swap benchmark: our one-pass ``Swapper`` against diffusers' load/fuse/unfuse/unload; prints one JSON.

For: checking the swap's targets (``TARGETS`` below) on full-size SDXL UNet shapes (the real SDXL-base UNet config,
random bf16 weights built on the meta device then filled; no download) and on the offline demo model, in ONE run, so
every ratio compares numbers taken on the same machine under the same load:

* ``warm_vs_memcpy``: a warm swap (adapter parsed, on the device) against copying every touched weight once;
* ``diffusers_cycle_vs_warm``: diffusers' ``load_lora_weights → fuse_lora … unfuse_lora → unload_lora_weights``
  from the same in-RAM state dict, against our warm swap;
* ``first_vs_later``: the first swap after the engine's normal start-up on a ``from_pretrained`` UNet;
* ``drift_elements``: elements that differ from the base after many swaps and a return to the base
  (ours, and diffusers' fuse/unfuse for comparison), in float32, float16 and bfloat16;
* ``rss_growth_pct``: resident memory before and after our swap loops.

Not for: inference speed, or anything that needs real SDXL weights (the numbers depend on shapes only).

Usage: ``python bench/swap.py [--quick] [--demo-only] [--device auto|cpu|cuda] [--dtype auto|float32|float16|bfloat16]
[--swap-kernel auto|torch] [--out bench/out/swap.json]``. The JSON goes to stdout and to ``--out``; progress goes
to stderr.
See ``bench/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from bench._out import emit
from lora_engine.adapters.parse import LayerIndex, load_adapter_file, parse_lora_state_dict
from lora_engine.pipeline.backend import _own_weights, _usual_target
from lora_engine.pipeline.cpu_kernel import AmxAddmm, kernel_for
from lora_engine.pipeline.swap import Swapper

#: ``stabilityai/stable-diffusion-xl-base-1.0/unet/config.json`` (written from the published config; the
#: benchmark needs only its shapes, so the weights are random).
SDXL_UNET_CONFIG: dict = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

#: The swap's targets (bench/README.md explains each).
TARGETS = {
    "warm_vs_memcpy": ("<=", 2.0),
    "diffusers_cycle_vs_warm": (">=", 10.0),
    "first_vs_later": ("<=", 1.5),
    "drift_elements": ("==", 0),
    "rss_growth_pct": ("<", 2.0),
}

_ATTN_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MAX_FILE = 1 << 34


# ---------------------------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[bench/swap {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class _Timer:
    """``perf_counter`` timings, with the device synchronised before and after (CUDA is asynchronous)."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _r(x, nd=4):
    if x is None:
        return None
    if isinstance(x, float):
        return round(x, nd) if math.isfinite(x) else None
    return x


def _attention_linears(unet) -> list[str]:
    """The to_q/to_k/to_v/to_out.0 linears of every transformer block (560 on SDXL)."""
    return [
        name
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and ".transformer_blocks." in name and name.endswith(_ATTN_TARGETS)
    ]


def _live_weight(model, name: str) -> torch.Tensor:
    """The module's weight tensor, looking through PEFT's wrapper (``base_layer``) when one is injected."""
    module = model.get_submodule(name)
    module = getattr(module, "base_layer", module)
    return module.weight.data


def _compare(live: list[torch.Tensor], base: list[torch.Tensor]) -> dict:
    """Elements whose bits differ from the base, and the largest absolute difference.

    Bits, not values (so -0.0 vs 0.0 and NaNs count); scratch buffers are reused, since fresh pages are slow
    on small VMs and a gigabyte of temporaries per call would dominate the benchmark's wall time.
    """
    n = 0
    mx = 0.0
    total = 0
    biggest = max((w.numel() for w in live), default=0)
    device = live[0].device if live else torch.device("cpu")
    ne = torch.empty(biggest, dtype=torch.bool, device=device)
    diff = None
    for w, b in zip(live, base):
        total += w.numel()
        int_dtype = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]
        wi, bi = w.reshape(-1).view(int_dtype), b.reshape(-1).view(int_dtype)
        if torch.equal(wi, bi):
            continue
        out = ne[: w.numel()]
        torch.ne(wi, bi, out=out)
        n += int(torch.count_nonzero(out))
        if diff is None:
            diff = torch.empty(biggest, dtype=torch.float32, device=device)
        d = diff[: w.numel()]
        d.copy_(w.reshape(-1))
        d.sub_(b.reshape(-1)).abs_()
        mx = max(mx, float(d.max()))
    return {"elements": n, "of": total, "max_abs": mx}


def _random_lora(
    unet, names: list[str], rank: int, seed: int, key_format: str, dtype: torch.dtype, rel: float = 0.1
) -> dict:
    """A LoRA state dict on ``names`` whose product is about ``rel`` times the weight's size, in ``dtype``.

    ``key_format``: ``"peft"`` (``unet.<path>.lora_A.weight``, what diffusers' ``save_lora_weights`` writes) or
    ``"kohya"`` (``lora_unet_<SGM block name>.lora_down.weight`` + ``.alpha``, as kohya's trainer writes).
    """
    from lora_engine.demo.model import unet_lora_entries

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        w = unet.get_submodule(name).weight
        out_f, in_f = w.shape
        w_std = float(w.detach()[:64].float().std()) or 0.02
        a = torch.randn(rank, in_f, generator=gen, dtype=dtype).div_(in_f**0.5)
        b = torch.randn(out_f, rank, generator=gen, dtype=dtype).mul_(rel * w_std * (in_f / rank) ** 0.5)
        # alpha = rank: scaling 1, like the peft ones.
        out.update(unet_lora_entries(name, a, b, key_format, alpha=rank))
    return out


def _fill_(model, dtype: torch.dtype, device: torch.device, seed: int = 0) -> None:
    """A cheap deterministic fill: every tensor is a window of one seeded N(0, 0.02) pool (memcpy speed)."""
    pool_n = 1 << 22
    gen = torch.Generator().manual_seed(seed)
    pool = (torch.randn(2 * pool_n, generator=gen) * 0.02).to(device=device, dtype=dtype)
    with torch.no_grad():
        for i, t in enumerate(list(model.parameters()) + list(model.buffers())):
            if not t.is_floating_point():
                continue
            flat = t.view(-1)
            off = (i * 7919) % pool_n
            for s in range(0, flat.numel(), pool_n):
                m = min(pool_n, flat.numel() - s)
                flat[s : s + m].copy_(pool[off : off + m])


def build_sdxl_unet(device: torch.device, dtype: torch.dtype):
    """The SDXL-base UNet with random weights: built on the meta device, materialised in ``dtype``, filled."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    # Cast on the meta device (free), then allocate once in the final dtype.
    unet.to(dtype=dtype)
    unet.to_empty(device=device)
    _fill_(unet, dtype, device)
    unet.eval().requires_grad_(False)
    return unet


_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def save_model_folder(unet, folder: Path) -> None:
    """What ``save_pretrained`` writes (``config.json`` + ``diffusion_pytorch_model.safetensors``), written directly.

    A safetensors file is a JSON header and the raw tensor bytes, so they are written straight from the tensors,
    with no serialised copy in between. The write still costs 40-50 s on the dev VM (fresh pages are slow
    there, /dev/shm included); ``save_pretrained`` took as long. ``from_pretrained`` reads it like any other.
    """
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_config(folder)
    state = {k: v.detach() for k, v in unet.state_dict().items()}
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with (folder / "diffusion_pytorch_model.safetensors").open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in state.values():
            t = t.contiguous().cpu()
            f.write(memoryview(t.view(-1).view(torch.uint8).numpy()))


def _host_pipeline(unet, dtype: torch.dtype, device: torch.device):
    """A real ``StableDiffusionXLPipeline`` (tiny text encoders/VAE of the demo) holding ``unet``.

    diffusers' LoRA loader needs a pipeline object; no inference is run, so the text encoders' width not
    matching the UNet's cross-attention width does not matter.
    """
    from lora_engine.demo.model import build_demo_pipeline

    pipe = build_demo_pipeline(dtype)
    pipe.register_modules(unet=unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _diffusers_cycle(pipe, state_dict: dict, timer: _Timer) -> dict:
    """One reference cycle from an in-RAM state dict, each step timed on its own."""
    t = {}
    t["load"] = timer(lambda: pipe.load_lora_weights(dict(state_dict)))
    t["fuse"] = timer(lambda: pipe.fuse_lora(lora_scale=1.0))
    t["unfuse"] = timer(lambda: pipe.unfuse_lora())
    t["unload"] = timer(lambda: pipe.unload_lora_weights())
    t["total"] = sum(t.values())
    return t


def _unfused_vs_fused(
    pipe,
    swapper: Swapper,
    adapters: dict,
    state_dicts: dict,
    warm_s: dict,
    timer: _Timer,
    side: int = 64,
    reps: int = 3,
) -> dict:
    """One UNet step with the adapter fused by our swap, against the same adapter left unfused (diffusers/PEFT
    LoRA layers computing ``x @ A @ B`` beside every targeted weight, as serving without fusing would run).

    The difference is what unfused serving pays per denoising step; ``break_even_steps`` is how many steps
    it takes to cost one warm swap: unfused only wins for requests with fewer steps than that.
    """
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, side, side, generator=g).to(device, dtype)
    enc = torch.randn(1, 77, 2048, generator=g).to(device, dtype)
    cond = {
        "text_embeds": torch.randn(1, 1280, generator=g).to(device, dtype),
        "time_ids": torch.tensor([[8.0 * side, 8.0 * side, 0.0, 0.0, 8.0 * side, 8.0 * side]]).to(device, dtype),
    }

    def step():
        with torch.inference_mode():
            unet(x, 500, encoder_hidden_states=enc, added_cond_kwargs=cond)

    out: dict = {"latent": f"1x4x{side}x{side} ({8 * side} px), batch 1, one UNet forward", "reps": reps}
    for rank, key in ((8, "r8_peft"), (32, "r32_a")):
        swapper.apply(adapters[key], 1.0)
        timer(step)  # warm-up
        fused = [timer(step) for _ in range(reps)]
        swapper.apply(None)
        pipe.load_lora_weights(dict(state_dicts[key]))
        timer(step)
        unfused = [timer(step) for _ in range(reps)]
        pipe.unload_lora_weights()
        swapper.apply(adapters[key], 1.0)
        fused += [timer(step) for _ in range(reps)]  # bracket the unfused runs: load drifts on a shared VM
        swapper.apply(None)
        f, u = _med(fused), _med(unfused)
        over = u - f
        out[f"rank{rank}"] = {
            "step_fused_s": _r(f),
            "step_unfused_s": _r(u),
            "overhead_per_step_s": _r(over),
            "overhead_pct": _r(100.0 * over / f, 2),
            "warm_swap_s": warm_s[f"rank{rank}"],
            "break_even_steps": _r(warm_s[f"rank{rank}"] / over, 2) if over > 0 else None,
        }
    return out


def _median_steps(cycles: list[dict]) -> dict:
    return {k: _r(_med([c[k] for c in cycles])) for k in cycles[0]} if cycles else {}


# ---------------------------------------------------------------------------------------------- full size


def bench_full(
    device: torch.device, dtype: torch.dtype, quick: bool, timer: _Timer, tmp: Path, kernel: AmxAddmm | None
) -> dict:
    # --quick: fewer repetitions; the diffusers cycle on rank 8 only; no separate named-adapter drift loop (the
    # cycles' own drift is still counted); no from_pretrained section (the in-memory first swap stands in).
    reps_warm = 3 if quick else 9
    reps_cycle = 1 if quick else 3
    reps_cold = 1 if quick else 3
    drift_ours = 4 if quick else 20
    drift_theirs = 0 if quick else 3
    out: dict = {"dtype": str(dtype).removeprefix("torch."), "device": str(device), "tmp_dir": str(tmp)}

    t0 = time.perf_counter()
    unet = build_sdxl_unet(device, dtype)
    names = _attention_linears(unet)
    out["unet"] = {
        "params": sum(p.numel() for p in unet.parameters()),
        "bytes": sum(p.numel() * p.element_size() for p in unet.parameters()),
        "touched_layers": len(names),
        "touched_bytes": sum(
            unet.get_submodule(n).weight.numel() * unet.get_submodule(n).weight.element_size() for n in names
        ),
        "build_s": _r(time.perf_counter() - t0),
    }
    _log(f"full-size UNet built: {out['unet']}")

    # A model folder for the first-swap-after-load measurement (written now, loaded after this UNet is freed).
    # Not in --quick: writing 5 GB of fresh pages takes 40-50 s on the 2-core dev VM even to /dev/shm.
    model_dir = tmp / "unet"
    if not quick:
        t0 = time.perf_counter()
        save_model_folder(unet, model_dir)
        out["unet"]["save_s"] = _r(time.perf_counter() - t0)
        _log(f"model folder written in {out['unet']['save_s']} s")

    # Adapters: two rank-8 (one PEFT, one kohya keys) and two rank-32 (PEFT), written to disk as real files.
    specs = {
        "r8_peft": (8, 101, "peft"),
        "r8_kohya": (8, 102, "kohya"),
        "r32_a": (32, 103, "peft"),
        "r32_b": (32, 104, "peft"),
    }
    from safetensors.torch import save_file

    state_dicts = {}
    files = {}
    for key, (rank, seed, fmt) in specs.items():
        state_dicts[key] = _random_lora(unet, names, rank, seed, fmt, dtype)
        if not quick or key in ("r8_peft", "r32_a"):  # --quick: the cold swaps read one file per rank
            files[key] = tmp / f"{key}.safetensors"
            save_file(state_dicts[key], str(files[key]))

    _log("adapters written")
    pipe = _host_pipeline(unet, dtype, device)
    index = LayerIndex.from_pipeline(pipe)
    swapper = Swapper(pipe, index, kernel=kernel)
    touched = [("unet", n) for n in names]
    swapper.keep_originals(touched)
    live = [swapper._weights[k] for k in touched]
    originals = [swapper._originals[k] for k in touched]

    adapters = {}
    for key, sd in state_dicts.items():
        parsed = parse_lora_state_dict(key, sd, {}, index)
        assert len(parsed.layers) == len(names), (key, len(parsed.layers))
        adapters[key] = parsed.to(device, dtype)
    out["adapters"] = {
        k: {"rank": specs[k][0], "keys": specs[k][2], "layers": len(a.layers), "bytes": a.nbytes}
        for k, a in adapters.items()
    }
    # The kohya file must land on the very same layers with the same factors as a PEFT file would.
    assert {lay.module for lay in adapters["r8_kohya"].layers} == set(names)

    def memcpy():
        for w, o in zip(live, originals):
            w.copy_(o)

    # ---- the very first swap on this never-swapped UNet (Swapper new, originals kept), before anything else
    # touches the weights: the in-memory counterpart of the from_pretrained section below.
    gc.collect()
    rss_before = _rss()
    first_in_memory = timer(lambda: swapper.apply(adapters["r8_peft"], 1.0))

    # ---- warm swaps vs the memcpy floor, interleaved round by round so load spikes hit both alike. With the
    # one-pass kernel in use, each round also times a swap through torch.addmm (the fallback) for comparison.
    pairs = {8: ("r8_peft", "r8_kohya"), 32: ("r32_a", "r32_b")}
    warm: dict[int, list[float]] = {8: [], 32: []}
    warm_torch: dict[int, list[float]] = {8: [], 32: []}
    floor: list[float] = []
    paired: dict[int, list[float]] = {8: [], 32: []}
    in_use = swapper._kernel
    for i in range(reps_warm + 1):  # round 0 is the warm-up
        for rank, (a, b) in pairs.items():
            m = timer(memcpy)
            s = timer(lambda: swapper.apply(adapters[(b, a)[i % 2]], 1.0))
            if in_use is not None:
                swapper._kernel = None
                t = timer(lambda: swapper.apply(adapters[(a, b)[i % 2]], 1.0))
                swapper._kernel = in_use
                if i:
                    warm_torch[rank].append(t)
            if i:
                floor.append(m)
                warm[rank].append(s)
                paired[rank].append(s / m)
    swapper.apply(None)
    out["memcpy_s"] = _r(_med(floor))
    out["memcpy_gbps"] = _r(2 * out["unet"]["touched_bytes"] / _med(floor) / 1e9, 2)
    out["warm_swap_s"] = {f"rank{r}": _r(_med(v)) for r, v in warm.items()}
    out["warm_swap_samples_s"] = {f"rank{r}": [_r(x) for x in v] for r, v in warm.items()}
    out["memcpy_samples_s"] = [_r(x) for x in floor]
    # Headline: ratio of the medians (bursty load on a shared VM hits single samples, medians resist it);
    # the median of per-round ratios is kept beside it.
    out["warm_vs_memcpy"] = {f"rank{r}": _r(_med(v) / _med(floor), 3) for r, v in warm.items()}
    out["warm_vs_memcpy_paired"] = {f"rank{r}": _r(_med(v), 3) for r, v in paired.items()}
    out["swap_kernel"] = swapper.kernel_name
    if in_use is not None:
        out["warm_swap_torch_addmm_s"] = {f"rank{r}": _r(_med(v)) for r, v in warm_torch.items()}
        out["torch_addmm_vs_memcpy"] = {f"rank{r}": _r(_med(v) / _med(floor), 3) for r, v in warm_torch.items()}
    out["first_swap_in_memory"] = {
        "first_s": _r(first_in_memory),
        "later_s": out["warm_swap_s"]["rank8"],
        "first_vs_later": _r(first_in_memory / _med(warm[8]), 3),
    }
    _log(f"warm {out['warm_swap_s']} memcpy {out['memcpy_s']} ratio {out['warm_vs_memcpy']}")

    # ---- cold swaps: file on disk -> read + checks -> parse -> to(device, dtype) -> apply.
    cold: dict[int, list[dict]] = {8: [], 32: []}
    for i in range(reps_cold + 1):
        for rank, pair in pairs.items():
            key = pair[i % 2] if pair[i % 2] in files else pair[0]
            st: dict = {}
            box: dict = {}
            st["read"] = timer(lambda: box.update(t=load_adapter_file(key, files[key], max_bytes=_MAX_FILE)))
            st["parse"] = timer(lambda: box.update(p=parse_lora_state_dict(key, *box["t"], index)))
            st["to"] = timer(lambda: box.update(d=box["p"].to(device, dtype)))
            st["apply"] = timer(lambda: swapper.apply(box["d"], 1.0))
            st["total"] = sum(st.values())
            if i:
                cold[rank].append(st)
            del box
    swapper.apply(None)
    out["cold_swap_s"] = {f"rank{r}": _median_steps(v) for r, v in cold.items()}
    _log(f"cold {out['cold_swap_s']}")

    # ---- ours, drift at full size (rss is measured around all of our loops: warm, cold, drift).
    order = list(adapters)
    for i in range(drift_ours):
        swapper.apply(adapters[order[i % len(order)]], 1.0)
    swapper.apply(None)
    timer.sync()
    ours_drift = _compare(live, originals)
    gc.collect()
    rss_after = _rss()
    out["rss"] = {
        "before": rss_before,
        "after": rss_after,
        "growth_pct": _r(100.0 * (rss_after - rss_before) / rss_before, 3),
        "originals_bytes": swapper.originals_bytes,
    }

    # ---- the reference diffusers cycle, from the same in-RAM state dicts.
    # Each cycle is also paired with one of our warm swaps timed just before it (same adapter, same moment).
    cycles: dict[int, list[dict]] = {8: []} if quick else {8: [], 32: []}
    cycle_pair: dict[int, list[float]] = {r: [] for r in cycles}
    for i in range(reps_cycle + 1):
        for rank in cycles:
            a, b = pairs[rank]
            swapper.apply(adapters[b], 1.0)
            ours_t = timer(lambda: swapper.apply(adapters[a], 1.0))
            swapper.apply(None)
            c = _diffusers_cycle(pipe, state_dicts[a], timer)
            if i:
                cycles[rank].append(c)
                cycle_pair[rank].append(c["total"] / ours_t)
    # What one load -> fuse -> unfuse -> unload cycle left behind (our next swap would overwrite it).
    cycle_drift = _compare([_live_weight(pipe.unet, n) for n in names], originals)
    out["diffusers_cycle_s"] = {f"rank{r}": _median_steps(v) for r, v in cycles.items()}
    out["diffusers_cycle_vs_warm"] = {
        f"rank{r}": _r(_med([c["total"] for c in v]) / _med(warm[r]), 2) for r, v in cycles.items()
    }
    out["diffusers_cycle_vs_warm_paired"] = {f"rank{r}": _r(_med(v), 2) for r, v in cycle_pair.items()}
    _log(f"diffusers cycle {out['diffusers_cycle_s']} ratio {out['diffusers_cycle_vs_warm']}")
    memcpy()  # back to the exact base for what follows

    out["drift"] = {
        "ours": {"swaps": drift_ours, "adapters": len(order), **ours_drift},
        "diffusers_load_fuse_unfuse_unload": {"cycles": 1, "method": "load -> fuse -> unfuse -> unload", **cycle_drift},
    }
    # ---- diffusers drift at full size: adapters loaded once by name, then fuse_lora(adapter_names=[x]) / unfuse.
    if drift_theirs:
        t0 = time.perf_counter()
        for key in order:
            pipe.load_lora_weights(dict(state_dicts[key]), adapter_name=key)
        for i in range(drift_theirs):
            pipe.fuse_lora(lora_scale=1.0, adapter_names=[order[i % len(order)]])
            pipe.unfuse_lora()
        theirs_drift = _compare([_live_weight(pipe.unet, n) for n in names], originals)
        pipe.unload_lora_weights()
        out["drift"]["diffusers_fuse_unfuse"] = {
            "cycles": drift_theirs,
            "method": "load_lora_weights(adapter_name) once each, then "
            "fuse_lora(adapter_names=[x]) -> unfuse_lora() per cycle",
            **theirs_drift,
            "loop_s": _r(time.perf_counter() - t0),
        }
    _log(f"full-size drift {out['drift']}")
    if not quick:
        out["unfused"] = _unfused_vs_fused(pipe, swapper, adapters, state_dicts, out["warm_swap_s"], timer)
        _log(f"unfused vs fused {out['unfused']}")
    del pipe, swapper, live, originals, adapters, unet
    gc.collect()
    if quick:
        return out

    # ---- first swap after load: from_pretrained, then the engine's start-up, then first vs later swaps.
    from diffusers import UNet2DConditionModel

    fp: dict = {}
    t0 = time.perf_counter()
    loaded = UNet2DConditionModel.from_pretrained(model_dir, dtype=dtype).to(device)
    fp["from_pretrained_s"] = _r(time.perf_counter() - t0)
    host = types.SimpleNamespace(unet=loaded)
    t0 = time.perf_counter()
    _own_weights(host)
    fp["own_weights_s"] = _r(time.perf_counter() - t0)
    index2 = LayerIndex.from_pipeline(host)
    swapper = Swapper(host, index2, kernel=kernel)
    t0 = time.perf_counter()
    fp["kept"] = "every usual target (_usual_target), as DiffusersBackend does"
    swapper.keep_originals(k for k in index2.layers if _usual_target(*k))
    timer.sync()
    fp["keep_originals_s"] = _r(time.perf_counter() - t0)
    fp["originals_bytes"] = swapper.originals_bytes
    ready = {k: parse_lora_state_dict(k, state_dicts[k], {}, index2).to(device, dtype) for k in order}
    first = timer(lambda: swapper.apply(ready["r8_peft"], 1.0))
    later = [timer(lambda k=k: swapper.apply(ready[k], 1.0)) for k in ["r8_kohya", "r8_peft"] * 3]
    fp["first_s"] = _r(first)
    fp["later_s"] = _r(_med(later))
    fp["first_vs_later"] = _r(first / _med(later), 3)
    del swapper, ready, host, loaded
    gc.collect()
    _log(f"first swap after load {fp}")
    out["first_swap_after_load"] = fp

    # ---- for comparison: diffusers' first fuse right after from_pretrained (no start-up work beforehand).
    loaded = UNet2DConditionModel.from_pretrained(model_dir, dtype=dtype)
    pipe = _host_pipeline(loaded, dtype, device)
    d: dict = {}
    d["load_s"] = _r(timer(lambda: pipe.load_lora_weights(dict(state_dicts["r8_peft"]))))
    d["first_fuse_s"] = _r(timer(lambda: pipe.fuse_lora(lora_scale=1.0)))
    pipe.unfuse_lora()
    d["later_fuse_s"] = _r(timer(lambda: pipe.fuse_lora(lora_scale=1.0)))
    d["first_vs_later"] = _r(d["first_fuse_s"] / d["later_fuse_s"], 3)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    fp["diffusers_after_from_pretrained"] = d
    _log(f"diffusers first fuse after from_pretrained {d}")
    del pipe, loaded
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------- demo model


def _demo_loaded(model_dir: Path, files: dict[str, Path], device: torch.device, dtype: torch.dtype, kernel_choice: str):
    """The demo pipeline from its folder, after the engine's start-up (as ``DiffusersBackend`` does it), and its
    adapters parsed and ready: ``(pipe, index, swapper, adapters)``."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    _own_weights(pipe)
    index = LayerIndex.from_pipeline(pipe)
    swapper = Swapper(pipe, index, kernel=kernel_for(kernel_choice, device, dtype))
    swapper.keep_originals(k for k in index.layers if _usual_target(*k))
    adapters = [
        parse_lora_state_dict(rid, *load_adapter_file(rid, f, max_bytes=_MAX_FILE), index).to(device, dtype)
        for rid, f in files.items()
    ]
    return pipe, index, swapper, adapters


def _first_vs_later(swapper: Swapper, adapters: list, timer: _Timer) -> dict:
    """The first swap after start-up vs later swaps of the same adapter (another one in between each time)."""
    first = timer(lambda: swapper.apply(adapters[0], 1.0))
    later = []
    for _ in range(5):
        swapper.apply(adapters[1], 1.0)
        later.append(timer(lambda: swapper.apply(adapters[0], 1.0)))
    swapper.apply(None)
    return {"first_s": _r(first, 6), "later_s": _r(_med(later), 6), "first_vs_later": _r(first / _med(later), 3)}


def bench_demo(
    device: torch.device,
    quick: bool,
    timer: _Timer,
    demo_dir: Path | None,
    drift_swaps: int | None,
    drift_cycles: int | None,
    kernel_choice: str,
) -> dict:
    """The demo model: drift in all three dtypes (both methods), plus small-model timings for reference."""
    from lora_engine.demo.model import DEMO_LORAS, ensure_demo_assets

    assets = ensure_demo_assets(demo_dir)
    n_ours = drift_swaps if drift_swaps is not None else (30 if quick else 1000)
    n_theirs = drift_cycles if drift_cycles is not None else (6 if quick else 1000)
    out: dict = {"model_dir": str(assets.model_dir), "adapters": [s.repo_id for s in DEMO_LORAS], "drift": {}}
    files = {s.repo_id: assets.lora_dir(s.repo_id) / s.weight_name for s in DEMO_LORAS}
    rss: list[tuple[int, int]] = []
    first_swap: dict = {}
    for dname, dtype in _DTYPES.items():
        pipe, index, swapper, adapters = _demo_loaded(assets.model_dir, files, device, dtype, kernel_choice)
        modules = [(c, n) for (c, n) in index.layers]
        keys = sorted({(lay.component, lay.module) for a in adapters for lay in a.layers})
        first_swap[dname] = _first_vs_later(swapper, adapters, timer)
        base = {k: getattr(pipe, k[0]).get_submodule(k[1]).weight.detach().clone() for k in modules}
        swapper.keep_originals(keys)

        def live(keys=keys, pipe=pipe):
            return [_live_weight(getattr(pipe, c), n) for c, n in keys]

        # ours
        gc.collect()
        r0 = _rss()
        t0 = time.perf_counter()
        for i in range(n_ours):
            swapper.apply(adapters[i % len(adapters)], 1.0)
        swapper.apply(None)
        timer.sync()
        ours_s = time.perf_counter() - t0
        gc.collect()
        rss.append((r0, _rss()))
        ours = _compare(live(), [base[k] for k in keys])
        everything = _compare([_live_weight(getattr(pipe, c), n) for c, n in modules], [base[k] for k in modules])

        # diffusers: each adapter loaded once by name, then fuse_lora(adapter_names=[x]) -> unfuse_lora() per cycle.
        for rid, f in files.items():
            pipe.load_lora_weights(str(f.parent), weight_name=f.name, adapter_name=rid.replace("/", "_"))
        names = [rid.replace("/", "_") for rid in files]
        t0 = time.perf_counter()
        for i in range(n_theirs):
            pipe.fuse_lora(lora_scale=1.0, adapter_names=[names[i % len(names)]])
            pipe.unfuse_lora()
        timer.sync()
        theirs_s = time.perf_counter() - t0
        theirs = _compare(live(), [base[k] for k in keys])
        pipe.unload_lora_weights()
        out["drift"][dname] = {
            "ours": {
                "swaps": n_ours,
                "adapters": len(adapters),
                "swap_kernel": swapper.kernel_name,
                **ours,
                "all_layers_elements": everything["elements"],
                "per_swap_ms": _r(1000 * ours_s / max(1, n_ours), 3),
            },
            "diffusers_fuse_unfuse": {
                "cycles": n_theirs,
                **theirs,
                "per_cycle_ms": _r(1000 * theirs_s / max(1, n_theirs), 3),
            },
        }
        _log(f"demo drift {dname}: {out['drift'][dname]}")
        del pipe, swapper, adapters, base
        gc.collect()
    out["drift_method_diffusers"] = (
        "load_lora_weights(file, adapter_name) once per adapter, then per cycle "
        "fuse_lora(adapter_names=[x], lora_scale=1.0) -> unfuse_lora(), cycling over the adapters"
    )
    out["drift_method_ours"] = "Swapper.apply(adapter_i, 1.0) cycling over the adapters, then apply(None)"
    out["first_swap_after_load"] = first_swap
    out["rss"] = {
        "before": rss[0][0],
        "after": rss[-1][1],
        "growth_pct_per_dtype": [_r(100.0 * (b - a) / a, 3) for a, b in rss],
    }
    return out


# ---------------------------------------------------------------------------------------------- main


def _cpu_flags() -> list[str]:
    """The CPU features the swap kernels care about, as /proc/cpuinfo lists them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


def _tmp_parent(explicit: str | None) -> str | None:
    """A RAM-backed folder when there is room: a 5 GB ``save_pretrained`` to a slow disk takes about a minute.

    Loading from it is what ``from_pretrained`` does from a model file already in the page cache (the usual
    case on a server): the weights are memory-mapped pages, copied on first write.
    """
    if explicit:
        return explicit
    shm = Path("/dev/shm")
    need = 6 * 2**30
    if shm.is_dir() and os.access(shm, os.W_OK):
        if shutil.disk_usage(shm).free > need and psutil.virtual_memory().available > 3 * need:
            return str(shm)
    return None


def _check(name: str, value) -> bool | None:
    if value is None:
        return None
    op, target = TARGETS[name]
    return {"<=": value <= target, ">=": value >= target, "==": value == target, "<": value < target}[op]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and drift swaps (< 1 min on a CPU)")
    parser.add_argument("--demo-only", action="store_true", help="demo model only (drift; a few seconds)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *_DTYPES],
        help="full-size dtype (auto: bfloat16 on the CPU, float16 on CUDA)",
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "swap.json"))
    parser.add_argument("--demo-dir", default=None, help="demo model cache folder (default: the app's)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: os.cpu_count()); on a small shared VM, 1 is far less noisy",
    )
    parser.add_argument(
        "--tmp-dir",
        default=None,
        help="folder for the 5 GB model folder (default: /dev/shm when it has room, else the temp dir)",
    )
    parser.add_argument("--drift-swaps", type=int, default=None, help="demo drift: our swaps per dtype")
    parser.add_argument("--drift-cycles", type=int, default=None, help="demo drift: diffusers cycles per dtype")
    parser.add_argument(
        "--swap-kernel",
        default="auto",
        choices=["auto", "torch"],
        help="as LORA_ENGINE_SWAP_KERNEL: auto uses the one-pass AMX kernel for bf16 on a CPU with AMX",
    )
    args = parser.parse_args(argv)

    import diffusers
    import transformers

    # Quiet libraries for the run, and put everything back afterwards (main() also runs inside pytest).
    saved = (
        diffusers.utils.logging.get_verbosity(),
        diffusers.utils.logging.is_progress_bar_enabled(),
        transformers.utils.logging.get_verbosity(),
        transformers.utils.logging.is_progress_bar_enabled(),
        torch.get_num_threads(),
    )
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    try:
        with warnings.catch_warnings():
            # PEFT warns on every unfuse of a layer the fused adapter did not touch ("Already unmerged").
            warnings.filterwarnings("ignore", category=UserWarning, module="peft")
            return _run(args)
    finally:
        diffusers.utils.logging.set_verbosity(saved[0])
        (diffusers.utils.logging.enable_progress_bar if saved[1] else diffusers.utils.logging.disable_progress_bar)()
        transformers.utils.logging.set_verbosity(saved[2])
        if saved[3]:
            transformers.utils.logging.enable_progress_bar()
        else:
            transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(saved[4])


def _run(args) -> dict:
    import diffusers

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype = _DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.type == "cpu" else torch.float16)
    timer = _Timer(device)
    wall0 = time.perf_counter()
    cpu0, own0 = psutil.cpu_times(), psutil.Process().cpu_times()

    result: dict = {
        "bench": "swap",
        "quick": args.quick,
        "demo_only": args.demo_only,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "load_avg_start": _r(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
    }
    kernel = kernel_for(args.swap_kernel, device, dtype)
    result["machine"]["swap_kernel"] = {
        "choice": args.swap_kernel,
        "status": kernel.status.reason if kernel is not None else "not used for this device/dtype (torch.addmm)",
        "cpu_flags": _cpu_flags(),
    }
    demo_dir = Path(args.demo_dir) if args.demo_dir else None
    t0 = time.perf_counter()
    result["demo"] = bench_demo(
        device, args.quick, timer, demo_dir, args.drift_swaps, args.drift_cycles, args.swap_kernel
    )
    result["demo"]["wall_s"] = _r(time.perf_counter() - t0, 1)

    full = None
    if not args.demo_only:
        with tempfile.TemporaryDirectory(prefix="bench-swap-", dir=_tmp_parent(args.tmp_dir)) as tmp:
            t0 = time.perf_counter()
            full = bench_full(device, dtype, args.quick, timer, Path(tmp), kernel)
            full["wall_s"] = _r(time.perf_counter() - t0, 1)
        result["full"] = full

    drift = {d: v["ours"]["elements"] for d, v in result["demo"]["drift"].items()}
    drift_theirs = {d: v["diffusers_fuse_unfuse"]["elements"] for d, v in result["demo"]["drift"].items()}
    if full is not None:
        drift[f"full_{full['dtype']}"] = full["drift"]["ours"]["elements"]
        theirs = full["drift"].get("diffusers_fuse_unfuse", full["drift"]["diffusers_load_fuse_unfuse_unload"])
        drift_theirs[f"full_{full['dtype']}"] = theirs["elements"]
    warm_vs_memcpy = None if full is None else max(full["warm_vs_memcpy"].values())
    cycle_vs_warm = None if full is None else min(full["diffusers_cycle_vs_warm"].values())
    if full is not None and "first_swap_after_load" in full:
        first_vs_later = full["first_swap_after_load"]["first_vs_later"]
        first_from = f"full-size UNet from from_pretrained, {full['dtype']}"
    elif full is not None:  # --quick: the full-size UNet built in memory (no 5 GB folder written)
        first_vs_later = full["first_swap_in_memory"]["first_vs_later"]
        first_from = f"full-size UNet built in memory, {full['dtype']}"
    else:  # --demo-only: the demo model in the benchmark's dtype (tiny layers: per-call overhead dominates)
        first_vs_later = result["demo"]["first_swap_after_load"][str(dtype).removeprefix("torch.")]["first_vs_later"]
        first_from = f"demo model, {str(dtype).removeprefix('torch.')}"
    rss_growth = full["rss"]["growth_pct"] if full is not None else max(result["demo"]["rss"]["growth_pct_per_dtype"])
    result["ratios"] = {
        "warm_vs_memcpy": None if full is None else full["warm_vs_memcpy"],
        "warm_vs_memcpy_paired": None if full is None else full["warm_vs_memcpy_paired"],
        "swap_kernel": None if full is None else full["swap_kernel"],
        "torch_addmm_vs_memcpy": None if full is None else full.get("torch_addmm_vs_memcpy"),
        "diffusers_cycle_vs_warm": None if full is None else full["diffusers_cycle_vs_warm"],
        "diffusers_cycle_vs_warm_paired": None if full is None else full["diffusers_cycle_vs_warm_paired"],
        "first_vs_later": first_vs_later,
        "first_vs_later_measured_on": first_from,
    }
    result["drift_elements"] = drift
    result["drift_elements_diffusers"] = drift_theirs
    result["rss_growth_pct"] = rss_growth
    result["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    result["pass"] = {
        "warm_vs_memcpy": _check("warm_vs_memcpy", warm_vs_memcpy),
        "diffusers_cycle_vs_warm": _check("diffusers_cycle_vs_warm", cycle_vs_warm),
        "first_vs_later": _check("first_vs_later", first_vs_later),
        "drift_elements": all(v == 0 for v in drift.values()),
        "rss_growth_pct": _check("rss_growth_pct", rss_growth),
    }
    result["wall_s"] = _r(time.perf_counter() - wall0, 1)
    # How busy the machine was with other work during the run: timings are only comparable within one run.
    cpu1, own1 = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = sum(
        getattr(cpu1, f) - getattr(cpu0, f)
        for f in ("user", "system", "nice", "irq", "softirq", "steal")
        if hasattr(cpu1, f)
    )
    ours = (own1.user - own0.user) + (own1.system - own0.system)
    result["machine"]["load_avg_end"] = _r(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result["machine"]["other_processes_cpu_s"] = _r(max(0.0, busy - ours), 1)
    result["machine"]["this_process_cpu_s"] = _r(ours, 1)

    emit(result, args.out)
    return result


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
