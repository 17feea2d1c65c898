"""oneDNN-packed linear layers (hare.models.packed) compute what the plain layers compute, to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hare import kernels
from hare.models.layers import AttentionBlock
from hare.models.diffusion import ResBlock
from hare.models.packed import PANEL_MAX_ROWS, PackedLinear, WinogradConv1d, pack_linears, packing_available
from hare.pipeline import TextToSpeech

from tiny_models import tiny_models, write_voice

pytestmark = pytest.mark.skipif(not packing_available(), reason="this PyTorch build cannot pack for oneDNN")
TOL = 1e-5


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 7, 5)])
def test_packed_linear_matches_linear(bias, shape):
    torch.manual_seed(0)
    lin = nn.Linear(5, 11, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = lin(x)
        got = PackedLinear(lin, batch_hint=3)(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=TOL)


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_packed_linear_fused_gelu_matches_gelu_of_linear(scale):
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    x = torch.randn(4, 3, 64) * scale
    with torch.no_grad():
        expected = nn.functional.gelu(lin(x), approximate="tanh")
        got = PackedLinear(lin, batch_hint=4)(x, gelu_tanh=True)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=TOL * max(1.0, scale), rtol=1e-5)
    assert not torch.allclose(got, nn.functional.gelu(expected), atol=1e-3)  # the activation was applied once


def test_packed_linear_is_inference_only_and_float32():
    lin = PackedLinear(nn.Linear(4, 3))
    with pytest.raises(RuntimeError, match="inference"):
        lin(torch.randn(2, 4, requires_grad=True))
    with pytest.raises(RuntimeError, match="float32"):
        lin(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError):
        PackedLinear(nn.Conv1d(4, 3, 3))  # not a 1x1 convolution


@pytest.mark.parametrize("relative", [False, True])
def test_attention_block_packed_time_major(relative):
    torch.manual_seed(1)
    block = AttentionBlock(32, 4, relative_position=relative).eval()
    if relative:
        nn.init.normal_(block.rel_pos.embedding.weight)
    x = torch.randn(2, 32, 19)
    with torch.no_grad():
        expected = block(x)
        assert pack_linears(block) == 2  # qkv and proj, the 1x1 convs
        assert isinstance(block.qkv, PackedLinear) and isinstance(block.proj, PackedLinear)
        got = block(x)
    assert torch.allclose(got, expected, atol=TOL)


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 8, 37])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("compiled", [True, False], ids=["kernels", "pytorch"])  # hare.kernels' transforms or not
def test_winograd_conv_matches_conv(frames, bias, compiled, monkeypatch):
    monkeypatch.setenv("HARE_KERNELS", "1" if compiled else "0")
    if compiled and kernels.winograd() is None:
        pytest.skip("no C++ compiler: Hare's kernels cannot be built here")
    torch.manual_seed(frames)
    conv = nn.Conv1d(48, 40, 3, padding=1, bias=bias)
    x = torch.randn(2, 48, frames) * 3
    with torch.no_grad():
        expected = conv(x)
        got = WinogradConv1d(conv)(x)
        # the same values held time-major (as the packed decoder's layers hand them on)
        got_time_major = WinogradConv1d(conv)(x.transpose(1, 2).contiguous().transpose(1, 2))
    assert got.shape == expected.shape == (2, 40, frames)
    assert torch.allclose(got, expected, atol=TOL * 10, rtol=1e-5)
    assert torch.allclose(got_time_major, expected, atol=TOL * 10, rtol=1e-5)
    # every output frame depends on its own neighbourhood only: no wrap-around at either end
    x2 = x.clone()
    x2[..., -1] += 1.0
    with torch.no_grad():
        changed = (WinogradConv1d(conv)(x2) - got).abs().amax(dim=(0, 1)) > 1e-4
    assert changed.tolist() == [i >= frames - 2 for i in range(frames)]


@pytest.mark.skipif(kernels.panel_linear_int8() is None or kernels.winograd() is None,
                    reason="no C++ compiler: no Hare kernels")
@pytest.mark.parametrize("frames", [1, 7, 40])
def test_int8_winograd_conv_and_resblock_near_float(frames):
    """WinogradConv1d(int8=True): the six products on int8 panels, within int8's rounding of the convolution (a
    few % of the output's spread); a ResBlock packed with int8_convolutions near the float block."""
    torch.manual_seed(frames)
    conv = nn.Conv1d(48, 40, 3, padding=1)
    x = torch.randn(2, 48, frames) * 3
    with torch.no_grad():
        expected = conv(x)
        layer = WinogradConv1d(conv, int8=True)
        got = layer(x)
    assert got.shape == expected.shape and "int8" in repr(layer)
    assert (got - expected).pow(2).mean().sqrt() < 0.03 * expected.std()
    block = ResBlock(32, dropout=0.0).eval()
    x, emb = torch.randn(2, 32, frames), torch.randn(2, 32)
    with torch.no_grad():
        want = block(x, emb)
        assert pack_linears(block, int8=True, int8_convolutions=True) == 3
        assert block.conv_in.layout == "int8" and block.emb.layout == "int8" and block.conv_out.int8
        got = block(x, emb)
    assert (got - want).pow(2).mean().sqrt() < 0.03 * want.std()


def test_winograd_conv_refuses_what_it_cannot_compute():
    for conv in (nn.Conv1d(4, 4, 3), nn.Conv1d(4, 4, 3, padding=1, stride=2), nn.Conv1d(4, 4, 5, padding=2),
                 nn.Conv1d(4, 4, 3, padding=1, dilation=2), nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect")):
        with pytest.raises(ValueError):
            WinogradConv1d(conv)
    w = WinogradConv1d(nn.Conv1d(4, 4, 3, padding=1))
    with pytest.raises(RuntimeError, match="inference"):
        w(torch.randn(1, 4, 5, requires_grad=True))


def test_pack_linears_swaps_the_diffusion_resblock_conv_for_winograd():
    torch.manual_seed(0)
    block = ResBlock(32, dropout=0.0).eval()
    x, emb = torch.randn(2, 32, 11), torch.randn(2, 32)
    with torch.no_grad():
        expected = block(x, emb)
        assert pack_linears(block) == 3  # the time-embedding linear, the 1x1 conv and the 3-wide conv
        assert isinstance(block.conv_out, WinogradConv1d) and isinstance(block.emb, PackedLinear)
        assert isinstance(block.conv_in, PackedLinear)
        assert torch.allclose(block(x, emb), expected, atol=1e-4)


def test_pack_linears_replaces_every_plain_linear_and_leaves_others():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Conv1d(8, 8, 1)))
    assert pack_linears(model) == 2
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert isinstance(model[2][1], nn.Conv1d)  # a 1x1 conv only where its module says it can run time-major


def test_packed_networks_match_plain_ones():
    plain = tiny_models(seed=5)
    packed = copy.deepcopy(plain)
    for kind in ("autoregressive", "clvp2", "diffusion_decoder"):
        assert pack_linears(packed[kind]) > 0
    g = torch.Generator().manual_seed(0)
    cond, text = torch.randn(1, 32, generator=g), torch.tensor([[20, 2, 31, 40, 7, 0]])
    codes = torch.randint(0, 8192, (3, 12), generator=g)
    with torch.no_grad():
        # GPT: prompt + cached decode steps, and the teacher-forced latents
        (l1, c1), (l2, c2) = (m["autoregressive"].prefill(cond, text, 3, 12) for m in (plain, packed))
        assert torch.allclose(l1, l2, atol=1e-4)
        for i in range(4):
            a = plain["autoregressive"].decode_step(codes[:, i], i + 1, c1)
            b = packed["autoregressive"].decode_step(codes[:, i], i + 1, c2)
            assert torch.allclose(a, b, atol=1e-4), i
        la = plain["autoregressive"].speech_latents(cond.expand(3, -1), text.expand(3, -1), codes)
        lb = packed["autoregressive"].speech_latents(cond.expand(3, -1), text.expand(3, -1), codes)
        assert torch.allclose(la, lb, atol=1e-4)
        # CLVP scores
        assert torch.allclose(plain["clvp2"].similarity(text, codes), packed["clvp2"].similarity(text, codes),
                              atol=1e-4)
        # one diffusion step
        d1, d2 = plain["diffusion_decoder"], packed["diffusion_decoder"]
        latents = torch.randn(1, 12, 32, generator=g)
        aligned = d1.aligned_conditioning(latents, torch.randn(1, 64, generator=g), 40)
        x, t = torch.randn(1, 100, 40, generator=g), torch.tensor([700])
        assert torch.allclose(d1(x, t, aligned), d2(x, t, aligned), atol=1e-4)


def test_pipeline_packs_only_when_asked_and_float32(tmp_path, monkeypatch):
    monkeypatch.setenv("HARE_HOME", str(tmp_path))

    def make(**kw):
        m = tiny_models(seed=6)
        return TextToSpeech(gpt=m["autoregressive"], clvp=m["clvp2"], diffusion=m["diffusion_decoder"],
                            vocoder=m["vocoder"], device="cpu", **kw)

    plain, packed = make(), make(pack=True)
    assert not plain.packed and packed.packed
    assert isinstance(packed.gpt.blocks[0].qkv, PackedLinear)
    int8 = make(pack=True, quantize="int8")  # the GPT's linears on int8 panels; the diffusion is packed
    if kernels.panel_linear_int8() is not None:
        assert isinstance(int8.gpt.blocks[0].qkv, PackedLinear) and int8.gpt.blocks[0].qkv.layout == "int8"
        assert int8.gpt.mel_head.layout == "int8"
    else:  # without the kernels: PyTorch's dynamic int8 linears
        assert not isinstance(int8.gpt.blocks[0].qkv, (PackedLinear, torch.nn.Linear))
    to_q = int8.clvp.text_encoder.layers[0].attn.to_q
    if kernels.panel_int8_variants()[:1] == ["amx-int8"]:  # CLVP: Hare's int8 panels where they run on AMX
        assert isinstance(to_q, PackedLinear) and to_q.layout == "int8"
    else:  # else PyTorch's int8
        assert "quantized" in type(to_q).__module__
    assert isinstance(int8.gpt.cond_blocks[0].qkv, PackedLinear)  # a 1x1 conv, left in float by quantisation
    assert int8.gpt.cond_blocks[0].qkv.layout != "int8"
    assert isinstance(int8.diffusion.time_in, PackedLinear)
    if kernels.panel_linear_int8() is not None:  # the fast path's diffusion decoder on int8 too
        block = next(m for m in int8.diffusion.modules() if isinstance(m, ResBlock))
        assert block.conv_in.layout == "int8" and isinstance(block.conv_out, WinogradConv1d) and block.conv_out.int8
    assert not any(getattr(m, "int8", False) or getattr(m, "layout", "") == "int8"
                   for m in packed.diffusion.modules())  # the exact path's stays float32
    unpacked8 = make(pack=False, quantize="int8")  # pack=False: no Hare layout anywhere, PyTorch's int8
    assert not isinstance(unpacked8.gpt.blocks[0].qkv, (PackedLinear, torch.nn.Linear))
    bf16 = make(pack=True, dtype="bf16")  # autocast runs the GPT and CLVP: they stay plain
    assert isinstance(bf16.gpt.blocks[0].qkv, torch.nn.Linear) and isinstance(bf16.diffusion.time_in, PackedLinear)
    from hare.voices import VoiceLibrary

    write_voice(tmp_path / "v" / "alice")
    outs = []
    for tts in (plain, packed):
        tts.voices = VoiceLibrary([tmp_path / "v"])
        outs.append(tts.tts("Packed or not.", voice="alice", preset="ultra_fast", num_candidates=2, max_codes=12,
                            diffusion_steps=4, seed=0))
    a, b = outs
    assert a.audio.shape == b.audio.shape
    assert torch.allclose(a.audio, b.audio, atol=1e-3)


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_training_linear_matches_linear_forward_and_backward(bias):
    from hare.models.packed import OneDNNLinear, onednn_training_linears

    torch.manual_seed(2)
    plain = nn.Linear(6, 9, bias=bias)
    fast = copy.deepcopy(plain)
    assert onednn_training_linears(nn.Sequential(fast)) == 1 and isinstance(fast, OneDNNLinear)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 5, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), fast(xb)
    assert torch.allclose(ya, yb, atol=TOL)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    for pa, pb in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the plain path (bf16 out)
        assert fast(x).dtype == torch.bfloat16
    assert isinstance(fast, nn.Linear)  # a drop-in for code that checks the type


def _diffusion_fixture_cases():
    import json

    from conftest import FIXTURES

    if not FIXTURES.is_dir():
        return []
    return [p for p in sorted(FIXTURES.iterdir()) if (p / "meta.json").is_file()
            and json.loads((p / "meta.json").read_text())["model"] == "DiffusionTts"]


@pytest.mark.parametrize("case", _diffusion_fixture_cases(), ids=lambda p: p.name)
def test_packed_diffusion_decoder_reproduces_the_reference_fixture(case):
    """The packed decoder (Winograd 3-wide convs, packed linears and 1x1 convs) within the fixture tolerance."""
    import json

    from safetensors.torch import load_file

    from fixture_runners._util import load_converted

    meta = json.loads((case / "meta.json").read_text())
    tensors = load_file(str(case / "io.safetensors"))
    model = load_converted(case, meta, "diffusion_decoder").eval()
    assert pack_linears(model) > 0
    assert any(isinstance(m, WinogradConv1d) for m in model.modules())
    x, t = tensors["input.x"], tensors["input.t"].long()
    frames = int(meta.get("expected_seq_len", x.shape[-1]))
    with torch.no_grad():
        cond = model.conditioning_latent(tensors["input.cond_mels"])
        aligned = model.aligned_conditioning(tensors["input.latents"], cond, frames)
        eps = model(x, t, aligned)
    assert torch.allclose(eps, tensors["output.eps"], atol=1e-4, rtol=1e-4)


# -- linears packed for Hare's few-row kernel (hare.kernels.panel_linear) ---------------------------------------
needs_panels = pytest.mark.skipif(kernels.panel_linear() is None, reason="no C++ compiler: no Hare kernels")


@needs_panels
# over PANEL_MAX_ROWS: the BLAS on the weight unpacked
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 32, 40, PANEL_MAX_ROWS + 1])
@pytest.mark.parametrize("bias", [True, False])
def test_few_rows_packed_linear_matches_linear(rows, bias):
    torch.manual_seed(rows)
    lin = nn.Linear(96, 70, bias=bias)
    x = torch.randn(rows, 96)
    fast = PackedLinear(lin, few_rows=True)
    assert fast.layout == "panels" and fast.packed.shape == (5, 96, 16)
    with torch.no_grad():
        want = lin(x)
        torch.testing.assert_close(fast(x), want, atol=TOL, rtol=TOL)
        torch.testing.assert_close(fast(x, gelu_tanh=True), nn.functional.gelu(want, approximate="tanh"),
                                   atol=TOL, rtol=TOL)
        x3 = x.view(1, rows, 96).expand(2, -1, -1)  # any leading shape
        assert fast(x3).shape == (2, rows, 70)
        torch.testing.assert_close(fast(x3)[1], want, atol=TOL, rtol=TOL)
        strided = torch.randn(rows, 2 * 96)[:, ::2]  # features not contiguous: copied first
        torch.testing.assert_close(fast(strided), lin(strided), atol=TOL, rtol=TOL)


@needs_panels
def test_few_rows_packed_linear_is_cpu_float32_inference_only():
    fast = PackedLinear(nn.Linear(8, 5), few_rows=True)
    with pytest.raises(RuntimeError, match="inference"):
        fast(torch.randn(2, 8, requires_grad=True))
    with pytest.raises(RuntimeError, match="float32"):
        fast(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="CPU"):  # no CPU kernel on another device's tensor
        fast(torch.empty(2, 8, device="meta"))


def test_few_rows_falls_back_to_onednn_without_the_kernels(monkeypatch):
    monkeypatch.setenv("HARE_KERNELS", "0")
    lin = nn.Linear(12, 7)
    fast = PackedLinear(lin, few_rows=True)
    assert fast.layout == "onednn"
    x = torch.randn(4, 12)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), lin(x), atol=TOL, rtol=TOL)


@needs_panels
def test_pack_linears_packs_the_gpt_decode_linears_for_few_rows():
    plain = tiny_models(seed=3)["autoregressive"]
    gpt = copy.deepcopy(plain)
    pack_linears(gpt)
    for block in gpt.blocks:
        assert all(getattr(block, name).layout == "panels" for name in ("qkv", "attn_out", "fc", "proj"))
    assert gpt.mel_head.layout == "panels" and gpt.text_head.layout == "onednn"
    onednn = copy.deepcopy(plain)
    pack_linears(onednn, few_rows=False)
    assert {m.layout for m in onednn.modules() if isinstance(m, PackedLinear)} == {"onednn"}


def _fixture_case(model: str):
    import json

    from conftest import FIXTURES

    if not FIXTURES.is_dir():
        return []
    return [p for p in sorted(FIXTURES.iterdir()) if (p / "meta.json").is_file()
            and json.loads((p / "meta.json").read_text())["model"] == model]


@needs_panels
@pytest.mark.parametrize("case", _fixture_case("UnifiedVoice"), ids=lambda p: p.name)
def test_few_rows_packed_gpt_reproduces_the_reference_fixture(case, monkeypatch):
    """The GPT with its decode linears on the few-row kernel: the fixture's logits and latents within its fp32
    tolerance, and its greedy codes (prefill and cached decode steps) exactly."""
    import json

    from safetensors.torch import load_file

    from fixture_runners import autoregressive as runner

    meta = json.loads((case / "meta.json").read_text())
    tensors = load_file(str(case / "io.safetensors"))
    inputs = {k[len("input."):]: v for k, v in tensors.items() if k.startswith("input.")}
    plain_load = runner.load_converted

    def packed_load(case_dir, meta_, kind):
        model = plain_load(case_dir, meta_, kind).eval()
        pack_linears(model)
        assert model.blocks[0].qkv.layout == "panels" and model.mel_head.layout == "panels"
        return model

    monkeypatch.setattr(runner, "load_converted", packed_load)
    with torch.no_grad():
        got = runner.run(case, meta, inputs)
    assert set(got) == {k[len("output."):] for k in tensors if k.startswith("output.")}
    for name, have in got.items():
        want = tensors[f"output.{name}"]
        assert tuple(have.shape) == tuple(want.shape), name
        if name in runner.EXACT or not want.is_floating_point():
            assert torch.equal(have.to(want.dtype), want), name
        else:
            torch.testing.assert_close(have.to(want.dtype), want, atol=1e-4, rtol=1e-4)
