"""Hare's compiled CPU kernels, built on first use and cached; PyTorch code paths stand in without them.

- `decode_attention()`: `torch.ops.hare.decode_attention`, one decoding step of attention over a KV cache
  whose prompt is shared by every row (`decode_attention.cpp`), and `decode_attention_qkv()`, the same step
  straight from the fused qkv projection (the new key and value written into the cache first);
- `winograd()`: `torch.ops.hare.winograd_input` / `winograd_output`, the transforms around the matrix
  products of `hare.models.packed.WinogradConv1d` (`winograd.cpp`);
- `group_norm()`: `torch.ops.hare.group_norm_time_major`, GroupNorm (with a per-row scale/shift and SiLU)
  over time-major rows, for the packed diffusion decoder (`group_norm.cpp`);
- `location_variable_conv()`: `torch.ops.hare.location_variable_conv`, UniVNet's per-segment convolution
  (`lvc.cpp`);
- `gpt_block_decode()`: `torch.ops.hare.gpt_block_decode`, a whole GPT block's decode step (both norms, the
  four panel-packed linears, the attention, the residuals) in one call (`gpt_block.cpp`);
- `panel_linear()`: `torch.ops.hare.panel_pack` / `panel_linear` / `panel_unpack`, float32 linear layers over
  few rows (the GPT's decode step) on weights packed once into 16-column panels, streamed once per call
  (`panel_linear.cpp`); its instruction-set variant (AVX-512, AVX2 or portable) is picked at run time from what
  the CPU reports (`panel_linear_variants()`);
- `panel_linear_int8()`: `torch.ops.hare.panel_pack_int8` / `panel_linear_int8` / `panel_unpack_int8`, the same
  with int8 weights (a scale per output column) and rows quantised on the fly, exact int32 sums (the fast
  path's GPT, `panel_int8.cpp`); variants AMX-int8, AVX-512-VNNI, AVX2 or portable (`panel_int8_variants()`);
- `row_taps()`: `torch.ops.hare.row_taps`, a convolution's input taps side by side for a block of time-major
  rows, the leaky ReLU before it fused in (the bf16 time-major HiFi-GAN, `row_taps.cpp`);
- `conv_rows()`: `torch.ops.hare.conv_rows_pack_bf16` / `conv_rows_bf16`, that convolution on AMX's bf16 tiles
  reading the taps in place, where the CPU has them (`conv_rows.cpp`; elsewhere `row_taps` and a matrix product).

Each returns None when unavailable. The kernels are one library (`hare_kernels.cpp` includes them all):
the first call on a machine compiles it with the machine's compiler (`$CXX`, else `c++`/`g++`) against the
installed PyTorch, tuned for this CPU (`-march=native`), about 10 s; it is cached under `$HARE_KERNEL_CACHE`
(default `$HARE_HOME/kernels`), keyed by the sources, flags, compiler, PyTorch version and CPU, and later
processes only load it (`python -m hare.kernels` builds it ahead and reports). Each kernel is checked against
plain PyTorch on a small input before it is used.

Without a compiler (or with `HARE_KERNELS=0`), or if building or the check fails, callers fall back to
PyTorch's kernels: the same results to float rounding, slower (the reason is logged once).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from hare.paths import hare_home

log = logging.getLogger(__name__)

_SOURCE_DIR = Path(__file__).resolve().parent
_lock = threading.Lock()
LIBRARY = "hare_kernels"
_ready: dict[str, bool] = {}  # kernel -> whether it is loaded and checked in this process (empty: not tried)
_library_path: str | None = None  # the library this process loaded (its ops cannot be registered twice)


def autograd_records(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record an operation on these tensors (grad mode on, one of them requiring grad).
    The compiled kernels (and oneDNN-packed layers) have no backward: callers use them only when this is False."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def enabled() -> bool:
    """False when `HARE_KERNELS` is 0/off/false/no: PyTorch's kernels are used instead."""
    return os.environ.get("HARE_KERNELS", "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    """Where built kernels are kept: `$HARE_KERNEL_CACHE`, else `$HARE_HOME/kernels`."""
    return Path(os.environ.get("HARE_KERNEL_CACHE") or hare_home() / "kernels")


def compiler() -> str | None:
    """The C++ compiler to build with (`$CXX`, else `c++` or `g++` on PATH), or None."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> str:
    """What -march=native depends on: the architecture and, on Linux, the CPU model and feature flags (read
    once per process: `bf16_matmul` asks for every synthesis)."""
    parts = [platform.machine()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part"):
                parts.append(line)
                if len(parts) > 3:
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _build_command(cxx: str, source: Path, output: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    return [cxx, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++20",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            *(f"-I{p}" for p in include_paths()), f"-I{_SOURCE_DIR}", str(source), f"-L{torch_lib}", "-lc10",
            "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}", "-o", str(output)]


def library_path(cxx: str) -> Path:
    """The cached kernel library built by `cxx`: its file name hashes everything the build depends on."""
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    sources = [f.read_text() for f in sorted([*_SOURCE_DIR.glob("*.cpp"), *_SOURCE_DIR.glob("*.h")])]
    key = hashlib.sha256("\0".join([
        *sources, " ".join(_build_command(cxx, Path("SRC"), Path("OUT"))), version, torch.__version__,
        _cpu_identity()]).encode()).hexdigest()[:20]
    return cache_dir() / f"{LIBRARY}-{key}.so"


def build() -> Path:
    """Compile the kernel library into the cache if it is not there yet; returns its path.

    Raises RuntimeError (with the compiler's output) when there is no compiler or the build fails.
    """
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    path = library_path(cxx)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.warning("building Hare's CPU kernels (once per machine, about 10 s) into %s", path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{LIBRARY}-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run(_build_command(cxx, _SOURCE_DIR / f"{LIBRARY}.cpp", Path(tmp)),
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line.lower()] or ["(no message)"]
            raise RuntimeError(f"building the kernels failed: {errors[0]}\n{done.stderr[-4000:]}")
        os.replace(tmp, path)  # atomic: a concurrent build or reader never sees a partial file
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"building the kernels failed: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _reference_attention(q, k, v, pk, pv, scale):
    """What decode_attention computes, in plain PyTorch: (batch, heads, d)."""
    b = q.shape[0]
    keys = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)
    values = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
    w = torch.softmax(torch.einsum("bhd,bhnd->bhn", q, keys) * scale, dim=-1)
    return torch.einsum("bhn,bhnd->bhd", w, values)


def _check_decode_attention() -> None:
    op = torch.ops.hare.decode_attention
    g = torch.Generator().manual_seed(0)
    for batch, heads, d, shared, own, position_major in ((3, 2, 64, 5, 7, True), (2, 3, 24, 0, 4, False),
                                                         (17, 1, 32, 3, 1, True)):
        q = torch.randn(batch, heads, d, generator=g)
        if position_major:
            k, v = (torch.randn(own, batch, heads, d, generator=g).permute(1, 2, 0, 3) for _ in range(2))
        else:
            k, v = (torch.randn(batch, heads, own, d, generator=g) for _ in range(2))
        pk, pv = (torch.randn(1, heads, shared, d, generator=g) for _ in range(2))
        _compare(op(q, k, v, pk[0], pv[0], d ** -0.5), _reference_attention(q, k, v, pk, pv, d ** -0.5))
    for batch, heads, d, shared, position in ((3, 2, 64, 5, 6), (2, 3, 24, 0, 0)):
        qkv = torch.randn(batch, 3 * heads * d, generator=g)
        k_cache, v_cache = (torch.randn(position + 2, batch, heads, d, generator=g) for _ in range(2))
        pk, pv = (torch.randn(heads, shared, d, generator=g) for _ in range(2))
        got = torch.ops.hare.decode_attention_qkv(qkv, k_cache, v_cache, position, pk, pv, heads, d ** -0.5)
        q, k, v = qkv.view(batch, 3, heads, d).unbind(1)
        _compare(torch.stack([k_cache[position], v_cache[position]]), torch.stack([k, v]))
        own_k, own_v = (c[: position + 1].permute(1, 2, 0, 3) for c in (k_cache, v_cache))
        want = _reference_attention(q, own_k, own_v, pk[None], pv[None], d ** -0.5)
        _compare(got, want.reshape(batch, heads * d))


def winograd_conv(x: torch.Tensor, filters: list[torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
    """A 3-wide 'same' convolution through the kernels: x (batch, frames, in) time-major -> (batch, frames, out);
    `filters`: the six transformed filters (out, in) G W of Winograd F(4,3), as plain matrices."""
    v = torch.ops.hare.winograd_input(x)
    m = [v[i] @ f.T for i, f in enumerate(filters)]
    return torch.ops.hare.winograd_output(m, bias, None, x.shape[0], x.shape[1])


def _check_winograd() -> None:
    from hare.kernels.reference import winograd_filters

    g = torch.Generator().manual_seed(0)
    for frames in (1, 4, 11):
        conv = torch.nn.Conv1d(24, 20, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            x = torch.randn(2, 24, frames, generator=g)
            want = conv(x).transpose(1, 2)
            got = winograd_conv(x.transpose(1, 2).contiguous(), winograd_filters(conv.weight), conv.bias)
        _compare(got, want)


def _check_group_norm() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 48, generator=g) * 3 + 1  # (batch, frames, channels)
    w, b, scale, shift = (torch.randn(*shape, generator=g) for shape in ((48,), (48,), (2, 48), (2, 48)))
    want = torch.nn.functional.group_norm(x.transpose(1, 2), 4, w, b, 1e-5).transpose(1, 2)
    _compare(torch.ops.hare.group_norm_time_major(x.contiguous(), 4, w, b, None, None, 1e-5, False), want)
    want = torch.nn.functional.silu(want * (1 + scale[:, None]) + shift[:, None])
    _compare(torch.ops.hare.group_norm_time_major(x.contiguous(), 4, w, b, scale, shift, 1e-5, True), want)


def _check_location_variable_conv() -> None:
    from hare.kernels.reference import location_variable_conv_reference

    g = torch.Generator().manual_seed(0)
    for hop, out in ((16, 8), (4, 6)):  # the blocked path, and the plain loops
        x = torch.randn(2, 3, 5 * hop, generator=g)
        kernel = torch.randn(2, 3, out, 3, 5, generator=g)
        bias = torch.randn(2, out, 5, generator=g)
        _compare(torch.ops.hare.location_variable_conv(x, kernel, bias, hop),
                 location_variable_conv_reference(x, kernel, bias, hop))


def _check_panel_linear() -> None:
    g = torch.Generator().manual_seed(0)
    ops = torch.ops.hare
    for variant in ops.panel_linear_variants():  # every variant this CPU runs, not only the one in use
        for rows, k, n, bias, gelu in ((3, 20, 37, True, False), (16, 33, 50, False, True), (17, 40, 48, True, True),
                                       (40, 300, 20, True, False), (1, 16, 1, False, False)):
            w, b, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(rows, k, generator=g)
            want = torch.nn.functional.linear(x, w, b if bias else None)
            if gelu:
                want = torch.nn.functional.gelu(want, approximate="tanh")
            _compare(ops.panel_linear(x, ops.panel_pack(w), b if bias else None, n, gelu, variant), want)
    w = torch.randn(21, 18, generator=g)
    _compare(ops.panel_unpack(ops.panel_pack(w), 21), w)
    _check_gpt_block(g)


def _check_panel_int8() -> None:
    from hare.kernels.reference import panel_linear_int8_reference

    g = torch.Generator().manual_seed(0)
    ops = torch.ops.hare
    for variant in ops.panel_int8_variants():
        for rows, k, n, bias, gelu in ((3, 20, 37, True, False), (16, 33, 50, False, True), (40, 300, 20, True, True),
                                       (1, 3, 1, False, False)):
            w, b, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(rows, k, generator=g)
            packed = ops.panel_pack_int8(w)
            got = ops.panel_linear_int8(x, *packed, b if bias else None, n, gelu, variant)
            _compare(got, panel_linear_int8_reference(x, w, b if bias else None, gelu))
    _check_gpt_block(g, int8=True)


def _check_gpt_block(g: torch.Generator, int8: bool = False) -> None:
    """gpt_block_decode against its parts (checked above) in PyTorch: LayerNorm, the linears, the attention; with
    `int8`, every linear on int8 panels, within int8's rounding of the float block (5 % of its largest output)."""
    from hare.kernels.reference import gpt_block_decode_reference

    ops = torch.ops.hare
    batch, heads, d, shared, position = 3, 2, 16, 4, 2
    dim = heads * d
    x = torch.randn(batch, dim, generator=g)
    norms = [torch.randn(dim, generator=g) for _ in range(4)]
    weights = [(torch.randn(o, i, generator=g) / i ** 0.5, torch.randn(o, generator=g))
               for o, i in ((3 * dim, dim), (dim, dim), (4 * dim, dim), (dim, 4 * dim))]
    caches = [torch.randn(position + 1, batch, heads, d, generator=g) for _ in range(2)]
    prefix = [torch.randn(heads, shared, d, generator=g) for _ in range(2)]
    pack = (lambda w: list(ops.panel_pack_int8(w))) if int8 else (lambda w: [ops.panel_pack(w)])
    packed = [t for w, b in weights for t in (pack(w), b)]
    got = ops.gpt_block_decode(x, *norms, 1e-5, *packed, *[c.clone() for c in caches], position, *prefix, heads)
    want = gpt_block_decode_reference(x, norms, weights, *caches, position, *prefix, heads)
    if not int8:
        _compare(got, want)
    elif not torch.allclose(got, want, atol=0.05 * want.abs().max().item(), rtol=0):
        raise RuntimeError(f"kernel check failed: int8 block, max difference {(got - want).abs().max().item()}")


def row_taps_reference(x: torch.Tensor, start: int, rows: int, kernel: int, dilation: int, padding: int,
                       slope: float | None) -> torch.Tensor:
    """What `row_taps` writes, in plain PyTorch: (rows, kernel * channels)."""
    frames, c = x.shape
    if slope is not None:
        x = torch.nn.functional.leaky_relu(x, slope)
    xp = torch.nn.functional.pad(x, (0, 0, padding, max(0, start + rows + dilation * (kernel - 1) - padding - frames)))
    return torch.cat([xp[start + j * dilation: start + j * dilation + rows] for j in range(kernel)], dim=1)


def _check_row_taps() -> None:
    g = torch.Generator().manual_seed(0)
    op = torch.ops.hare.row_taps
    for dtype in (torch.float32, torch.bfloat16):
        for frames, c, start, rows, kernel, dilation, padding, slope in (
                (20, 5, 0, 20, 3, 1, 1, 0.1), (9, 16, 4, 16, 7, 3, 9, None), (1, 3, 0, 2, 11, 5, 25, 0.01)):
            x = torch.randn(frames, c, generator=g).to(dtype)
            out = torch.full((rows + 2, kernel * c), 7.0, dtype=dtype)
            op(x, start, rows, kernel, dilation, padding, slope is not None, slope or 0.0, out)
            want = row_taps_reference(x, start, rows, kernel, dilation, padding, slope)
            if not torch.equal(out[:rows], want) or not bool((out[rows:] == 7).all()):
                raise RuntimeError(f"kernel check failed: row_taps {dtype}, max difference "
                                   f"{(out[:rows].float() - want.float()).abs().max().item()}")


def conv_rows_reference(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                        kernel: int, dilation: int, padding: int, out_rows: int, slope: float | None) -> torch.Tensor:
    """What `conv_rows_bf16` computes, in plain PyTorch (float32 sums of the bf16 values, one rounding to bf16 at
    the end): x (frames, in), weight_t (kernel x in, N) -> (out_rows, N)."""
    taps = row_taps_reference(x, 0, out_rows, kernel, dilation, padding, slope)
    y = taps.float() @ weight_t.float() + bias.float()
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


def _check_conv_rows() -> None:
    if not torch.ops.hare.conv_rows_bf16_ready():
        return  # not this CPU's (conv_rows() says so); nothing to check
    g = torch.Generator().manual_seed(0)
    for frames, c, n, kernel, dilation, padding, residual, slope in (
            (40, 32, 32, 11, 5, 25, True, 0.1), (7, 64, 96, 3, 1, 1, False, None), (3, 32, 64, 2, 1, 1, False, 0.1)):
        x = torch.randn(frames, c, generator=g).bfloat16()
        w = (torch.randn(kernel * c, n, generator=g) / (kernel * c) ** 0.5).bfloat16()
        b = torch.randn(n, generator=g)
        out_rows = frames + 2 * padding - dilation * (kernel - 1)
        r = torch.randn(out_rows, n, generator=g).bfloat16() if residual else None
        got = torch.ops.hare.conv_rows_bf16(x, torch.ops.hare.conv_rows_pack_bf16(w), b, r, kernel, dilation,
                                            padding, out_rows, slope is not None, slope or 0.0)
        want = conv_rows_reference(x, w, b, r, kernel, dilation, padding, out_rows, slope)
        # float32 sums in another order, then one bf16 rounding: within two of its steps of the largest value
        tol = 2 * 2.0 ** -8 * want.float().abs().max().item()
        if got.shape != want.shape or (got.float() - want.float()).abs().max().item() > tol:
            raise RuntimeError("kernel check failed: conv_rows_bf16")


def _compare(got: torch.Tensor, want: torch.Tensor) -> None:
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
        diff = (got - want).abs().max().item() if got.shape == want.shape else f"shape {tuple(got.shape)}"
        raise RuntimeError(f"kernel check failed: max difference {diff}")


_CHECKS = {"decode_attention": _check_decode_attention, "winograd": _check_winograd,
           "group_norm": _check_group_norm, "location_variable_conv": _check_location_variable_conv,
           "panel_linear": _check_panel_linear, "panel_int8": _check_panel_int8, "row_taps": _check_row_taps,
           "conv_rows": _check_conv_rows}


def _summary(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _load(name: str) -> bool:
    """Whether kernel `name` is usable: the library is built (once per machine) and loaded, and every kernel
    checked, on the first call in a process."""
    global _library_path
    with _lock:
        if not _ready:
            try:
                if _library_path is None:
                    path = str(build())
                    torch.ops.load_library(path)
                    _library_path = path
            except (RuntimeError, OSError) as exc:
                _ready.update(dict.fromkeys(_CHECKS, False))
                log.warning("Hare's CPU kernels are unavailable (%s); using PyTorch's slower kernels instead",
                            _summary(exc))
                log.debug("kernels: %s", exc)
            else:
                for kernel, check in _CHECKS.items():
                    try:
                        check()
                        _ready[kernel] = True
                    except (RuntimeError, AttributeError) as exc:
                        _ready[kernel] = False
                        log.warning("Hare's CPU kernel %r failed its check (%s); using PyTorch's slower kernels "
                                    "instead", kernel, _summary(exc))
        return _ready[name]


# compiler macros -> the vector/matrix extension they name, best first within each family
_TARGET_MACROS = (("__AMX_BF16__", "amx-bf16"), ("__AMX_INT8__", "amx-int8"), ("__AVX512BF16__", "avx512-bf16"),
                  ("__AVX512VNNI__", "avx512-vnni"), ("__AVX512F__", "avx512"), ("__AVX2__", "avx2"),
                  ("__FMA__", "fma"), ("__ARM_FEATURE_SVE", "sve"), ("__ARM_NEON", "neon"))


def targets() -> dict[str, object]:
    """What each CPU path runs on here, and why.

    - `kernels`: the extensions the compiled kernels use. They are built with `-march=native`, so the
      compiler targets exactly what this CPU offers (the library is cached per CPU identity); their 16-float
      vectors map to one AVX-512 register, two AVX2 ones or four NEON ones. Read from the compiler's own
      predefined macros for `-march=native`.
    - `pytorch`: the ISA PyTorch's CPU kernels dispatch to at run time (`torch.backends.cpu`), which the
      packed linears (oneDNN) and int8 layers (fbgemm/oneDNN) also pick for themselves.
    - `panel_linear`: the instruction-set variants of the few-row linear kernel this CPU runs, best first (the
      first is used; each is picked by what the CPU reports at run time), or None without the kernels;
      `panel_int8` the same for its int8 kernel (the fast path's GPT).
    - `bf16_matmul`: whether the CPU has bf16 matrix hardware (AMX tiles or AVX-512-bf16): only then is
      `dtype="bf16"` a speed option on a CPU; elsewhere bf16 is emulated and slower than fp32.
    """
    found: list[str] = []
    cxx = compiler()
    if cxx is not None:
        try:
            out = subprocess.run([cxx, "-march=native", "-dM", "-E", "-x", "c++", os.devnull],
                                 capture_output=True, text=True, timeout=30).stdout
            found = [name for macro, name in _TARGET_MACROS if f"#define {macro} " in out]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older PyTorch
        capability = "unknown"
    return {"kernels": found if cxx else None, "compiler": cxx, "pytorch": capability,
            "panel_linear": panel_linear_variants() or None, "panel_int8": panel_int8_variants() or None,
            "bf16_matmul": bf16_matmul()}


def bf16_matmul() -> bool:
    """Whether this CPU has bf16 matrix hardware (AMX-bf16 tiles or AVX-512-bf16), which oneDNN uses for
    PyTorch's bf16 matmuls and convolutions: there bf16 is faster than float32, elsewhere it is emulated."""
    return bool({"amx_bf16", "avx512_bf16"} & set(_cpu_identity().split()))


def status() -> dict[str, bool]:
    """Each kernel's availability (building and loading the library if that was not tried yet)."""
    if not enabled():
        return dict.fromkeys(_CHECKS, False)
    return {name: _load(name) for name in _CHECKS}


def decode_attention():
    """`torch.ops.hare.decode_attention(q, k, v, prefix_k, prefix_v, scale)`, or None when unavailable.

    q: (batch, heads, d); k, v: (batch, heads, own, d) views of a float32 KV cache (any strides, the last
    dimension contiguous; fastest position-major); prefix_k, prefix_v: (heads, shared, d), shared >= 0.
    Returns (batch, heads, d): softmax(scale q.k) v over the shared positions, then the row's own.
    """
    if not enabled() or not _load("decode_attention"):
        return None
    return torch.ops.hare.decode_attention


def decode_attention_qkv():
    """`torch.ops.hare.decode_attention_qkv(qkv, k_cache, v_cache, position, prefix_k, prefix_v, heads, scale)`,
    or None when unavailable.

    qkv: (batch, 3 * heads * d), rows contiguous: each row's new query, key and value side by side; k_cache,
    v_cache: (capacity, batch, heads, d) contiguous float32 (one layer of the position-major KV cache, each
    row's own positions); prefix_k, prefix_v: (heads, shared, d). Writes the key and value at `position`, then
    returns (batch, heads * d): decode_attention over the shared positions and own positions 0 .. position.
    """
    if not enabled() or not _load("decode_attention"):
        return None
    return torch.ops.hare.decode_attention_qkv


def winograd():
    """(`torch.ops.hare.winograd_input`, `torch.ops.hare.winograd_output`), or None when unavailable.

    winograd_input(x): x (batch, frames, channels) float32, channels contiguous -> (6, batch * tiles, channels),
    tiles = ceil(frames / 4), Winograd F(4,3)'s input transform B^T d of every 4-frame tile (zero-padded).
    winograd_output(m, bias, residual, batch, frames): the six (batch * tiles, out) products -> (batch, frames,
    out), the output transform A^T m plus the bias and a residual (batch, frames, out), each optional.
    `winograd_conv` shows them together.
    """
    if not enabled() or not _load("winograd"):
        return None
    return torch.ops.hare.winograd_input, torch.ops.hare.winograd_output


def group_norm():
    """`torch.ops.hare.group_norm_time_major(x, groups, weight, bias, scale, shift, eps, silu)`, or None.

    x: (batch, frames, channels) float32, contiguous (time-major); weight, bias: (channels,) or None; scale,
    shift: (batch, channels) or None. Returns silu((GroupNorm(x) * weight + bias) * (1 + scale) + shift) (SiLU
    only with `silu`), time-major.
    """
    if not enabled() or not _load("group_norm"):
        return None
    return torch.ops.hare.group_norm_time_major


def location_variable_conv():
    """`torch.ops.hare.location_variable_conv(x, kernel, bias, hop)`, or None when unavailable.

    x: (batch, in, frames * hop); kernel: (batch, in, out, 3, frames); bias: (batch, out, frames), float32.
    Returns (batch, out, frames * hop): each hop-sample segment convolved with its own 3-tap kernel.
    """
    if not enabled() or not _load("location_variable_conv"):
        return None
    return torch.ops.hare.location_variable_conv


def gpt_block_decode():
    """`torch.ops.hare.gpt_block_decode(x, ln1_weight, ln1_bias, ln2_weight, ln2_bias, eps, qkv_panels, qkv_bias,
    out_panels, out_bias, fc_panels, fc_bias, proj_panels, proj_bias, k_cache, v_cache, position, prefix_k,
    prefix_v, heads)`, or None when unavailable (it needs the few-row linear kernels and the decode attention).
    Each `*_panels` is a list: [panels] (float32, `panel_linear`) or [panels, scales, sums] (`panel_linear_int8`).

    One decode step of a pre-LayerNorm GPT-2 block for every row: x (batch, dim) -> x1 + proj(GELU-tanh(fc(ln2(x1))))
    with x1 = x + attn_out(attention(qkv(ln1(x)))); the linears panel-packed (`panel_linear`; the norms and the
    residuals fused into them), the attention as `decode_attention_qkv` (the new key and value written at
    `position` of the layer's cache).
    """
    if not enabled() or not _load("panel_linear") or not _load("decode_attention"):
        return None
    return torch.ops.hare.gpt_block_decode


def panel_linear():
    """(`torch.ops.hare.panel_pack`, `torch.ops.hare.panel_linear`, `torch.ops.hare.panel_unpack`), or None when
    unavailable.

    panel_pack(weight): weight (N, K) float32 -> panels (ceil(N / 16), K, 16), contiguous: 16 output columns
    per panel, k-major, zero past N. panel_linear(x, panels, bias, N, gelu_tanh, variant): x (M, K), rows
    contiguous -> (M, N), x W^T + bias (bias (N,) or None), GELU-tanh of it with `gelu_tanh`; `variant` "" picks
    the best this CPU runs, or names one of `panel_linear_variants()`. panel_unpack(panels, N) -> the (N, K)
    weight. Each weight is read once per call: at 16 rows the product is bound by memory bandwidth.
    """
    if not enabled() or not _load("panel_linear"):
        return None
    return torch.ops.hare.panel_pack, torch.ops.hare.panel_linear, torch.ops.hare.panel_unpack


def panel_linear_int8():
    """(`torch.ops.hare.panel_pack_int8`, `torch.ops.hare.panel_linear_int8`, `torch.ops.hare.panel_unpack_int8`),
    or None when unavailable.

    panel_pack_int8(weight): weight (N, K) float32 -> (panels (ceil(N / 16), ceil(K / 4), 16, 4) int8, scales
    (P * 16,) float32, sums (P * 16,) int32): each output column's weights as int8 with one symmetric scale
    (max |w| / 127), 16 columns per panel, 4 inputs per 4-byte group. panel_linear_int8(x, panels, scales, sums,
    bias, N, gelu_tanh, variant): x (M, K) float32 -> (M, N), each row quantised symmetrically to int8 and the
    products summed exactly in int32, then scaled back (`reference.panel_linear_int8_reference`); `variant` ""
    picks the best this CPU runs, or names one of `panel_int8_variants()`. panel_unpack_int8(panels, scales, N,
    K) -> the dequantised (N, K) weight.
    """
    if not enabled() or not _load("panel_int8"):
        return None
    return torch.ops.hare.panel_pack_int8, torch.ops.hare.panel_linear_int8, torch.ops.hare.panel_unpack_int8


def row_taps():
    """`torch.ops.hare.row_taps(x, start, rows, kernel, dilation, padding, leaky, slope, out)`, or None when
    unavailable.

    x: (frames, channels) contiguous float32 or bfloat16; out: (>= rows, kernel * channels) of x's dtype, rows
    contiguous. Writes out[r, j * channels + i] = f(x[start + r + j * dilation - padding, i]) for r < rows, zero
    where that row is outside x; f is the leaky ReLU of `slope` with `leaky`, else nothing
    (`row_taps_reference`, bit for bit).
    """
    if not enabled() or not _load("row_taps"):
        return None
    return torch.ops.hare.row_taps


def conv_rows():
    """(`torch.ops.hare.conv_rows_pack_bf16`, `torch.ops.hare.conv_rows_bf16`), or None where unavailable (no
    kernels, or a CPU or OS without AMX's bf16 tiles).

    conv_rows_pack_bf16(weight_t): a convolution's weight laid out (kernel x in, N) bf16, in and N multiples of
    32 -> the tiles' layout. conv_rows_bf16(x, packed, bias, residual, kernel, dilation, padding, out_rows,
    leaky, slope): x (frames, in) contiguous bf16, bias (N,) float32, residual (out_rows, N) bf16 or None ->
    (out_rows, N) bf16, out[t] = bias + residual[t] + sum_j f(x[t + j dilation - padding]) W_j, rows of x
    outside it zero, f the leaky ReLU of `slope` with `leaky` (`conv_rows_reference`, to float rounding): the
    time-major convolution of `row_taps` and a matrix product, without gathering the taps.
    """
    if not enabled() or not _load("conv_rows") or not torch.ops.hare.conv_rows_bf16_ready():
        return None
    return torch.ops.hare.conv_rows_pack_bf16, torch.ops.hare.conv_rows_bf16


def panel_int8_variants() -> list[str]:
    """The int8 few-row linear kernel's variants this CPU runs, best first ("amx-int8", "avx512-vnni", "avx2", "generic";
    the first is the one used), from what the CPU reports at run time; [] without the kernels."""
    if panel_linear_int8() is None:
        return []
    return list(torch.ops.hare.panel_int8_variants())


def panel_linear_variants() -> list[str]:
    """The few-row linear kernel's instruction-set variants this CPU runs, best first ("avx512", "avx2",
    "generic"; the first is the one used), from what the CPU reports at run time; [] without the kernels."""
    if panel_linear() is None:
        return []
    return list(torch.ops.hare.panel_linear_variants())
