"""Logit processors and the sampling loop, with expectations worked out by hand; seeded, stop-aware sampling."""

import math
from types import SimpleNamespace

import pytest
import torch

from hare import checkpoints
from hare.errors import SettingsError
from hare.sampling import (SamplingSettings, apply_repetition_penalty, generate, next_codes, sample_codes,
                           top_k_filter, top_p_filter)

INF = math.inf


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0).tolist() == logits.tolist()


def test_top_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert top_k_filter(logits, 2).tolist() == [[-INF, 4.0, 3.0, -INF]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_k_filter(logits, 4), logits)
    ties = torch.tensor([[1.0, 3.0, 3.0, 2.0]])  # a tie with the k-th largest is kept (as transformers does)
    assert top_k_filter(ties, 1).tolist() == [[-INF, 3.0, 3.0, -INF]]


def test_top_p():
    # probabilities 0.5, 0.3, 0.15, 0.05: ascending cumulative 0.05, 0.2, 0.5, 1.0; with p=0.8 the ids whose
    # cumulative mass is <= 0.2 go, i.e. the two least likely
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_p_filter(probs.log(), 0.8)
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    out = top_p_filter(probs.log(), 0.9)  # cumulative 0.05 <= 0.1: only the last goes
    assert torch.isinf(out[0, 3]) and torch.isfinite(out[0, :3]).all()
    out = top_p_filter(probs.log(), 0.01)  # the most likely id always survives
    assert torch.isfinite(out[0, 0]) and torch.isinf(out[0, 1:]).all()
    assert torch.equal(top_p_filter(probs.log(), 1.0), probs.log())


def test_temperature_comes_before_top_p():
    # logits 2, 1, 0: at T=1 the probabilities are .665, .245, .090 -> top-p .8 keeps ids 0 and 1;
    # at T=.5 (logits 4, 2, 0) they are .867, .117, .016 -> cumulative .016, .133 <= .2: only id 0 survives
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(400, 3)
    seen = torch.zeros(400, 3, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    cold = next_codes(logits, seen, SamplingSettings(temperature=0.5, top_p=0.8, top_k=0, repetition_penalty=1.0), gen)
    assert cold.tolist() == [0] * 400
    warm = next_codes(logits, seen, SamplingSettings(temperature=1.0, top_p=0.8, top_k=0, repetition_penalty=1.0), gen)
    assert set(warm.tolist()) == {0, 1}
    # top-k 1 leaves only the argmax whatever the temperature
    hot = next_codes(logits, seen, SamplingSettings(temperature=5.0, top_p=1.0, top_k=1, repetition_penalty=1.0), gen)
    assert hot.tolist() == [0] * 400


class _StubGPT:
    """A 'model' whose logits are given per step and row: vocab 10, start token 8, stop token 9."""

    def __init__(self, logits_at):
        self.config = SimpleNamespace(start_mel_token=8, stop_mel_token=9)
        self.max_codes = 100
        self.logits_at = logits_at  # step -> (batch, 10)
        self.positions = []

    def prefill(self, cond_latent, text_tokens, batch, max_codes):
        return self.logits_at(0, batch), None

    def decode_step(self, codes, position, cache):
        self.positions.append(position)
        return self.logits_at(position, codes.shape[0])


def test_repetition_penalty_counts_the_prompt_filler_and_start_ids():
    # the reference's dummy prompt ids (1) and the start token (8) are "seen" from the first step on
    base = torch.tensor([0.5, 2.0, -1.0, 1.5, 1.2, -3.0, -3.0, -3.0, 2.2, 0.1])
    gpt = _StubGPT(lambda step, batch: base.expand(batch, -1))
    codes = generate(gpt, None, None, 1, SamplingSettings(greedy=True, repetition_penalty=2.0, max_codes=5))
    # effective logits: id1 1.0, id8 1.1 (seen) -> 3 (1.5) wins; then 3 drops to .75 and 4 (1.2) wins; then 4
    # drops to .6 and 8 (1.1) wins, and keeps winning: the penalty is applied once per seen id, not per use
    assert codes.tolist() == [[3, 4, 8, 8, 8]]
    assert gpt.positions == [1, 2, 3, 4]  # the i-th generated code is fed at speech position i
    plain = generate(gpt, None, None, 1, SamplingSettings(greedy=True, repetition_penalty=1.0, max_codes=3))
    assert plain.tolist() == [[8, 8, 8]]


def test_stopped_rows_keep_emitting_stop_and_the_batch_ends_when_all_stop():
    def logits_at(step, batch):
        out = torch.zeros(batch, 10)
        out[0, 9 if step == 2 else 3] = 5.0  # row 0 stops at its third code, then would like 3 again
        if batch > 1:
            out[1, 9 if step == 4 else 6] = 5.0  # row 1 stops at its fifth code
        return out

    gpt = _StubGPT(logits_at)
    codes = generate(gpt, None, None, 2, SamplingSettings(greedy=True, repetition_penalty=1.0, max_codes=20))
    assert codes.tolist() == [[3, 3, 9, 9, 9], [6, 6, 6, 6, 9]]
    assert gpt.positions == [1, 2, 3, 4]  # no step after every row stopped
    padded = sample_codes(_StubGPT(logits_at), None, None, 3, 2,
                          SamplingSettings(greedy=True, repetition_penalty=1.0, max_codes=8))
    assert padded.tolist() == [[3, 3, 9] + [9] * 5, [6, 6, 6, 6, 9] + [9] * 3, [3, 3, 9] + [9] * 5]
    capped = generate(_StubGPT(logits_at), None, None, 2, SamplingSettings(greedy=True, repetition_penalty=1.0,
                                                                            max_codes=2))
    assert capped.tolist() == [[3, 3], [6, 6]]


def test_sample_codes_reports_progress_and_checks_settings():
    gpt = _StubGPT(lambda step, batch: torch.zeros(batch, 10))
    updates = []
    bar = SimpleNamespace(update=updates.append, close=lambda: updates.append("closed"))
    out = sample_codes(gpt, None, None, 5, 2, SamplingSettings(max_codes=4), torch.Generator().manual_seed(0), bar)
    assert out.shape == (5, 4) and updates == [2, 2, 1, "closed"]
    with pytest.raises(SettingsError):
        SamplingSettings(top_p=0.0)
    with pytest.raises(SettingsError):
        SamplingSettings(temperature=0.0)
    with pytest.raises(SettingsError):
        sample_codes(gpt, None, None, 0, 2, SamplingSettings())


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
    assert sample_codes(gpt, cond, text, 1, 1, SamplingSettings(max_codes=500)).shape == (1, gpt.max_codes)


def test_stop_handling_on_a_real_model():
    gpt = _gpt(bias_stop=4.0)  # stop is likely: rows finish early and hold stop after it
    cond, text = torch.randn(1, 16), torch.tensor([[3, 4, 5, 0]])
    codes = generate(gpt, cond, text, 8, SamplingSettings(max_codes=20), torch.Generator().manual_seed(0))
    assert codes.shape[1] <= 20
    stopped = 0
    for row in codes.tolist():
        if 8193 in row:
            stopped += 1
            first = row.index(8193)
            assert all(c == 8193 for c in row[first:])
    assert stopped > 0


def test_top_k_selection_draws_from_the_same_distribution_as_full_filtering():
    # next_codes samples among the top-k survivors only; its distribution must be that of filtering the whole
    # vocabulary with top_k_filter then top_p_filter (ids tied with the k-th included)
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 40, generator=gen) * 2
    logits[0, 7] = logits[0, 3] = logits[0].sort(descending=True).values[4]  # ties at the 5th place
    settings = SamplingSettings(temperature=0.9, top_p=0.85, top_k=5, repetition_penalty=1.0)
    expected = top_p_filter(top_k_filter(logits / 0.9, 5), 0.85).softmax(dim=-1)[0]
    n = 40000
    draws = next_codes(logits.expand(n, -1), torch.zeros(n, 40, dtype=torch.bool), settings, gen)
    freq = torch.bincount(draws, minlength=40).float() / n
    assert set(draws.unique().tolist()) == set(torch.nonzero(expected).flatten().tolist())
    assert torch.allclose(freq, expected, atol=0.012), (freq, expected)


def test_sampled_latents_are_the_fixed_candidates_teacher_forced_latents():
    """`sample_codes(latents=True)`: the same codes; each row's kept latents are `speech_latents` of its fixed
    codes (a stopped row reads the calm code from its stop on), as far as `valid` says, and no further."""
    from hare.rerank import MAX_CALM_RUN, calm_cut, fix_candidates

    gpt = _gpt(bias_stop=1.0)  # some rows stop within the limit (one 3 codes before it), some run to it
    c = gpt.config
    cond, text = torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([[3, 4, 5, 0]])
    s = SamplingSettings(max_codes=24)
    plain = sample_codes(gpt, cond, text, 6, 4, s, torch.Generator().manual_seed(3))
    codes, sampled = sample_codes(gpt, cond, text, 6, 4, s, torch.Generator().manual_seed(3), latents=True)
    assert torch.equal(codes, plain)
    assert sampled.latents.shape == (6, 24, 16) and sampled.latents.dtype == torch.float32
    fixed = fix_candidates(codes, c.stop_mel_token, c.calm_code, c.tail_codes)
    valid = sampled.valid(codes, fixed, c.stop_mel_token, c.calm_code)
    forced = gpt.speech_latents(cond.expand(6, -1), text.expand(6, -1), fixed)
    stops = (codes == c.stop_mel_token).any(dim=1)
    assert bool(stops.any()) and not bool(stops.all())
    for i in range(6):
        n = int(valid[i])
        assert n >= 1 and torch.allclose(sampled.latents[i, :n], forced[i, :n], atol=1e-5)
        if bool(stops[i]) and n < 24:  # past `valid` the fixed codes' tail differs from what the pass read
            assert not torch.allclose(sampled.latents[i, n:], forced[i, n:], atol=1e-3)
        # the calm codes after a stop are fed: a stopped row is valid up to its tail codes (24 - 3 of them, and
        # the latent that reads the last calm one), so the decoder's cut is covered where it falls before them
        assert n == (24 - 3 + 1 if bool(stops[i]) else 24)
        first_stop = int((codes[i] == c.stop_mel_token).int().argmax()) if bool(stops[i]) else 24
        if first_stop + MAX_CALM_RUN < 24 - 3:
            assert calm_cut(fixed[i], calm_code=c.calm_code) <= n
