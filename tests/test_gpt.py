"""The GPT's cached decoding equals its uncached forward; prompt sharing across a batch."""

import torch

from hare import checkpoints

KW = dict(layers=2, model_dim=32, heads=4, max_mel_tokens=30, max_text_tokens=20, max_conditioning_inputs=2,
          number_text_tokens=255, start_text_token=255)


def _gpt():
    torch.manual_seed(0)
    return checkpoints.build("autoregressive", checkpoints.config_for("autoregressive", KW)).eval()


def test_cached_decode_equals_full_forward():
    gpt = _gpt()
    cond = torch.randn(1, 32)
    text = torch.tensor([[5, 9, 17, 2, 30]])
    codes = torch.tensor([[100, 7, 8000, 42]])
    logits, cache = gpt.prefill(cond, text, batch=3, max_codes=10)
    steps = [logits[0]]
    for i, code in enumerate(codes[0]):
        logits = gpt.decode_step(code.repeat(3), i + 1, cache)
        assert torch.allclose(logits[0], logits[2], atol=1e-6)  # every candidate shares the prompt
        steps.append(logits[0])
    # uncached: the teacher-forced pass over [cond, text (+stop), start, codes] gives the same logits.
    # both add one stop and the start token to the text; the mel logits cover start..last code + stop.
    out = gpt(cond, text, torch.tensor([text.shape[1]]), codes,
              torch.tensor([codes.shape[1] * 1024]), clip_inputs=False)
    full = out.mel_logits[0].T  # (positions, vocab): position j predicts code j
    for j, step_logits in enumerate(steps):
        assert torch.allclose(step_logits, full[j], atol=1e-4), j


def test_speech_latents_shape_and_causality():
    gpt = _gpt()
    cond = torch.randn(2, 32)
    text = torch.randint(1, 200, (2, 6))
    codes = torch.randint(0, 8192, (2, 9))
    lat = gpt.speech_latents(cond, text, codes)
    assert lat.shape == (2, 9, 32)
    codes2 = codes.clone()
    codes2[:, 5:] = 3  # changing later codes leaves earlier latents alone (causal)
    lat2 = gpt.speech_latents(cond, text, codes2)
    assert torch.allclose(lat[:, :6], lat2[:, :6], atol=1e-5)
    assert not torch.allclose(lat[:, 6:], lat2[:, 6:])


def test_codes_after_clip_end_become_stop():
    gpt = _gpt()
    codes = torch.arange(10).repeat(2, 1)
    padded = gpt.pad_codes_after_end(codes, torch.tensor([3 * 1024 + 5, 20 * 1024]))
    assert padded[0].tolist() == [0, 1, 2, 3] + [8193] * 6
    assert padded[1].tolist() == list(range(10))
