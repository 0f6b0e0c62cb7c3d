"""The swap's one-pass ``W = original + alpha * (B @ A)`` for bfloat16 weights on CPUs with AMX.

What this is for: building (once, with the system C compiler) and calling ``csrc/lora_addmm_amx.c``, which
writes each touched weight in a single pass. torch has no CPU op for ``out = C + alpha * A @ B`` with
``out`` different from ``C`` that does not first copy ``C`` into ``out``; that second pass is why the swap
measured 2.2-2.5x the copy floor on full-size SDXL shapes in bf16 on a 2-core Sapphire Rapids, against the
target of 2x (``bench/swap.py``'s ``TARGETS``). With this kernel: 1.33x at rank 8, 1.49x at rank 32
(``bench/swap.py``, full run).

What it is not for: float32/float16 weights, accelerators, ranks above 128, or CPUs without AMX-BF16: for
those :meth:`AmxAddmm.addmm_` returns ``False`` and the swapper uses ``torch.addmm`` as before. Nothing is
built or loaded at import; :func:`load_amx_addmm` does it on first use and says why when it cannot.

The library is cached under ``~/.cache/sdxl-lora-server/kernels/`` (``XDG_CACHE_HOME`` respected; the temp
folder when that cannot be written), named by a hash of the source, the flags and the compiler's version, and
written atomically, so processes sharing a cache never load a half-written file. A folder or library that
another user could write is never used (ctypes would run their code in this process). ctypes releases the
GIL for the call; the kernel's OpenMP threads are torch's own (the same ``libgomp`` soname, already loaded by
torch, is reused).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["AmxAddmm", "KernelStatus", "kernel_for", "load_amx_addmm"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "lora_addmm_amx.c"
# Explicit ISA flags, not -march=native: the library must not use instructions lw_available() did not check.
CFLAGS = ("-O2", "-mavx512f", "-mavx512bw", "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-fopenmp", "-shared", "-fPIC")
#: Ranks the kernel handles (the inner dimension is tiled 32 deep, at most 4 tiles).
MAX_RANK = 128
_BUILD_TIMEOUT_S = 120


@dataclass(frozen=True)
class KernelStatus:
    """Whether the kernel can be used in this process, and why not.

    Args:
        available (`bool`): built, loaded, and this CPU has AMX-BF16 with the tile state granted.
        reason (`str`): what was found (``"ready"``, or why not: no compiler, build error, no AMX...).
        library (`str`, *optional*): the shared library's path once built.
    """

    available: bool
    reason: str
    library: str | None = None


class AmxAddmm:
    """The loaded kernel; :meth:`addmm_` does the work where it applies. Build with :func:`load_amx_addmm`."""

    name = "amx-bf16"

    def __init__(self, status: KernelStatus, lib: ctypes.CDLL | None):
        self.status = status
        self._fn = None
        if lib is not None:
            fn = lib.lw_addmm_bf16
            p, i64 = ctypes.c_void_p, ctypes.c_int64
            fn.argtypes = [p, p, p, p, i64, i64, i64, ctypes.c_float, ctypes.c_int]
            fn.restype = ctypes.c_int
            self._fn = fn

    @property
    def available(self) -> bool:
        return self._fn is not None

    def applies(self, out: torch.Tensor, orig: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> bool:
        """Whether :meth:`addmm_` would do this one (bf16 CPU contiguous 2-D operands, rank 1..128)."""
        if self._fn is None:
            return False
        tensors = (out, orig, b, a)
        if any(t.layout != torch.strided or t.device.type != "cpu" or t.dtype != torch.bfloat16 for t in tensors):
            return False
        if any(t.dim() != 2 or not t.is_contiguous() for t in tensors):
            return False
        m, n = out.shape
        r = b.shape[1]
        if not (orig.shape == out.shape and b.shape[0] == m and a.shape == (r, n) and 1 <= r <= MAX_RANK):
            return False
        # The kernel's threads read and write rows in any order: ``out`` may be ``orig`` itself, but must not
        # partly overlap it, nor overlap the factors.
        same = out.data_ptr() == orig.data_ptr()
        return (same or not _overlap(out, orig)) and not _overlap(out, b) and not _overlap(out, a)

    def addmm_(self, out: torch.Tensor, orig: torch.Tensor, b: torch.Tensor, a: torch.Tensor, alpha: float) -> bool:
        """``out = orig + alpha * (b @ a)`` in one pass (``out`` may be ``orig``); ``False`` if it does not apply.

        Raises:
            MemoryError: the kernel's scratch (a packed copy of ``a`` and ``b``) could not be allocated.
        """
        if not self.applies(out, orig, b, a):
            return False
        m, n = out.shape
        code = self._fn(
            out.data_ptr(),
            orig.data_ptr(),
            b.data_ptr(),
            a.data_ptr(),
            m,
            n,
            b.shape[1],
            float(alpha),
            torch.get_num_threads(),
        )
        if code == 2:
            # Not a silent fallback to torch.addmm: its bits differ slightly, and an adapter must give the same
            # weights every time. The swapper rolls back to the base and the request fails cleanly instead.
            raise MemoryError(f"lora_addmm_amx: no memory for the packed factors of a {m}x{n} rank-{b.shape[1]} layer")
        if code != 0:
            raise RuntimeError(f"lora_addmm_amx returned {code} for a {m}x{n} rank-{b.shape[1]} layer")
        return True


def _overlap(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the bytes of two contiguous tensors overlap."""
    if x.numel() == 0 or y.numel() == 0:
        return False
    x0, y0 = x.data_ptr(), y.data_ptr()
    return x0 < y0 + y.numel() * y.element_size() and y0 < x0 + x.numel() * x.element_size()


def _cache_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "sdxl-lora-server" / "kernels"


def _compiler() -> list[str] | None:
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])  # "ccache gcc" is a command with an argument
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


class _CompileError(Exception):
    """Raised when the compiler rejects the source (another folder would not help)."""


class _UnsafePath(OSError):
    """Raised when a cache folder or library could be written by another user (so must not be loaded)."""


def _check_private(path: Path, *, folder: bool) -> None:
    """Refuse what another user could have written: ctypes runs whatever library it is given."""
    st = os.lstat(path)
    right_kind = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
    if not right_kind or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise _UnsafePath(
            f"{path} is not a {'folder' if folder else 'file'} only this user can write "
            f"(owner uid {st.st_uid}, mode {oct(st.st_mode & 0o777)})"
        )


def _build(compiler: list[str], folder: Path) -> Path:
    """Compile the source into ``folder`` (or reuse an identical earlier build); returns the library path."""
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode() + version.encode()).hexdigest()[:16]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder, folder=True)
    target = folder / f"lora_addmm_amx-{digest}.so"
    if target.exists():
        _check_private(target, folder=False)
        return target
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=folder)
    os.close(fd)
    try:
        proc = subprocess.run(
            [*compiler, *CFLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S
        )
        if proc.returncode != 0:
            raise _CompileError(f"{' '.join(compiler)} exited with {proc.returncode}: {proc.stderr.strip()[:500]}")
        os.replace(tmp, target)  # atomic: another process sees no file or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def load_amx_addmm(cache_dir: str | None = None) -> AmxAddmm:
    """Build (first time) and load the kernel; always returns an :class:`AmxAddmm`, check ``.available``.

    Built once per cache folder and process; the result's ``status.reason`` says why it is unavailable
    (not x86-64 Linux, no C compiler, a build error, no AMX on this CPU, tile state refused by the kernel).
    Folders tried in turn: ``cache_dir`` (or the user's cache, then ``$TMPDIR/sdxl-lora-server-<uid>``), and
    last a fresh private temp folder; a folder or library another user could write is never used.
    """
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        where = f"{platform.system()} {platform.machine()}"
        return AmxAddmm(KernelStatus(False, f"needs x86-64 Linux, this is {where}"), None)
    compiler = _compiler()
    if compiler is None:
        return AmxAddmm(KernelStatus(False, "no C compiler (cc, gcc or $CC) found"), None)
    if cache_dir:
        folders = [Path(cache_dir)]
    else:
        folders = [_cache_dir(), Path(tempfile.gettempdir()) / f"sdxl-lora-server-{os.getuid()}" / "kernels"]
    path = None
    failures = []
    try:
        for folder in folders:
            try:
                path = _build(compiler, folder)
                break
            except OSError as exc:  # unwritable, or writable by others: try the next folder
                failures.append(str(exc))
        if path is None and not cache_dir:
            path = _build(compiler, Path(tempfile.mkdtemp(prefix="sdxl-lora-server-kernel-")))  # this process only
        if path is None:
            raise OSError("; ".join(failures))
        lib = ctypes.CDLL(str(path))
    except (_CompileError, subprocess.SubprocessError, OSError) as exc:
        return AmxAddmm(KernelStatus(False, f"build or load failed: {exc}"), None)
    lib.lw_available.restype = ctypes.c_int
    if lib.lw_available() != 1:
        return AmxAddmm(
            KernelStatus(False, "this CPU has no AMX-BF16/AVX512-BF16, or the OS refused tile state", str(path)), None
        )
    return AmxAddmm(KernelStatus(True, "ready", str(path)), lib)


def kernel_for(choice: str, device: torch.device, dtype: torch.dtype) -> AmxAddmm | None:
    """The kernel ``EngineConfig.swap_kernel`` asks for on this device and dtype: ``"auto"`` loads it for bf16
    weights on the CPU (check ``.available``); anything else, or ``"torch"``, gets ``None`` (torch.addmm)."""
    if choice == "auto" and device.type == "cpu" and dtype == torch.bfloat16:
        return load_amx_addmm()
    return None
