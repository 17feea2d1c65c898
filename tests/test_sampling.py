"""Logit processors with hand-computed expectations; seeded, stop-aware candidate sampling."""

import math

import torch

from hare import checkpoints
from hare.sampling import (SamplingSettings, apply_repetition_penalty, generate, sample_codes, top_k_filter,
                           top_p_filter)


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


def test_top_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert top_k_filter(logits, 2).tolist() == [[-math.inf, 4.0, 3.0, -math.inf]]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p():
    # probabilities 0.5, 0.3, 0.15, 0.05: with p=0.8 the two smallest (cumulative 0.05, 0.2 <= 0.2) go
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_p_filter(probs.log(), 0.8)
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    # with p tiny, the most likely id always survives
    out = top_p_filter(probs.log(), 0.01)
    assert torch.isfinite(out[0, 0]) and torch.isinf(out[0, 1:]).all()


def _gpt(bias_stop: float = 0.0):
    torch.manual_seed(0)
    kw = dict(layers=1, model_dim=16, heads=2, max_mel_tokens=40, max_text_tokens=10, number_text_tokens=255,
              start_text_token=255)
    gpt = checkpoints.build("autoregressive", checkpoints.config_for("autoregressive", kw)).eval()
    with torch.no_grad():
        gpt.mel_head.bias[8193] += bias_stop
    return gpt


def test_sampling_is_seeded_and_padded():
    gpt = _gpt()
    cond, text = torch.randn(1, 16), torch.tensor([[3, 4, 5, 0]])
    s = SamplingSettings(max_codes=12)
    a = sample_codes(gpt, cond, text, 5, 2, s, torch.Generator().manual_seed(7))
    b = sample_codes(gpt, cond, text, 5, 2, s, torch.Generator().manual_seed(7))
    c = sample_codes(gpt, cond, text, 5, 2, s, torch.Generator().manual_seed(8))
    assert a.shape == (5, 12) and torch.equal(a, b) and not torch.equal(a, c)


def test_stop_handling():
    gpt = _gpt(bias_stop=4.0)  # stop is likely: rows finish early and are padded with stop after it
    cond, text = torch.randn(1, 16), torch.tensor([[3, 4, 5, 0]])
    codes = generate(gpt, cond, text, 8, SamplingSettings(max_codes=20), torch.Generator().manual_seed(0))
    for row in codes.tolist():
        if 8193 in row:
            first = row.index(8193)
            assert all(c == 8193 for c in row[first:])
    assert codes.shape[1] <= 20
