"""The GPT: cached decoding equals the uncached forward, the shared prompt is expanded to a batch, and the
teacher-forced forward's clipping, padding and latents behave as the reference's."""

import pytest
import torch

from hare import checkpoints
from hare.errors import TextError

KW = dict(layers=2, model_dim=32, heads=4, max_mel_tokens=30, max_text_tokens=20, max_conditioning_inputs=2,
          number_text_tokens=255, start_text_token=255)


def _gpt():
    torch.manual_seed(0)
    gpt = checkpoints.build("autoregressive", checkpoints.config_for("autoregressive", KW)).eval()
    with torch.no_grad():  # larger weights than the init, so that mistakes show in the logits
        for p in gpt.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return gpt


def _full_mel_logits(gpt, cond, text, codes):
    """Uncached teacher-forced logits, (positions, vocab): row j predicts code j (row 0: after the start token)."""
    out = gpt(cond, text, torch.tensor([text.shape[1]]), codes, torch.tensor([codes.shape[1] * 1024]),
              clip_inputs=False)
    return out.mel_logits[0].T


def test_cached_decode_equals_full_forward():
    gpt = _gpt()
    cond = torch.randn(1, 32)
    text = torch.tensor([[5, 9, 17, 2, 30]])
    codes = torch.tensor([[100, 7, 8000, 42]])
    logits, cache = gpt.prefill(cond, text, batch=3, max_codes=10)
    assert cache.length == gpt.prompt_length(text.shape[1]) == 1 + 1 + 5 + 1 + 1
    steps = [logits[0]]
    for i, code in enumerate(codes[0]):
        logits = gpt.decode_step(code.repeat(3), i + 1, cache)  # the start token is position 0, code i is i
        assert torch.allclose(logits[0], logits[2], atol=1e-6)  # every candidate shares the prompt
        steps.append(logits[0])
    full = _full_mel_logits(gpt, cond, text, codes)
    for j, step_logits in enumerate(steps):
        assert torch.allclose(step_logits, full[j], atol=1e-4), j


def test_expanded_cache_decodes_each_row_independently():
    gpt = _gpt()
    cond = torch.randn(1, 32)
    text = torch.tensor([[4, 8, 15, 16]])
    codes = torch.tensor([[1, 2, 3], [400, 500, 600], [8191, 0, 77]])  # one sequence per row
    logits, cache = gpt.prefill(cond, text, batch=3, max_codes=5)
    # the prompt's keys/values are stored once for all rows, each row has its own room for 5 codes
    assert cache.prefix_k.shape == (2, 1, 4, gpt.prompt_length(4), 8)  # (layers, 1, heads, positions, head_dim)
    assert cache.k.shape == (2, 5, 3, 4, 8) and cache.batch == 3  # (layers, positions, batch, heads, head_dim)
    assert cache.capacity == gpt.prompt_length(4) + 5 and cache.length == gpt.prompt_length(4)
    per_step = [logits]
    for i in range(codes.shape[1]):
        per_step.append(gpt.decode_step(codes[:, i], i + 1, cache))
    for row in range(3):
        full = _full_mel_logits(gpt, cond, text, codes[row: row + 1])
        for j, step in enumerate(per_step):
            assert torch.allclose(step[row], full[j], atol=1e-4), (row, j)


def test_decode_refuses_positions_past_the_table():
    gpt = _gpt()
    _, cache = gpt.prefill(torch.randn(1, 32), torch.tensor([[3]]), batch=1, max_codes=200)
    assert gpt.max_codes == 30 + 2 + 2 - 2  # positions: max_mel_tokens + 2 + max_conditioning_inputs
    with pytest.raises(ValueError):
        gpt.decode_step(torch.tensor([5]), gpt.config.mel_positions, cache)


def test_too_long_text_is_a_text_error():
    gpt = _gpt()
    with pytest.raises(TextError):
        gpt.prefill(torch.randn(1, 32), torch.ones(1, gpt.max_text_tokens + 1, dtype=torch.long), 1, 4)
    gpt.prefill(torch.randn(1, 32), torch.ones(1, gpt.max_text_tokens, dtype=torch.long), 1, 4)  # fits


def test_latents_are_the_states_behind_the_mel_logits():
    gpt = _gpt()
    cond, text = torch.randn(2, 32), torch.randint(1, 200, (2, 6))
    codes = torch.randint(0, 8192, (2, 9))
    lengths, wavs = torch.tensor([6, 6]), torch.tensor([9 * 1024, 9 * 1024])
    lat = gpt(cond, text, lengths, codes, wavs, clip_inputs=False, return_latent=True)
    assert lat.shape == (2, 9, 32)
    assert torch.allclose(lat, gpt.speech_latents(cond, text, codes), atol=1e-6)
    logits = gpt(cond, text, lengths, codes, wavs, clip_inputs=False).mel_logits  # (2, vocab, 9 + 2)
    # latent i is the state at the position whose logits predict code i; the last two positions are dropped
    assert logits.shape == (2, 8194, 11)
    assert torch.allclose(gpt.mel_head(lat).transpose(1, 2), logits[:, :, :9], atol=1e-4)
    codes2 = codes.clone()
    codes2[:, 5:] = 3  # changing later codes leaves earlier latents alone (causal)
    lat2 = gpt.speech_latents(cond, text, codes2)
    assert torch.allclose(lat[:, :6], lat2[:, :6], atol=1e-5)
    assert not torch.allclose(lat[:, 6:], lat2[:, 6:])


def test_clip_inputs_cuts_to_the_longest_lengths():
    gpt = _gpt()
    cond = torch.randn(2, 32)
    text = torch.randint(1, 200, (2, 10))
    codes = torch.randint(0, 8192, (2, 12))
    text_lengths, wav_lengths = torch.tensor([4, 7]), torch.tensor([5 * 1024, 8 * 1024 + 100])
    clipped = gpt(cond, text, text_lengths, codes, wav_lengths)
    manual = gpt(cond, text[:, :7], text_lengths, codes[:, :8], wav_lengths, clip_inputs=False)
    assert clipped.mel_logits.shape == (2, 8194, 8 + 2) and clipped.text_logits.shape == (2, 256, 7 + 2)
    for a, b in zip(clipped, manual):
        assert torch.allclose(a, b, atol=1e-5)


def test_losses_are_plain_mean_cross_entropy():
    gpt = _gpt()
    cond, text, codes = torch.randn(1, 32), torch.tensor([[7, 8]]), torch.tensor([[11, 12, 13]])
    out = gpt(cond, text, torch.tensor([2]), codes, torch.tensor([3 * 1024]), clip_inputs=False)
    mel_targets = torch.tensor([11, 12, 13, 8193, 8193])  # codes, the appended stop, then the target stop
    text_targets = torch.tensor([7, 8, 0, 0])
    logp = out.mel_logits[0].T.log_softmax(-1)
    assert torch.allclose(out.loss_mel, -logp[torch.arange(5), mel_targets].mean(), atol=1e-5)
    logp = out.text_logits[0].T.log_softmax(-1)
    assert torch.allclose(out.loss_text, -logp[torch.arange(4), text_targets].mean(), atol=1e-5)


def test_codes_after_clip_end_become_stop():
    gpt = _gpt()
    codes = torch.arange(10).repeat(2, 1)
    padded = gpt.pad_codes_after_end(codes, torch.tensor([3 * 1024 + 5, 20 * 1024]))
    assert padded[0].tolist() == [0, 1, 2, 3] + [8193] * 6  # 3 whole codes + 1 of slack
    assert padded[1].tolist() == list(range(10))
    assert codes[0].tolist() == list(range(10))  # the input is left alone


def test_conditioning_latent_is_the_clip_mean_of_first_frames():
    gpt = _gpt()
    mels = torch.randn(1, 3, 80, 20)
    both = gpt.conditioning_latent(mels)
    each = torch.stack([gpt.conditioning_latent(mels[:, i]) for i in range(3)])  # (clips, 1, dim)
    assert both.shape == (1, 32)
    assert torch.allclose(both, each.mean(0), atol=1e-5)


def test_converter_drops_exactly_the_legacy_mask_buffers():
    from conftest import FIXTURES
    from hare.errors import CheckpointError

    case = FIXTURES / "autoregressive"
    if not (case / "weights.pth").is_file():
        pytest.skip("autoregressive fixture not found")
    import json

    kwargs = json.loads((case / "meta.json").read_text())["kwargs"]
    sd = torch.load(case / "weights.pth", map_location="cpu", weights_only=True)
    layers = kwargs["layers"]
    legacy = {**sd, **{f"gpt.h.{i}.attn.bias": torch.ones(1, 1, 8, 8) for i in range(layers)},
              **{f"gpt.h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(layers)}}
    gpt = checkpoints.convert("autoregressive", legacy, kwargs)
    # GPT-2 Conv1D (in, out) weights arrive transposed into nn.Linear (out, in)
    assert torch.equal(gpt.blocks[0].qkv.weight, sd["gpt.h.0.attn.c_attn.weight"].t())
    for extra in ("gpt.wte.weight", "inference_model.lm_head.1.bias", "gpt.h.0.attn.bias_extra"):
        with pytest.raises(CheckpointError, match=extra.replace(".", r"\.")):
            checkpoints.convert("autoregressive", {**sd, extra: torch.zeros(3)}, kwargs)


def test_reference_defaults():
    from hare.convert.gpt import config_from_reference

    c = config_from_reference({})  # UnifiedVoice() with no arguments
    assert (c.layers, c.dim, c.heads, c.max_text_tokens, c.max_mel_tokens, c.max_conditioning_inputs) == \
        (8, 512, 8, 120, 250, 1)
    assert (c.text_vocab, c.start_text_token, c.stop_text_token) == (256, 256, 0)
    assert (c.mel_vocab, c.start_mel_token, c.stop_mel_token, c.mel_length_compression) == (8194, 8192, 8193, 1024)
    assert (c.text_positions, c.mel_positions) == (122, 253)
    with pytest.raises(TypeError):
        config_from_reference({"model_dimension": 3})


def test_a_chunk_after_the_shared_prompt_sees_the_prompt_and_itself_causally():
    gpt = _gpt()
    cond, text = torch.randn(1, 32), torch.tensor([[4, 8, 15]])
    codes = torch.tensor([[11, 22, 33]])
    _, cache = gpt.prefill(cond, text, batch=2, max_codes=6)
    with torch.no_grad():  # two codes in one pass (the cache's chunk path), then one more step
        x = gpt.mel_embedding(codes[:, :2].expand(2, -1)) + gpt.mel_pos.weight[1:3]
        chunk = gpt.mel_head(gpt.final_norm(gpt._stack(x, cache)))
        last = gpt.decode_step(codes[0, 2].repeat(2), 3, cache)
    full = _full_mel_logits(gpt, cond, text, codes)
    for row in range(2):
        assert torch.allclose(chunk[row, 0], full[1], atol=1e-4) and torch.allclose(chunk[row, 1], full[2], atol=1e-4)
        assert torch.allclose(last[row], full[3], atol=1e-4)
