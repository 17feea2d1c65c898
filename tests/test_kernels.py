"""Hare's compiled CPU kernels (hare.kernels): results against plain PyTorch, the GPT's decoding with and
without them, input checks, and the fallback when no kernel can be built. (The Winograd convolution with and
without its kernels: tests/test_packed.py.)"""

import logging

import pytest
import torch

from hare import kernels
from hare.kernels import _reference_attention
from hare.models.configs import GPTConfig
from hare.models.gpt import GPT
from hare.kernels.reference import winograd_filters

op = kernels.decode_attention()
needs_kernel = pytest.mark.skipif(op is None, reason="no C++ compiler: Hare's kernels cannot be built here")
needs_winograd = pytest.mark.skipif(kernels.winograd() is None,
                                    reason="no C++ compiler: Hare's kernels cannot be built here")


def _inputs(batch, heads, d, shared, own, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    # strided, as the GPT's queries (a slice of the fused qkv projection)
    q = torch.randn(batch, 1, 3 * heads * d, generator=g)[..., : heads * d].view(batch, heads, d)
    if layout == "position-major":  # Hare's KV cache: (position, batch, heads, d) with spare capacity
        k, v = (torch.randn(own + 2, batch, heads, d, generator=g)[:own].permute(1, 2, 0, 3) for _ in range(2))
    else:
        k, v = (torch.randn(batch, heads, own + 3, d, generator=g)[:, :, :own] for _ in range(2))
    pk, pv = (torch.randn(1, heads, shared, d, generator=g) * 2 for _ in range(2))
    return q, k, v, pk, pv


@needs_kernel
@pytest.mark.parametrize("batch,heads,d,shared,own", [
    (16, 16, 64, 34, 100),  # the official GPT's decoding: 16 candidates after a 34-position prompt
    (16, 16, 64, 34, 1),
    (3, 5, 64, 0, 7),  # no shared prefix; 15 (row, head) items: a partial vector of lanes
    (2, 2, 32, 9, 0),  # only the prefix (the first code)
    (17, 3, 16, 4, 20),
    (2, 3, 128, 5, 40),
    (2, 2, 112, 3, 6),
    (4, 2, 24, 6, 11),  # a head size the vectorised path does not take: plain loops
])
@pytest.mark.parametrize("layout", ["position-major", "head-major"])
def test_decode_attention_matches_pytorch(batch, heads, d, shared, own, layout):
    q, k, v, pk, pv = _inputs(batch, heads, d, shared, own, layout)
    got = op(q, k, v, pk[0], pv[0], d ** -0.5)
    want = _reference_attention(q, k, v, pk, pv, d ** -0.5)
    assert got.shape == (batch, heads, d) and got.is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("batch,heads,d,shared,own", [(16, 16, 64, 34, 100), (3, 5, 64, 0, 7), (2, 2, 32, 9, 0),
                                                      (4, 2, 24, 6, 11)])
def test_decode_attention_reads_a_bfloat16_cache(batch, heads, d, shared, own):
    """A bfloat16 cache (the fast path's, half the bytes) with a float32 query: the float32 attention over the
    cache's values widened exactly, vectorised and plain-loop head sizes alike."""
    q, k, v, pk, pv = _inputs(batch, heads, d, shared, own, "position-major", seed=d + own)
    k, v, pk, pv = (t.bfloat16() for t in (k, v, pk, pv))
    got = op(q, k, v, pk[0], pv[0], d ** -0.5)
    want = _reference_attention(q, k.float(), v.float(), pk.float(), pv.float(), d ** -0.5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="one dtype"):
        op(q, k, v.float(), pk[0], pv[0], 1.0)


@needs_kernel
def test_decode_attention_qkv_rounds_into_a_bfloat16_cache():
    g = torch.Generator().manual_seed(3)
    batch, heads, d, position = 4, 2, 32, 5
    qkv = torch.randn(batch, 3 * heads * d, generator=g)
    width = heads * d  # ties between two bfloat16 values (round to the even one), and its largest finite values
    qkv[0, width: width + 4] = torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 3.3895e38])
    k_cache, v_cache = (torch.randn(position + 2, batch, heads, d, generator=g).bfloat16() for _ in range(2))
    pk, pv = (torch.randn(heads, 3, d, generator=g).bfloat16() for _ in range(2))
    got = kernels.decode_attention_qkv()(qkv, k_cache, v_cache, position, pk, pv, heads, d ** -0.5)
    q, k, v = qkv.view(batch, 3, heads, d).unbind(1)
    assert torch.equal(k_cache[position], k.bfloat16()) and torch.equal(v_cache[position], v.bfloat16())
    own_k, own_v = (c[: position + 1].permute(1, 2, 0, 3).float() for c in (k_cache, v_cache))
    want = _reference_attention(q, own_k, own_v, pk[None].float(), pv[None].float(), d ** -0.5)
    torch.testing.assert_close(got, want.reshape(batch, heads * d), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_decode_attention_softmax_edges():
    # scores far apart (weights that underflow to 0) and all equal (uniform weights): still exact
    q, k, v, pk, pv = _inputs(2, 2, 64, 3, 5, "position-major", seed=1)
    for scale in (40.0, 0.0):
        torch.testing.assert_close(op(q, k, v, pk[0], pv[0], scale),
                                   _reference_attention(q, k, v, pk, pv, scale), atol=1e-5, rtol=1e-5)
    uniform = op(q, k, v, pk[0], pv[0], 0.0)
    torch.testing.assert_close(uniform, torch.cat([pv.expand(2, -1, -1, -1), v], 2).mean(2), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_decode_attention_rejects_bad_inputs():
    q, k, v, pk, pv = _inputs(2, 2, 16, 1, 3, "head-major")
    with pytest.raises(RuntimeError, match="float32"):
        op(q.double(), k, v, pk[0], pv[0], 1.0)
    with pytest.raises(RuntimeError, match="match"):
        op(q, k[:1], v[:1], pk[0], pv[0], 1.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(q, k.transpose(2, 3), v.transpose(2, 3), pk[0], pv[0], 1.0)
    with pytest.raises(RuntimeError, match="at least one key"):
        op(q, k[:, :, :0], v[:, :, :0], pk[0, :, :0], pv[0, :, :0], 1.0)


@needs_kernel
@pytest.mark.parametrize("batch,heads,d,shared,position", [(16, 16, 64, 34, 50), (3, 2, 24, 0, 0), (2, 4, 32, 5, 0),
                                                           (5, 1, 128, 3, 7)])
def test_decode_attention_qkv_stores_then_attends(batch, heads, d, shared, position):
    """From the fused projection: the new key/value land at `position` of the layer's position-major cache (nothing
    else is written), and the result is the attention over the prefix and own positions 0 .. position."""
    g = torch.Generator().manual_seed(position)
    qkv = torch.randn(batch, 3 * heads * d, generator=g)
    k_cache, v_cache = (torch.randn(position + 3, batch, heads, d, generator=g) for _ in range(2))
    before_k, before_v = k_cache.clone(), v_cache.clone()
    pk, pv = (torch.randn(heads, shared, d, generator=g) for _ in range(2))
    got = kernels.decode_attention_qkv()(qkv, k_cache, v_cache, position, pk, pv, heads, d ** -0.5)
    q, k, v = qkv.view(batch, 3, heads, d).unbind(1)
    assert torch.equal(k_cache[position], k) and torch.equal(v_cache[position], v)
    rest = [i for i in range(position + 3) if i != position]
    assert torch.equal(k_cache[rest], before_k[rest]) and torch.equal(v_cache[rest], before_v[rest])
    own_k, own_v = (c[: position + 1].permute(1, 2, 0, 3) for c in (k_cache, v_cache))
    want = _reference_attention(q, own_k, own_v, pk[None], pv[None], d ** -0.5)
    assert got.shape == (batch, heads * d) and got.is_contiguous()
    torch.testing.assert_close(got, want.reshape(batch, heads * d), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_decode_attention_qkv_rejects_bad_inputs():
    op = kernels.decode_attention_qkv()
    qkv, cache, prefix = torch.randn(2, 3 * 2 * 16), torch.randn(4, 2, 2, 16), torch.randn(2, 1, 16)
    with pytest.raises(RuntimeError, match="outside"):
        op(qkv, cache, cache.clone(), 4, prefix, prefix, 2, 1.0)
    with pytest.raises(RuntimeError, match="matching"):
        op(qkv[:, :90], cache, cache.clone(), 0, prefix, prefix, 2, 1.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(qkv, cache.transpose(1, 2), cache.transpose(1, 2), 0, prefix, prefix, 2, 1.0)
    with pytest.raises(RuntimeError, match="float32"):
        op(qkv.double(), cache, cache.clone(), 0, prefix, prefix, 2, 1.0)


def _tiny_gpt(packed=False, int8=False):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(dim=64, heads=4, layers=2, text_vocab=64, start_text_token=64, mel_vocab=120,
                        start_mel_token=118, stop_mel_token=119, max_text_tokens=30, max_mel_tokens=22,
                        cond_attn_blocks=1, n_mels=16)).eval()
    if packed or int8:
        from hare.models.packed import pack_linears

        pack_linears(gpt, int8=int8)
    return gpt


def _decode_tiny(gpt):
    """The prompt's logits and six decode steps' for 5 candidates: (7, 5, vocab)."""
    g = torch.Generator().manual_seed(1)
    cond, text, codes = torch.randn(1, 64, generator=g), torch.randint(0, 60, (1, 6), generator=g), \
        torch.randint(0, 118, (5, 6), generator=g)
    with torch.no_grad():
        logits, cache = gpt.prefill(cond, text, batch=5, max_codes=6)
        return torch.stack([logits] + [gpt.decode_step(codes[:, i], i + 1, cache) for i in range(codes.shape[1])])


def _count_takes(monkeypatch, name):
    """Wrap hare.models.gpt's `name` (a fast path returning None where it cannot run): the list it appends to, one
    bool per call (whether it ran)."""
    from hare.models import gpt as gpt_module

    calls, real = [], getattr(gpt_module, name)

    def counting(*args):
        out = real(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(gpt_module, name, counting)
    return calls


@needs_kernel
def test_gpt_decode_step_takes_the_fused_kernel(monkeypatch):
    """A CPU float32 decode step stores and attends in one kernel call per layer; the same logits as the unfused path."""
    from hare.models import gpt as gpt_module

    gpt = _tiny_gpt()
    calls = _count_takes(monkeypatch, "_decode_step_attention")
    with_fused = _decode_tiny(gpt)
    assert calls and all(calls) and len(calls) == 2 * 6
    monkeypatch.setattr(gpt_module, "_decode_step_attention", lambda *args: None)
    torch.testing.assert_close(with_fused, _decode_tiny(gpt), atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dim,heads", [(64, 4), (48, 4)])  # head sizes 16 (vectorised) and 12 (plain loops)
def test_gpt_decoding_with_and_without_the_kernel(monkeypatch, dim, heads):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(dim=dim, heads=heads, layers=2, text_vocab=64, start_text_token=64, mel_vocab=120,
                        start_mel_token=118, stop_mel_token=119, max_text_tokens=30, max_mel_tokens=22,
                        cond_attn_blocks=1, n_mels=16)).eval()
    cond, text = torch.randn(1, dim), torch.randint(0, 60, (1, 6))
    codes = torch.randint(0, 118, (5, 8))

    def decode():
        logits, cache = gpt.prefill(cond, text, batch=5, max_codes=8)
        out = [logits]
        for i in range(codes.shape[1]):
            out.append(gpt.decode_step(codes[:, i], i + 1, cache))
        return torch.stack(out)

    with_kernel = decode()
    monkeypatch.setenv("HARE_KERNELS", "0")
    assert kernels.decode_attention() is None
    without = decode()
    torch.testing.assert_close(with_kernel, without, atol=1e-5, rtol=1e-5)


def test_no_compiler_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(kernels, "_ready", {})  # as in a fresh process
    monkeypatch.setattr(kernels, "_library_path", None)
    monkeypatch.setenv("HARE_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="failed"):
        kernels.build()
    with caplog.at_level(logging.WARNING, logger="hare.kernels"):
        assert kernels.decode_attention() is None and kernels.winograd() is None and kernels.group_norm() is None
    assert "unavailable" in caplog.text and "slower" in caplog.text
    assert caplog.text.count("unavailable") == 1  # decided once per process: no second attempt or warning
    assert not any(kernels.status().values()) and "location_variable_conv" in kernels.status()


def test_a_kernel_that_fails_its_check_is_not_used(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_ready", {})  # checked again (the library stays loaded)

    def broken():
        raise RuntimeError("kernel check failed: max difference 1")

    monkeypatch.setitem(kernels._CHECKS, "winograd", broken)
    with caplog.at_level(logging.WARNING, logger="hare.kernels"):
        assert kernels.winograd() is None
    assert "'winograd' failed its check" in caplog.text
    assert (kernels.decode_attention() is not None) == (op is not None)  # the others stay in use


@needs_kernel
def test_built_library_is_cached_and_keyed_by_its_sources(monkeypatch, tmp_path):
    path = kernels.build()  # built (or found) when `op` was loaded
    stamp = path.stat().st_mtime_ns
    assert kernels.build() == path and path.stat().st_mtime_ns == stamp  # not rebuilt
    assert path.parent == kernels.cache_dir()
    edited = tmp_path / "edited-sources"
    edited.mkdir()
    for f in [*kernels._SOURCE_DIR.glob("*.cpp"), *kernels._SOURCE_DIR.glob("*.h")]:
        (edited / f.name).write_text(f.read_text() + ("\n// edited\n" if f.name == "vec.h" else ""))
    monkeypatch.setattr(kernels, "_SOURCE_DIR", edited)
    assert kernels.library_path(kernels.compiler()) != path  # a changed header rebuilds


@needs_winograd
@pytest.mark.parametrize("batch,frames,channels", [(1, 1, 16), (2, 7, 20), (3, 16, 64), (1, 37, 5)])
def test_winograd_transforms_make_a_convolution(batch, frames, channels):
    torch.manual_seed(frames)
    conv = torch.nn.Conv1d(channels, channels + 3, 3, padding=1)
    x = torch.randn(batch, channels, frames)
    with torch.no_grad():
        want = conv(x).transpose(1, 2)
        got = kernels.winograd_conv(x.transpose(1, 2).contiguous(), winograd_filters(conv.weight), conv.bias)
        no_bias = kernels.winograd_conv(x.transpose(1, 2).contiguous(), winograd_filters(conv.weight), None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(no_bias, want - conv.bias, atol=1e-5, rtol=1e-5)
    residual = torch.randn(batch, frames, channels + 3)
    win, wout = kernels.winograd()
    v = win(x.transpose(1, 2).contiguous())
    m = [v[i] @ f.T for i, f in enumerate(winograd_filters(conv.weight))]
    torch.testing.assert_close(wout(m, conv.bias.detach(), residual, batch, frames), want + residual,
                               atol=1e-5, rtol=1e-5)


needs_group_norm = pytest.mark.skipif(kernels.group_norm() is None, reason="no C++ compiler: no Hare kernels")


@needs_group_norm
@pytest.mark.parametrize("batch,frames,channels,groups", [(1, 435, 1024, 32), (2, 3, 40, 8), (3, 1, 20, 5)])
@pytest.mark.parametrize("affine,modulated,silu", [(True, True, True), (True, False, False), (False, False, True)])
def test_group_norm_time_major_matches_pytorch(batch, frames, channels, groups, affine, modulated, silu):
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(batch, frames, channels, generator=g) * 2 + 0.5
    w, b = (torch.randn(channels, generator=g) if affine else None for _ in range(2))
    scale, shift = (torch.randn(batch, channels, generator=g) if modulated else None for _ in range(2))
    want = torch.nn.functional.group_norm(x.transpose(1, 2), groups, w, b, 1e-5)
    if modulated:
        want = want * (1 + scale[..., None]) + shift[..., None]
    if silu:
        want = torch.nn.functional.silu(want)
    got = kernels.group_norm()(x, groups, w, b, scale, shift, 1e-5, silu)
    torch.testing.assert_close(got, want.transpose(1, 2), atol=2e-5, rtol=1e-5)


@needs_group_norm
def test_group_norm_layer_takes_the_kernel_for_time_major_inference(monkeypatch):
    from hare.models.layers import group_norm

    norm = group_norm(64)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 64, 9)
    time_major = x.transpose(1, 2).contiguous().transpose(1, 2)
    calls = []
    real = kernels.group_norm()
    monkeypatch.setattr(kernels, "group_norm", lambda: lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        want = norm(x)  # channel-major: PyTorch
        assert not calls
        got = norm(time_major)
    assert calls and got.transpose(1, 2).is_contiguous()  # stays time-major
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got_grad = norm(time_major.requires_grad_())  # with autograd: PyTorch's differentiable ops
    assert len(calls) == 1 and got_grad.requires_grad


@needs_winograd
def test_winograd_transforms_reject_bad_inputs():
    win, wout = kernels.winograd()
    with pytest.raises(RuntimeError, match="float32"):
        win(torch.randn(1, 4, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous"):
        win(torch.randn(1, 8, 4).transpose(1, 2))
    m = [torch.randn(2, 8) for _ in range(6)]
    with pytest.raises(RuntimeError, match="six"):
        wout(m[:5], None, None, 1, 8)
    with pytest.raises(RuntimeError, match="batch \\* tiles"):
        wout(m, None, None, 1, 9)  # 9 frames are 3 tiles, not 2
    with pytest.raises(RuntimeError, match="bias"):
        wout(m, torch.randn(7), None, 1, 8)
    with pytest.raises(RuntimeError, match="residual"):
        wout(m, None, torch.randn(1, 7, 8), 1, 8)


needs_lvc = pytest.mark.skipif(kernels.location_variable_conv() is None, reason="no C++ compiler: no Hare kernels")


@needs_lvc
@pytest.mark.parametrize("batch,inp,out,frames,hop", [(1, 32, 64, 7, 256), (2, 4, 12, 5, 16), (1, 3, 5, 9, 8),
                                                      (2, 2, 9, 1, 32)])
def test_location_variable_conv_matches_pytorch(batch, inp, out, frames, hop):
    from hare.kernels.reference import location_variable_conv_reference

    g = torch.Generator().manual_seed(hop)
    x = torch.randn(batch, inp, frames * hop, generator=g)
    # the kernel as the kernel predictor hands it on: a view with frames innermost
    kernel = torch.randn(batch, inp * out * 3, frames, generator=g).view(batch, inp, out, 3, frames)
    bias = torch.randn(batch, out, frames, generator=g)
    got = kernels.location_variable_conv()(x, kernel, bias, hop)
    torch.testing.assert_close(got, location_variable_conv_reference(x, kernel, bias, hop), atol=1e-4, rtol=1e-5)
    with pytest.raises(RuntimeError, match="frames x hop"):
        kernels.location_variable_conv()(x[..., 1:], kernel, bias, hop)


@needs_lvc
def test_vocoder_with_and_without_the_kernel(monkeypatch):
    from hare.models.configs import VocoderConfig
    from hare.models.vocoder import UnivNet

    torch.manual_seed(0)
    config = VocoderConfig(channels=8, kpnet_hidden=16, strides=(4, 4), dilations=(1, 3), hop_length=16)
    vocoder = UnivNet(config).eval()
    mel = torch.randn(1, vocoder.config.n_mels, 6)
    with torch.no_grad():
        with_kernel = vocoder.vocode(mel, generator=torch.Generator().manual_seed(1))
        monkeypatch.setenv("HARE_KERNELS", "0")
        without = vocoder.vocode(mel, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(with_kernel, without, atol=1e-5, rtol=1e-5)


def test_autograd_records_only_when_grad_mode_and_a_tensor_needs_it():
    a, b = torch.zeros(2), torch.zeros(2, requires_grad=True)
    assert not kernels.autograd_records(a, None) and kernels.autograd_records(a, None, b)
    with torch.no_grad():
        assert not kernels.autograd_records(b)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith(("flags", "Features")) for flag in line.split(":")[1].split()}
    except OSError:
        return set()


@pytest.mark.skipif(kernels.compiler() is None, reason="no C++ compiler: the kernels' target cannot be read")
def test_targets_report_what_the_cpu_offers():
    """The kernels are built for what this CPU has: each extension its flags list shows up in the report (and
    none it lacks); the bf16 answer follows the flags."""
    info = kernels.targets()
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo: the CPU's extensions are unknown here")
    for flag, name in (("avx2", "avx2"), ("avx512f", "avx512"), ("avx512_vnni", "avx512-vnni"),
                       ("amx_bf16", "amx-bf16"), ("avx512_bf16", "avx512-bf16")):
        assert (name in info["kernels"]) == (flag in flags), (flag, info)
    assert info["bf16_matmul"] == bool({"amx_bf16", "avx512_bf16"} & flags)
    assert isinstance(info["pytorch"], str) and info["pytorch"]


# -- the few-row linear kernel (panel_linear.cpp): every instruction-set variant against plain PyTorch ---------
needs_panels = pytest.mark.skipif(kernels.panel_linear() is None, reason="no C++ compiler: no Hare kernels")
PANEL_VARIANTS = {"avx512": "avx512f", "avx2": "avx2", "generic": None}  # variant -> the CPU flag it needs


def _runs_variant(variant, kernel=kernels.panel_linear, variants=kernels.panel_linear_variants,
                  flags=PANEL_VARIANTS):
    """pytest.param of `variant`, skipped with the reason where this CPU (or the build) cannot run it."""
    if kernel() is None:
        return pytest.param(variant, marks=pytest.mark.skip(reason="no C++ compiler: no Hare kernels"))
    if variant not in variants():
        return pytest.param(variant, marks=pytest.mark.skip(reason=f"this CPU lacks {flags[variant]}: no {variant} "
                                                                   "variant"))
    return pytest.param(variant)


ALL_VARIANTS = [_runs_variant(v) for v in PANEL_VARIANTS]


def _linear_case(rows, k, n, seed=0, row_stride=None):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    x = torch.randn(rows, row_stride or k, generator=g)[:, :k]  # rows further apart than k when asked
    return x, w, b


def _assert_close_relative(got, want):
    scale = max(float(want.abs().max()), 1.0) if want.numel() else 1.0
    torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=1e-5)


@needs_panels
@pytest.mark.parametrize("variant", ALL_VARIANTS)
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 15, 16, 17, 24, 31, 32])
@pytest.mark.parametrize("k,n", [(1024, 48), (33, 50), (16, 16), (1, 17), (300, 1), (40, 97)])
def test_panel_linear_matches_pytorch_for_few_rows(variant, rows, k, n):
    """Up to 32 rows (the decode path: whole K per tile), tails of K, of N (partial panels and tiles) and of rows."""
    pack, linear, _ = kernels.panel_linear()
    x, w, b = _linear_case(rows, k, n, seed=rows * 7 + k)
    panels = pack(w)
    assert panels.shape == ((n + 15) // 16, k, 16)
    _assert_close_relative(linear(x, panels, b, n, False, variant), torch.nn.functional.linear(x, w, b))
    _assert_close_relative(linear(x, panels, None, n, False, variant), torch.nn.functional.linear(x, w))
    gelu = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b), approximate="tanh")
    _assert_close_relative(linear(x, panels, b, n, True, variant), gelu)


@needs_panels
@pytest.mark.parametrize("variant", ALL_VARIANTS)
@pytest.mark.parametrize("rows,k,n", [(33, 300, 45), (64, 1024, 96), (100, 129, 200), (257, 64, 33)])
def test_panel_linear_matches_pytorch_for_many_rows(variant, rows, k, n):
    """Over 32 rows: K in slices, rows in blocks (the sums leave the registers between slices)."""
    pack, linear, _ = kernels.panel_linear()
    x, w, b = _linear_case(rows, k, n, seed=rows)
    panels = pack(w)
    _assert_close_relative(linear(x, panels, b, n, False, variant), torch.nn.functional.linear(x, w, b))
    gelu = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b), approximate="tanh")
    _assert_close_relative(linear(x, panels, b, n, True, variant), gelu)


@needs_panels
def test_panel_linear_variants_agree_and_the_default_is_the_best():
    pack, linear, _ = kernels.panel_linear()
    variants = kernels.panel_linear_variants()
    assert variants and variants[-1] == "generic" and set(variants) <= set(PANEL_VARIANTS)
    x, w, b = _linear_case(16, 1024, 3 * 16 + 5)
    panels = pack(w)
    outputs = {v: linear(x, panels, b, w.shape[0], True, v) for v in variants}
    for v in variants:  # the same sums in the same order: equal to the rounding of fused vs separate FMAs
        torch.testing.assert_close(outputs[v], outputs[variants[0]], atol=1e-5, rtol=1e-6)
    assert torch.equal(linear(x, panels, b, w.shape[0], True, ""), outputs[variants[0]])


@needs_panels
def test_panel_linear_variants_follow_the_cpu():
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo: the CPU's extensions are unknown here")
    variants = kernels.panel_linear_variants()
    assert ("avx512" in variants) == ("avx512f" in flags)
    assert ("avx2" in variants) == ({"avx2", "fma"} <= flags)
    assert kernels.targets()["panel_linear"] == variants


@needs_panels
def test_panel_linear_edges():
    pack, linear, unpack = kernels.panel_linear()
    x, w, b = _linear_case(7, 40, 20, row_stride=56)  # rows 56 floats apart: a view, read in place
    assert not x.is_contiguous()
    _assert_close_relative(linear(x, pack(w), b, 20, False, ""), torch.nn.functional.linear(x, w, b))
    assert linear(x[:0], pack(w), b, 20, False, "").shape == (0, 20)
    empty = torch.zeros(3, 0)  # no inputs: the bias (and its GELU)
    torch.testing.assert_close(linear(empty, pack(torch.zeros(5, 0)), b[:5], 5, False, ""), b[:5].expand(3, 5))
    torch.testing.assert_close(linear(empty, pack(torch.zeros(5, 0)), b[:5], 5, True, ""),
                               torch.nn.functional.gelu(b[:5], approximate="tanh").expand(3, 5))
    for n, k in ((1, 1), (17, 33), (48, 16), (3, 1000)):
        weight = torch.randn(n, k)
        assert torch.equal(unpack(pack(weight), n), weight)
        assert torch.equal(unpack(pack(weight.t().contiguous().t()), n), weight)  # any strides packed


@needs_panels
def test_panel_linear_rejects_bad_inputs():
    pack, linear, unpack = kernels.panel_linear()
    x, w, b = _linear_case(4, 8, 20)
    panels = pack(w)
    with pytest.raises(RuntimeError, match="float32"):
        linear(x.double(), panels, b, 20, False, "")
    with pytest.raises(RuntimeError, match="float32"):
        pack(w.double())
    with pytest.raises(RuntimeError, match="features"):
        linear(torch.randn(4, 9), panels, b, 20, False, "")
    with pytest.raises(RuntimeError, match="does not fit"):
        linear(x, panels, b, 33, False, "")
    with pytest.raises(RuntimeError, match="bias"):
        linear(x, panels, b[:19], 20, False, "")
    with pytest.raises(RuntimeError, match="contiguous"):
        linear(torch.randn(8, 4).t(), panels, b, 20, False, "")
    with pytest.raises(RuntimeError, match="variant"):
        linear(x, panels, b, 20, False, "sse9")
    with pytest.raises(RuntimeError, match="panel_pack"):
        linear(x, torch.randn(2, 8, 8), b, 20, False, "")
    with pytest.raises(RuntimeError, match="does not fit"):
        unpack(panels, 40)
    meta = torch.empty(4, 8, device="meta")  # another device: refused, never read as CPU memory
    with pytest.raises((RuntimeError, NotImplementedError)):
        linear(meta, panels, b, 20, False, "")


# -- a whole GPT block's decode step in one call (gpt_block.cpp) -------------------------------------------------
needs_block = pytest.mark.skipif(kernels.gpt_block_decode() is None, reason="no C++ compiler: no Hare kernels")


@needs_block
@pytest.mark.parametrize("batch,heads,d,shared,position", [(16, 16, 64, 34, 50), (3, 2, 16, 0, 0), (5, 4, 24, 7, 3),
                                                           (1, 1, 40, 2, 1)])
def test_gpt_block_decode_matches_its_parts(batch, heads, d, shared, position):
    """ln1 -> qkv -> attention (the new key/value stored) -> attn_out + x -> ln2 -> fc + GELU -> proj + x1, against
    PyTorch's LayerNorm, linears and GELU around the decode attention kernel."""
    from hare.kernels.reference import gpt_block_decode_reference

    g = torch.Generator().manual_seed(position)
    dim = heads * d
    x = torch.randn(batch, dim, generator=g) * 2 + 0.5
    norms = [torch.randn(dim, generator=g) for _ in range(4)]
    weights = [(torch.randn(o, i, generator=g) / i ** 0.5, torch.randn(o, generator=g))
               for o, i in ((3 * dim, dim), (dim, dim), (4 * dim, dim), (dim, 4 * dim))]
    caches = [torch.randn(position + 2, batch, heads, d, generator=g) for _ in range(2)]
    prefix = [torch.randn(heads, shared, d, generator=g) for _ in range(2)]
    packed = [t for w, b in weights for t in ([torch.ops.hare.panel_pack(w)], b)]
    mine = [c.clone() for c in caches]
    got = kernels.gpt_block_decode()(x, *norms, 1e-5, *packed, *mine, position, *prefix, heads)
    _assert_close_relative(got, gpt_block_decode_reference(x, norms, weights, *caches, position, *prefix, heads))
    torch.testing.assert_close(mine, caches, atol=1e-5, rtol=1e-5)  # the same key/value written at `position`


@needs_block
def test_packed_gpt_decode_step_runs_each_block_in_one_call(monkeypatch):
    """A panel-packed GPT's decode steps go through gpt_block_decode (one call per block), with the logits of the
    per-operation path; a hook on a block's layer sends that block back to the per-operation path."""
    from hare.models import gpt as gpt_module

    gpt = _tiny_gpt(packed=True)
    calls = _count_takes(monkeypatch, "_decode_step_block")
    one_call = _decode_tiny(gpt)
    assert calls and all(calls) and len(calls) == 2 * 6
    handle = gpt.blocks[1].fc.register_forward_hook(lambda *args: None)
    calls.clear()
    hooked = _decode_tiny(gpt)
    handle.remove()
    assert calls.count(False) == 6 and calls.count(True) == 6
    monkeypatch.setattr(gpt_module, "_decode_step_block", lambda *args: None)
    per_operation = _decode_tiny(gpt)
    torch.testing.assert_close(one_call, per_operation, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hooked, per_operation, atol=1e-5, rtol=1e-5)


# -- the int8 few-row linear kernel (panel_int8.cpp): every variant against its PyTorch reference ---------------
INT8_VARIANTS = {"amx-int8": "amx_int8", "avx512-vnni": "avx512_vnni", "avx2": "avx2", "generic": None}
needs_int8 = pytest.mark.skipif(kernels.panel_linear_int8() is None, reason="no C++ compiler: no Hare kernels")

ALL_INT8_VARIANTS = [_runs_variant(v, kernels.panel_linear_int8, kernels.panel_int8_variants, INT8_VARIANTS)
                     for v in INT8_VARIANTS]


@pytest.mark.parametrize("variant", ALL_INT8_VARIANTS)
@pytest.mark.parametrize("rows, k, n", [(1, 64, 16), (3, 20, 37), (8, 1024, 48), (16, 33, 50), (17, 40, 48),
                                        (33, 130, 70), (100, 1030, 35), (7, 3, 5), (40, 256, 70), (17, 64, 16),
                                        (100, 1024, 50)])
def test_panel_linear_int8_matches_its_reference(variant, rows, k, n):
    """Rows quantised per row, weights per column, exact integer sums: the reference's numbers to float rounding
    (K tails of the 4-input groups, N tails of the panels, row tails of the tiles, the blocked many-row path), and
    within int8's rounding of the float product."""
    from hare.kernels.reference import panel_linear_int8_reference

    pack, linear, unpack = kernels.panel_linear_int8()
    x, w, b = _linear_case(rows, k, n, seed=rows + k)
    panels, scales, sums = pack(w)
    assert panels.shape == ((n + 15) // 16, (k + 3) // 4, 16, 4) and panels.dtype == torch.int8
    assert scales.shape == sums.shape == ((n + 15) // 16 * 16,)
    for bias, gelu in ((b, False), (None, False), (b, True)):
        got = linear(x, panels, scales, sums, bias, n, gelu, variant)
        _assert_close_relative(got, panel_linear_int8_reference(x, w, bias, gelu))
        exact = torch.nn.functional.linear(x, w, bias)
        exact = torch.nn.functional.gelu(exact, approximate="tanh") if gelu else exact
        assert (got - exact).norm() <= 0.03 * exact.norm()  # int8's rounding: ~1 % on Gaussian inputs
    dequantised = unpack(panels, scales, n, k)
    assert dequantised.shape == (n, k)
    assert (dequantised - w).abs().max() <= scales[:n].max() / 2 + 1e-6  # half a step of each column's scale


@needs_int8
def test_panel_int8_variants_agree_and_the_default_is_the_best():
    _, linear, _ = kernels.panel_linear_int8()
    variants = kernels.panel_int8_variants()
    assert variants and variants[-1] == "generic"
    x, w, b = _linear_case(21, 300, 90, seed=3)
    packed = kernels.panel_linear_int8()[0](w)
    outputs = {v: linear(x, *packed, b, 90, True, v) for v in variants}
    for v in variants[1:]:  # the same integer sums: equal to the float scaling's rounding
        _assert_close_relative(outputs[v], outputs[variants[0]])
    assert torch.equal(linear(x, *packed, b, 90, True, ""), outputs[variants[0]])
    assert kernels.targets()["panel_int8"] == variants


@needs_int8
def test_panel_linear_int8_edges_and_bad_inputs():
    pack, linear, _ = kernels.panel_linear_int8()
    x, w, b = _linear_case(4, 24, 20, seed=5)
    packed = pack(w)
    x[1] = 0.0  # an all-zero row: the bias alone
    x[2, 3] = float("nan")  # a non-finite value: its row NaN, as a float product's, the others untouched
    y = linear(x, *packed, b, 20, False, "")
    torch.testing.assert_close(y[1], b)
    assert torch.isnan(y[2]).all() and torch.isfinite(y[[0, 1, 3]]).all()
    assert linear(x[:0], *packed, b, 20, False, "").shape == (0, 20)
    w0 = w.clone()
    w0[4] = 0.0  # an all-zero weight column
    assert (linear(x[[0]], *pack(w0), None, 20, False, "")[0, 4] == 0).item()
    empty = pack(torch.zeros(20, 0))  # no inputs: the bias alone
    torch.testing.assert_close(linear(torch.zeros(3, 0), *empty, b, 20, False, ""), b.expand(3, 20))
    with pytest.raises(RuntimeError, match="features"):
        linear(torch.randn(4, 9), *packed, b, 20, False, "")
    with pytest.raises(RuntimeError, match="does not fit"):
        linear(x, *packed, b, 33, False, "")
    with pytest.raises(RuntimeError, match="float32"):
        linear(x.double(), *packed, b, 20, False, "")
    with pytest.raises(RuntimeError, match="scales"):
        linear(x, packed[0], packed[1][:16], packed[2], b, 20, False, "")
    with pytest.raises(RuntimeError, match="variant"):
        linear(x, *packed, b, 20, False, "no-such-variant")
    with pytest.raises(RuntimeError, match="not finite"):
        pack(torch.full((3, 4), float("inf")))


@needs_int8
def test_int8_packed_linear_layer():
    """PackedLinear(int8=True): the kernel's numbers for 2-D and 3-D inputs, any row count, GELU fused, the
    weight's bytes a quarter of float32's; it refuses inputs that need gradients."""
    from hare.kernels.reference import panel_linear_int8_reference
    from hare.models.packed import PackedLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 24)
    layer = PackedLinear(lin, int8=True)
    assert layer.layout == "int8" and layer.weight_bytes == 40 * 24 and "layout=int8" in repr(layer)
    x = torch.randn(2, 300, 40)  # many rows too: the int8 layer never unpacks
    with torch.no_grad():
        _assert_close_relative(layer(x), panel_linear_int8_reference(x.reshape(-1, 40), lin.weight,
                                                                     lin.bias).view(2, 300, 24))
        _assert_close_relative(layer(x[0], gelu_tanh=True),
                               panel_linear_int8_reference(x[0], lin.weight, lin.bias, gelu_tanh=True))
    with pytest.raises(RuntimeError, match="inference"):
        layer(torch.randn(3, 40, requires_grad=True))
    with torch.no_grad():  # bf16 inputs (autocast with quantize="int8"): quantised from float32, float32 out
        x16 = torch.randn(5, 40).bfloat16()
        torch.testing.assert_close(layer(x16), layer(x16.float()))


@needs_int8
def test_int8_gpt_block_decode_and_decoding(monkeypatch):
    """An int8-packed GPT (`pack_linears(int8=True)`: every linear on int8 panels) decodes each block in one
    kernel call, with the per-operation path's logits to int8's rounding of the normed inputs; both near the
    float GPT's."""
    from hare.models import gpt as gpt_module
    from hare.models.packed import PackedLinear

    gpt = _tiny_gpt(int8=True)
    assert all(isinstance(m, PackedLinear) and m.layout == "int8" for m in (gpt.blocks[0].qkv, gpt.mel_head))
    calls = _count_takes(monkeypatch, "_decode_step_block")
    one_call = _decode_tiny(gpt)
    assert calls and all(calls) and len(calls) == 2 * 6
    monkeypatch.setattr(gpt_module, "_decode_step_block", lambda *args: None)
    per_operation = _decode_tiny(gpt)
    spread = float(per_operation.std())
    assert (one_call - per_operation).abs().max() <= 0.02 * spread  # a rounding flip of an int8 input at most
    exact = _decode_tiny(_tiny_gpt())
    assert (one_call - exact).abs().mean() <= 0.02 * float(exact.std())
    assert (one_call - exact).abs().max() <= 0.15 * float(exact.std())


needs_row_taps = pytest.mark.skipif(kernels.row_taps() is None, reason="no C++ compiler: no Hare kernels")


@needs_row_taps
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frames, c, start, rows, kernel, dilation, padding, slope", [
    (50, 32, 0, 48, 11, 1, 5, 0.1), (50, 128, 16, 64, 7, 5, 15, None), (3, 8, 0, 16, 3, 3, 3, 0.01),
    (40, 17, 30, 32, 2, 1, 1, None), (0, 4, 0, 5, 3, 1, 1, 0.1)])
def test_row_taps_matches_pytorch_bit_for_bit(dtype, frames, c, start, rows, kernel, dilation, padding, slope):
    """row_taps gathers a block's taps side by side, rows outside the input zero, the leaky ReLU applied as
    PyTorch applies it (bf16 rounding included): exactly the reference, and nothing written past `rows`."""
    g = torch.Generator().manual_seed(frames + c)
    x = (torch.randn(frames, c, generator=g) * 3).to(dtype)
    if frames:
        x[0, 0] = float("nan")
        x[-1, -1] = -0.0
    out = torch.full((rows + 3, kernel * c), 5.0, dtype=dtype)
    kernels.row_taps()(x, start, rows, kernel, dilation, padding, slope is not None, slope or 0.0, out)
    want = kernels.row_taps_reference(x, start, rows, kernel, dilation, padding, slope)
    torch.testing.assert_close(out[:rows], want, atol=0, rtol=0, equal_nan=True)  # exact, a NaN stays a NaN
    assert bool((out[rows:] == 5).all())


@needs_row_taps
def test_row_taps_rejects_bad_inputs():
    op = kernels.row_taps()
    x = torch.randn(10, 4)
    with pytest.raises(RuntimeError, match="out must have"):
        op(x, 0, 4, 3, 1, 1, False, 0.0, torch.empty(4, 12, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="row-contiguous"):
        op(x, 0, 4, 3, 1, 1, False, 0.0, torch.empty(4, 11))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        op(x.double(), 0, 4, 3, 1, 1, False, 0.0, torch.empty(4, 12, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous"):
        op(x.t(), 0, 4, 3, 1, 1, False, 0.0, torch.empty(4, 30))


def _bf16_time_major_hifigan(initial_channels: int):
    """A small random HiFi-GAN (two residual stacks) in bf16, vocoding time-major."""
    from hare.models.configs import HiFiGANConfig
    from hare.models.hifigan import HiFiGAN

    torch.manual_seed(0)
    g = HiFiGAN(HiFiGANConfig(initial_channels=initial_channels, resblock_kernels=(3, 7),
                              resblock_dilations=((1, 3), (1, 5))))
    g = g.eval().to(torch.bfloat16)
    g.time_major = True
    return g


def test_time_major_vocoder_with_and_without_the_kernel(monkeypatch):
    """The bf16 time-major HiFi-GAN gives the same audio through row_taps as through PyTorch's copies (the AMX
    convolution, where this CPU has it, turned off for both)."""
    monkeypatch.setattr(kernels, "conv_rows", lambda: None)
    g = _bf16_time_major_hifigan(32)
    mel = torch.randn(1, 80, 12) - 5
    with_kernel = g.vocode(mel)
    monkeypatch.setattr(kernels, "row_taps", lambda: None)
    g._row_cache = None
    torch.testing.assert_close(g.vocode(mel), with_kernel, atol=0, rtol=0)


needs_conv_rows = pytest.mark.skipif(kernels.conv_rows() is None,
                                     reason="no AMX bf16 tiles on this CPU (or no C++ compiler)")


@needs_conv_rows
@pytest.mark.parametrize("frames, c, n, kernel, dilation, padding, residual, slope", [
    (100, 32, 32, 11, 5, 25, True, 0.1), (37, 64, 64, 3, 1, 1, False, None), (300, 256, 2048, 2, 1, 1, False, 0.1),
    (5, 128, 96, 7, 3, 9, True, 0.1), (1, 32, 64, 3, 1, 1, True, 0.01), (64, 96, 32, 1, 1, 0, False, None)])
def test_conv_rows_matches_the_reference(frames, c, n, kernel, dilation, padding, residual, slope):
    """The AMX bf16 convolution computes row_taps + a float32 product + bias + residual, rounded once to bf16:
    within a step of bf16's rounding of the reference, for block tails (frames not a multiple of 32, a single
    frame), dilations, a transposed convolution's shape (2 taps, 2 048 outputs) and a 1-tap one."""
    g = torch.Generator().manual_seed(frames + c + n)
    x = (torch.randn(frames, c, generator=g) * 2).bfloat16()
    w = (torch.randn(kernel * c, n, generator=g) / (kernel * c) ** 0.5).bfloat16()
    b = torch.randn(n, generator=g)
    out_rows = frames + 2 * padding - dilation * (kernel - 1)
    r = torch.randn(out_rows, n, generator=g).bfloat16() if residual else None
    pack, conv = kernels.conv_rows()
    got = conv(x, pack(w), b, r, kernel, dilation, padding, out_rows, slope is not None, slope or 0.0)
    want = kernels.conv_rows_reference(x, w, b, r, kernel, dilation, padding, out_rows, slope)
    assert got.dtype == torch.bfloat16 and got.shape == (out_rows, n)
    torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=1e-3 * float(want.float().abs().max()))


@needs_conv_rows
def test_conv_rows_rejects_bad_inputs():
    pack, conv = kernels.conv_rows()
    w = pack(torch.randn(3 * 32, 32).bfloat16())
    x = torch.randn(10, 32).bfloat16()
    b = torch.zeros(32)
    with pytest.raises(RuntimeError, match="multiples of 32"):
        pack(torch.randn(3 * 32, 16).bfloat16())
    with pytest.raises(RuntimeError, match="multiple of 32"):
        conv(torch.randn(10, 16).bfloat16(), w, b, None, 3, 1, 1, 10, False, 0.0)
    with pytest.raises(RuntimeError, match="bfloat16"):
        conv(x.float(), w, b, None, 3, 1, 1, 10, False, 0.0)
    with pytest.raises(RuntimeError, match="packed"):
        conv(x, w, b, None, 5, 1, 2, 10, False, 0.0)  # a 5-tap convolution with a 3-tap weight
    with pytest.raises(RuntimeError, match="bias"):
        conv(x, w, b.bfloat16(), None, 3, 1, 1, 10, False, 0.0)
    with pytest.raises(RuntimeError, match="residual"):
        conv(x, w, b, torch.zeros(9, 32).bfloat16(), 3, 1, 1, 10, False, 0.0)


@needs_conv_rows
def test_time_major_vocoder_takes_the_amx_convolution(monkeypatch):
    """Where the CPU has AMX bf16 tiles the bf16 time-major HiFi-GAN's convolutions with channels in multiples
    of 32 run on them, and give the audio of the gathered path to bf16's rounding; float32 weights never do."""
    from hare.models import hifigan

    g = _bf16_time_major_hifigan(64)
    mel = torch.randn(1, 80, 40) - 5
    tiled = g.vocode(mel)
    ops = g._row_ops()
    up, stacks = ops["stages"][0]
    assert up.tiles is not None and stacks[0][0][0].tiles is not None  # 64 -> 32 channels, 32-channel stacks
    assert ops["inp"].tiles is None and ops["out"].tiles is None  # 80 mel bands in, one sample out
    monkeypatch.setattr(kernels, "conv_rows", lambda: None)
    g._row_cache = None
    gathered = g.vocode(mel)
    assert g._row_ops()["stages"][0][0].tiles is None
    assert (tiled - gathered).abs().max() <= 0.05 * float(gathered.abs().max())
    assert (tiled - gathered).abs().mean() <= 0.01 * float(gathered.abs().mean())
    assert hifigan._Tiles.of(torch.zeros(96, 32), torch.zeros(32), 32) is None  # float32: never the bf16 tiles
    assert hifigan._Tiles.of(torch.zeros(96, 32).bfloat16(), torch.zeros(32), 48) is None  # 48 input channels
