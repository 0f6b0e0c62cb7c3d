"""The one-pass AMX swap kernel: built from source here, checked against float64 and against torch.addmm.

CI sets ``REQUIRE_SWAP_KERNEL=1`` (``.ci/run``): there a failed build is a failure. A CPU without AMX-BF16
skips the numeric tests with the kernel's own reason (shown by ``-ra``); the build test runs anyway.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

from lora_engine import Engine, EngineConfig
from lora_engine.adapters.parse import LayerIndex, load_adapter_file, parse_lora_state_dict
from lora_engine.demo.model import DEMO_LORAS
from lora_engine.pipeline.cpu_kernel import MAX_RANK, load_amx_addmm
from lora_engine.pipeline.swap import Swapper, weights_digest
from tests.lora_engine.conftest import fast, pixels


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(scope="module")
def kernel(kernel_dir):
    k = load_amx_addmm(kernel_dir)
    if not k.available:
        if k.status.library is None and os.environ.get("REQUIRE_SWAP_KERNEL"):
            pytest.fail(f"REQUIRE_SWAP_KERNEL is set but the kernel did not build: {k.status.reason}")
        pytest.skip(f"one-pass swap kernel unavailable: {k.status.reason}")
    return k


def test_builds_once_and_is_reused(kernel_dir, monkeypatch):
    """The library is built into the cache folder and a second load finds it; a broken compiler is a reason."""
    k = load_amx_addmm(kernel_dir)
    if k.status.library is None and not os.environ.get("REQUIRE_SWAP_KERNEL"):
        pytest.skip(f"kernel not built here: {k.status.reason}")
    assert k.status.library is not None, k.status.reason
    built = [p for p in os.listdir(kernel_dir) if p.endswith(".so")]
    assert len(built) == 1 and not [p for p in os.listdir(kernel_dir) if p.endswith(".tmp")]
    mtime = os.stat(k.status.library).st_mtime_ns
    load_amx_addmm.cache_clear()
    again = load_amx_addmm(kernel_dir)
    assert again.status.library == k.status.library and os.stat(k.status.library).st_mtime_ns == mtime

    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails, in a fresh folder
    broken = load_amx_addmm(kernel_dir + "-broken")
    assert not broken.available and "build or load failed" in broken.status.reason
    assert not [p for p in os.listdir(kernel_dir + "-broken") if p.endswith((".so", ".tmp"))]


def test_unwritable_cache_falls_back_to_the_temp_folder(monkeypatch, tmp_path):
    """A read-only or broken ``XDG_CACHE_HOME`` must not cost the kernel: it is built in the temp folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", "/dev/null/cache")  # mkdir there fails (not a directory)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own temp folder, not the shared /tmp
    load_amx_addmm.cache_clear()
    try:
        k = load_amx_addmm()
        if k.status.library is None and not os.environ.get("REQUIRE_SWAP_KERNEL"):
            pytest.skip(f"kernel not built here: {k.status.reason}")
        assert k.status.library is not None, k.status.reason
        assert k.status.library.startswith(str(tmp_path / f"sdxl-lora-server-{os.getuid()}"))
    finally:
        load_amx_addmm.cache_clear()


def test_a_library_or_folder_others_can_write_is_never_loaded(kernel_dir, tmp_path):
    """ctypes runs whatever it loads: a cached library another user could have replaced is refused."""
    k = load_amx_addmm(kernel_dir)
    if k.status.library is None and not os.environ.get("REQUIRE_SWAP_KERNEL"):
        pytest.skip(f"kernel not built here: {k.status.reason}")
    shared = tmp_path / "shared"
    shutil.copytree(kernel_dir, shared)
    library = shared / os.path.basename(k.status.library)
    os.chmod(library, 0o666)
    refused = load_amx_addmm(str(shared))
    assert not refused.available and "only this user can write" in refused.status.reason

    open_folder = tmp_path / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)
    refused = load_amx_addmm(str(open_folder))
    assert not refused.available and "only this user can write" in refused.status.reason
    assert not list(open_folder.iterdir())  # nothing was built there either


def _operands(m, n, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    orig = torch.randn(m, n, generator=g).to(torch.bfloat16)
    b = (torch.randn(m, r, generator=g) * 0.05).to(torch.bfloat16)
    a = (torch.randn(r, n, generator=g) * 0.05).to(torch.bfloat16)
    return orig, b, a


# Full 16 x 32 blocks, an odd last 16 columns, leftover rows and columns, leftover rows under streamed lines,
# odd ranks, ranks 1 and 2, 3 and 4 tiles deep.
SHAPES = [
    (64, 64, 8),
    (320, 640, 32),
    (48, 80, 33),
    (37, 53, 3),
    (37, 64, 8),
    (16, 48, 1),
    (33, 100, 64),
    (32, 64, 80),
    (32, 96, MAX_RANK),
]


@pytest.mark.parametrize("m,n,r", SHAPES, ids=lambda v: str(v))
def test_rounds_the_exact_result_once(kernel, m, n, r):
    """Each element is the float64 result rounded to bf16 (a rare 1-ulp tie-break aside), like torch's."""
    orig, b, a = _operands(m, n, r)
    alpha = 0.75
    out = torch.empty_like(orig)
    assert kernel.addmm_(out, orig, b, a, alpha)

    exact = orig.double() + alpha * (b.double() @ a.double())
    rounded = exact.to(torch.bfloat16)
    off = out != rounded
    assert off.float().mean().item() < 1e-3, f"{int(off.sum())} of {out.numel()} elements off"
    if off.any():  # only ties within float32 accumulation error: one bf16 step at most
        ulp = (rounded.float().abs() * 2.0**-7).clamp_min(2.0**-133)
        assert ((out.float() - rounded.float()).abs()[off] <= ulp[off] * 1.01).all()
    ref = torch.addmm(orig, b, a, alpha=alpha)
    assert (out.double() - exact).abs().max() <= (ref.double() - exact).abs().max() + 1e-6


def _unaligned_like(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` starting 2 bytes into its storage (not on a cache line: no streaming stores)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("m,n,r", [(320, 1280, 8), *SHAPES], ids=lambda v: str(v))
def test_in_place_equals_from_original_bit_for_bit(kernel, m, n, r):
    """A layer at its original is updated in place; a layer holding another adapter is rebuilt from the
    original: both must give the same bits, or an adapter would look different depending on what ran before.
    Nor may the bits depend on alignment (streamed or plain stores) or on the number of threads."""
    orig, b, a = _operands(m, n, r, seed=1)
    out = torch.full_like(orig, 7.0)  # another adapter's values: must not leak in
    assert kernel.addmm_(out, orig, b, a, 1.3)
    in_place = orig.clone()
    assert kernel.addmm_(in_place, in_place, b, a, 1.3)
    assert torch.equal(out, in_place)
    assert kernel.addmm_(out, orig, b, a, 1.3) and torch.equal(out, in_place)  # and again: repeatable

    unaligned = _unaligned_like(orig)
    assert kernel.addmm_(unaligned, unaligned, b, a, 1.3) and torch.equal(unaligned, in_place)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = torch.empty_like(orig)
        assert kernel.addmm_(one, orig, b, a, 1.3) and torch.equal(one, in_place)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(0, 64), (64, 0), (0, 0)])
def test_empty_layers_are_fine(kernel, shape):
    m, n = shape
    out = torch.empty(m, n, dtype=torch.bfloat16)
    b, a = torch.ones(m, 4, dtype=torch.bfloat16), torch.ones(4, n, dtype=torch.bfloat16)
    assert kernel.addmm_(out, out, b, a, 1.0)


def test_subnormals_count_as_zero_everywhere(kernel):
    """Blocks (tile unit) and leftovers (scalar code) follow the same rule for numbers below 1.2e-38."""
    orig = torch.full((37, 53), 1e-39).to(torch.bfloat16)  # a subnormal in bf16 as in fp32
    assert (orig != 0).all()
    b, a = torch.zeros(37, 4, dtype=torch.bfloat16), torch.zeros(4, 53, dtype=torch.bfloat16)
    out = torch.empty_like(orig)
    assert kernel.addmm_(out, orig, b, a, 1.0)
    assert (out == 0).all()


def test_alpha_zero_is_the_original(kernel):
    orig, b, a = _operands(64, 96, 16, seed=2)
    out = torch.empty_like(orig)
    assert kernel.addmm_(out, orig, b, a, 0.0)
    assert torch.equal(out, orig)


@pytest.mark.parametrize(
    "case",
    [
        "float32",
        "non-contiguous",
        "rank-too-large",
        "shape-mismatch",
        "float16",
        "partial-overlap",
        "factor-overlaps-out",
    ],
)
def test_declines_what_it_does_not_do_and_writes_nothing(kernel, case):
    orig, b, a = _operands(64, 64, 8)
    out = torch.zeros_like(orig)
    if case == "float32":
        out, orig, b, a = out.float(), orig.float(), b.float(), a.float()
    elif case == "float16":
        out, orig, b, a = out.half(), orig.half(), b.half(), a.half()
    elif case == "non-contiguous":
        orig = orig.t()
    elif case == "rank-too-large":
        b = torch.zeros(64, MAX_RANK + 1, dtype=torch.bfloat16)
        a = torch.zeros(MAX_RANK + 1, 64, dtype=torch.bfloat16)
    elif case == "shape-mismatch":
        a = a[:, :32].contiguous()
    elif case == "partial-overlap":  # out starts one row into orig: threads would read rows already written
        buf = torch.zeros(65 * 64, dtype=torch.bfloat16)
        orig, out = buf[: 64 * 64].view(64, 64), buf[64:].view(64, 64)
    elif case == "factor-overlaps-out":
        buf = torch.zeros(64 * 64 + 64 * 8, dtype=torch.bfloat16)
        out, b = buf[: 64 * 64].view(64, 64), buf[64 * 60 : 64 * 60 + 64 * 8].view(64, 8)
    before = out.clone()
    assert kernel.addmm_(out, orig, b, a, 1.0) is False
    assert torch.equal(out, before)


def _demo_adapters(index, demo_assets):
    return [
        parse_lora_state_dict(
            s.repo_id,
            *load_adapter_file(s.repo_id, demo_assets.lora_dir(s.repo_id) / s.weight_name, max_bytes=1 << 30),
            index,
        ).to(torch.device("cpu"), torch.bfloat16)
        for s in DEMO_LORAS
    ]


def test_swapper_with_kernel_agrees_with_torch_and_restores_exactly(kernel, load_demo_pipeline, demo_assets):
    """On the bf16 demo pipeline: every demo adapter (PEFT and kohya, UNet and both text encoders) gives the
    weights torch.addmm gives (within one bf16 step), adapters repeat bit for bit, the base comes back."""
    ours_pipe = load_demo_pipeline().to(dtype=torch.bfloat16)
    ref_pipe = load_demo_pipeline().to(dtype=torch.bfloat16)
    index = LayerIndex.from_pipeline(ours_pipe)
    ours = Swapper(ours_pipe, index, kernel=kernel)
    ref = Swapper(ref_pipe, LayerIndex.from_pipeline(ref_pipe))
    assert ours.kernel_name == "amx-bf16" and ref.kernel_name == "torch.addmm"
    start = weights_digest(ours_pipe)
    adapters = _demo_adapters(index, demo_assets)
    first = {}
    for adapter in adapters * 2:
        ours.apply(adapter, 0.8)
        ref.apply(adapter, 0.8)
        for key, w in ours._weights.items():
            torch.testing.assert_close(w, ref._weights[key], rtol=2**-7, atol=1e-6)
        digest = weights_digest(ours_pipe)
        assert first.setdefault(adapter.adapter_id, digest) == digest, f"{adapter.adapter_id} changed on round 2"
    ours.apply(None)
    assert weights_digest(ours_pipe) == start and ours.verify_base()


def test_engine_uses_the_kernel_for_bf16_on_cpu(kernel, demo_assets, tmp_path):
    """``LORA_ENGINE_DTYPE=bfloat16`` on this CPU: the engine swaps with the kernel; ``swap_kernel="torch"``
    does not; both draw (nearly) the same picture, and the base digest survives swaps."""
    pictures = {}
    for choice in ("auto", "torch"):
        engine = Engine.from_config(
            EngineConfig(
                demo_dir=str(demo_assets.root),
                hub_cache_dir=str(tmp_path / choice),
                dtype="bfloat16",
                swap_kernel=choice,
            )
        )
        try:
            assert engine.backend.swapper.kernel_name == ("amx-bf16" if choice == "auto" else "torch.addmm")
            base = pixels(engine.generate(fast()))
            pictures[choice] = pixels(engine.generate(fast(lora=DEMO_LORAS[2].repo_id)))
            assert not np.array_equal(pictures[choice], base)
            assert np.array_equal(pixels(engine.generate(fast())), base)
            assert engine.current_digest() == engine.base_digest
        finally:
            engine.close()
    # One bf16 rounding step apart in a few weights: the pictures agree up to a little noise.
    assert np.abs(pictures["auto"] - pictures["torch"]).mean() < 2.0
