"""Reranking (`hare.rerank`): the candidates' layout (fix-up, the speller's view, the calm-code cut, the
short-candidate rule), the `Reranker`'s blend and pick with scorer doubles, each real scorer on tiny networks,
and the reranker a model builds from its settings. Hand-computed expectations."""

import dataclasses

import pytest
import torch

import hare
from hare import checkpoints
from hare import rerank as R
from hare.errors import SettingsError
from hare.pipeline import TextToSpeech, diffusion_frames, make_settings
from hare.rerank import CALM_CODE, SPELLER_CALM_RUN, calm_cut, fix_candidates, spoken_candidates
from hare.voices import VoiceLibrary

from tiny_models import save_models_dir, tiny_mini_models, write_voice

STOP = 8193


def test_fix_candidates_replaces_from_first_stop_and_sets_tail():
    codes = torch.tensor([[5, 6, STOP, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6, 7, STOP]])
    fixed = fix_candidates(codes)
    assert fixed.tolist() == [
        [5, 6, 83, 83, 83, 45, 45, 248],
        [1, 2, 3, 4, 5, 45, 45, 248],
    ]
    assert codes[0, 2] == STOP  # input untouched


def test_fix_candidates_leaves_rows_without_stop(caplog):
    codes = torch.tensor([[5, 6, 7, 8], [STOP, 1, 2, 3]])
    fixed = fix_candidates(codes)
    assert fixed[0].tolist() == [5, 6, 7, 8]
    assert fixed[1].tolist() == [83, 45, 45, 248]
    assert "never emitted a stop token" in caplog.text


def test_spoken_candidates_end_each_row_after_its_speech():
    codes = torch.tensor([[5, 6, STOP, 7, 8, 9], [1, 2, 3, 4, 5, STOP], [1, 2, 3, 4, 5, 6], [STOP, 1, 2, 3, 4, 5]])
    rows = spoken_candidates(codes, calm_run=2)
    assert [r.tolist() for r in rows] == [
        [5, 6, 83, 83, 45, 45, 248],  # the speech before the first stop, 2 calm codes, the tail
        [1, 2, 3, 4, 5, 83, 83, 45, 45, 248],  # longer than the row: never cut to the padded width
        [1, 2, 3, 4, 5, 6],  # no stop token: whole, as fix_candidates leaves it
        [83, 83, 45, 45, 248],
    ]
    assert spoken_candidates(codes[:1], stop_token=9, calm_code=0, tail_codes=(), calm_run=1)[0].tolist() == [
        5, 6, STOP, 7, 8, 0]
    with pytest.raises(ValueError, match="calm_run"):
        spoken_candidates(codes, calm_run=0)


def test_calm_cut_keeps_eight_calm_codes():
    c = CALM_CODE
    codes = torch.tensor([1, 2, c, c, 3] + [c] * 12 + [4])
    # the run after 3 starts at index 5; its 9th calm code is at index 13
    assert calm_cut(codes) == 13
    assert calm_cut(torch.tensor([1, 2, 3])) == 3
    assert calm_cut(torch.tensor([c] * 8 + [1])) == 9  # a run of exactly 8 never cuts
    assert calm_cut(torch.tensor([c] * 20)) == 8


def test_diffusion_frames():
    assert diffusion_frames(100) == 435  # 100*4*24000//22050 = 435.37
    assert diffusion_frames(500) == 2176
    assert diffusion_frames(0) == 0


def test_drop_short_candidates_never_picks_a_silent_one():
    from hare.rerank import drop_short_candidates

    calm = 7
    speech = torch.arange(20)[None].repeat(3, 1) % 5  # no calm code: full length (20)
    silent = torch.tensor([[1, 2] + [calm] * 18])  # calm after two codes: 10 kept (cut after 8 calm codes)
    codes = torch.cat([speech, silent])
    scores = torch.tensor([0.1, 0.2, 0.3, 0.9])  # the reranker prefers the silent one
    out = drop_short_candidates(codes, scores, 0.8, calm_code=calm)
    assert out[3] == float("-inf") and torch.equal(out[:3], scores[:3]) and int(out.argmax()) == 2
    assert torch.equal(drop_short_candidates(codes, scores, 0.4, calm_code=calm), scores)  # 10 >= 0.4 * 20
    # all short (or all alike): nothing is dropped
    assert torch.equal(drop_short_candidates(silent.repeat(2, 1), scores[:2], 0.8, calm_code=calm), scores[:2])


def test_min_length_ratio_is_validated():
    from hare.errors import SettingsError
    from hare.pipeline import make_settings

    assert make_settings("fast").min_length_ratio == 0.0  # the reference's behaviour by default
    with pytest.raises(SettingsError, match="min_length_ratio"):
        make_settings("fast", min_length_ratio=1.0)


def test_fix_candidates_uses_the_models_silence_codes():
    codes = torch.tensor([[5, 6, 65, 9, 9, 9, 9]])
    fixed = fix_candidates(codes, stop_token=65, calm_code=3, tail_codes=(3, 4))
    assert fixed.tolist() == [[5, 6, 3, 3, 3, 3, 4]]


# --------------------------------------------------------------------------------------------------
# The Reranker, with scorer doubles

LAYOUT = R.Layout(stop_token=65, calm_code=3, tail_codes=(3, 3, 5))


class Recording:
    """A scorer double: returns fixed scores and records the candidates it judged."""

    def __init__(self, scores):
        self.scores, self.seen = None if scores is None else torch.tensor(scores), []

    def score(self, candidates):
        self.seen.append(candidates)
        return self.scores


class Refuses:
    def score(self, candidates):
        raise AssertionError("this scorer's weight is 0 in the blend: it must not run")


def _candidates(reranker, sampled, **kw):
    return reranker.candidates(torch.tensor([[20, 21, 22, 0]]), sampled, **kw)


def test_reranker_fixes_orders_and_skips_short_candidates():
    speech = torch.arange(20)[None].repeat(3, 1) % 5 + 10  # full length, no stop
    silent = torch.tensor([[11, 12, 65] + [9] * 17])  # stops after two codes
    sampled = torch.cat([speech, silent])
    base = Recording([0.1, 0.3, 0.2, 0.9])  # the base prefers the silent one
    reranker = R.Reranker(LAYOUT, base)
    cands = _candidates(reranker, sampled)
    best = reranker.pick(cands)
    assert best.shape == (1, 20) and best[0, :3].tolist() == [11, 12, 3]  # fixed codes of the base's pick
    assert base.seen[0] is cands and cands.fixed[3, 2:].tolist() == [3] * 15 + [3, 3, 5]  # calm, then the tail
    assert torch.equal(cands.sampled, sampled)  # the sampled codes are kept as they were
    strict = R.Reranker(LAYOUT, base, min_length_ratio=0.8)
    assert torch.equal(strict.pick(_candidates(strict, sampled), k=2), sampled[[1, 2]])  # never the short one
    # asked for more than it has: k is capped; the ruled-out one comes last, only to make up min_k
    assert strict.pick(_candidates(strict, sampled), k=9).shape == (4, 20)
    assert torch.equal(strict.pick(_candidates(strict, sampled), k=9, min_k=1), sampled[[1, 2, 0]])
    assert torch.equal(strict.scores(_candidates(strict, sampled)), base.scores)  # the rule is the pick's


def test_reranker_blends_standardised_parts_and_skips_a_base_with_no_share():
    sampled = torch.arange(20)[None].repeat(3, 1) % 5 + 10
    base, likelihood, aligned = Recording([0.9, 0.5, 0.1]), Recording([-3.0, -1.0, -2.0]), Recording([-0.2, -0.5, -0.1])

    def rows(base_and_parts):
        reranker = R.Reranker(LAYOUT, *base_and_parts)
        return reranker.scores(_candidates(reranker, sampled))

    # the whole blend to one part: its order, and the base never runs
    only = R.Reranker(LAYOUT, Refuses(), [(1.0, likelihood)])
    assert only.scores(_candidates(only, sampled)).argsort(descending=True).tolist() == [1, 2, 0]
    # standardised at 0.5: base z = (1, 0, -1), likelihood z = (-1, 1, 0) -> (0, 0.5, -0.5)
    half = rows((base, [(0.5, likelihood)]))
    assert torch.allclose(half, torch.tensor([0.0, 0.5, -0.5]), atol=1e-6)
    # thirds: the mean of the three standardised scores
    thirds = rows((base, [(1 / 3, likelihood), (1 / 3, aligned)]))
    want = (torch.tensor([1.0, 0.0, -1.0]) + torch.tensor([-1.0, 1.0, 0.0])
            + (aligned.scores - aligned.scores.mean()) / aligned.scores.std()) / 3
    assert torch.allclose(thirds, want, atol=1e-5)
    # a zero weight is no part at all
    assert torch.equal(rows((base, [(0.0, Refuses())])), base.scores)


def test_reranker_leaves_an_abstaining_part_out_and_refuses_bad_weights():
    sampled = torch.arange(12)[None].repeat(3, 1) % 5 + 10
    base = Recording([0.9, 0.5, 0.1])
    abstains = Recording(None)
    reranker = R.Reranker(LAYOUT, base, [(0.5, abstains)])
    cands = _candidates(reranker, sampled)
    assert torch.equal(reranker.scores(cands), base.scores) and abstains.seen == [cands]  # asked, then left out
    lone = R.Reranker(LAYOUT, None, [(1.0, abstains)])
    with pytest.raises(ValueError, match="no scorer"):
        lone.scores(_candidates(lone, sampled))
    with pytest.raises(ValueError, match="at most 1"):
        R.Reranker(LAYOUT, base, [(0.6, base), (0.6, base)])
    with pytest.raises(ValueError, match="base scorer"):
        R.Reranker(LAYOUT, None, [(0.5, base)])
    with pytest.raises(ValueError, match="2 precomputed scores for 3"):
        R.Reranker(LAYOUT, R.Precomputed(torch.zeros(2))).scores(cands)


def test_blend_ranks_a_ruled_out_candidate_last_without_swamping_the_spread():
    blended = R.blend_scores(torch.zeros(3), [(1.0, torch.tensor([-1.0, float("-inf"), -2.0]))])
    assert torch.isfinite(blended).all() and blended.argsort().tolist() == [1, 2, 0]
    assert torch.equal(R.blend_scores(torch.zeros(2), [(1.0, torch.full((2,), float("-inf")))]), torch.zeros(2))


# --------------------------------------------------------------------------------------------------
def test_speller_reads_in_bf16_only_beside_an_int8_clvp_on_bf16_hardware(mini_models, tmp_path, monkeypatch):
    """The speller runs under bf16 autocast where the rerank stage is float32 only because of int8 weights:
    dtype="bf16" with quantize="int8" on a CPU with bf16 matrix hardware; its scores are float32's to bf16
    rounding. Elsewhere it reads in the stage's own precision (no dtype of its own)."""
    from hare import kernels
    from hare.models.configs import SpellerConfig

    torch.manual_seed(0)
    speller = checkpoints.build("speller", SpellerConfig(speech_vocab=64, dim=32, depth=1, heads=1, ff_mult=2))
    folder = save_models_dir(mini_models, tmp_path / "m")
    write_voice(folder / "voices" / "default")
    checkpoints.save(speller, "speller", speller.config, folder / "speller")
    settings = make_settings("ultra_fast", ctc_weight=1.0, k=3)
    for hardware, quantize, dtype, want in ((True, "int8", "bf16", torch.bfloat16), (False, "int8", "bf16", None),
                                            (True, None, "bf16", None), (True, "int8", "fp32", None)):
        monkeypatch.setattr(kernels, "bf16_matmul", lambda: hardware)
        tts = hare.load_model(folder, quantize=quantize, dtype=dtype)
        scorer = tts.reranker(settings).parts[0][1]
        assert isinstance(scorer, R.SpellerScorer) and scorer.dtype == want, (hardware, quantize, dtype)
    cands = _letter_candidates(tts.gpt.config, tts.tokenizer)
    letters = R.text_letters(tts.tokenizer, cands.text[0])
    with torch.no_grad():
        exact = R.SpellerScorer(tts.speller(), tts.tokenizer).read(letters, cands)
        rounded = R.SpellerScorer(tts.speller(), tts.tokenizer, torch.bfloat16).read(letters, cands)
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, exact)
    torch.testing.assert_close(rounded, exact, atol=0.05, rtol=0.02)


# The real scorers on tiny networks


@pytest.fixture(scope="module")
def mini_models():
    return tiny_mini_models()


def _tts(models):
    return TextToSpeech(gpt=models["autoregressive"], clvp=models["clvp2"], diffusion=models["diffusion_decoder"],
                        vocoder=models["vocoder"], voices=VoiceLibrary([]), model_id="rerank-test", device="cpu")


def _letter_candidates(gpt_config, tokenizer):
    """Three sampled candidates of "Hello, 2 cats." (the second stops after 12 codes)."""
    sampled = torch.arange(20)[None].repeat(3, 1) % 5 + 10
    sampled[1, 12:] = gpt_config.stop_mel_token  # a candidate that stopped early
    layout = R.Layout.of(gpt_config)
    text = torch.tensor([tokenizer.encode("Hello, 2 cats.") + [0]])
    return R.Candidates(text, sampled, layout.fixed(sampled), layout)


def test_clvp_scorer_is_the_clvps_similarity_and_mixes_the_cvvp_lazily():
    from tiny_models import tiny_models

    m = tiny_models()
    clvp, cvvp = m["clvp2"].eval(), m["cvvp"].eval()
    g = torch.Generator().manual_seed(0)
    sampled = torch.randint(0, 100, (3, 10), generator=g)
    layout = R.Layout()
    text = torch.tensor([[3, 4, 5, 0]])
    mels = [torch.randn(80, 64, generator=g), torch.randn(80, 64, generator=g)]
    cands = R.Candidates(text, sampled, layout.fixed(sampled), layout, cond_mels=mels)
    loads = []

    def load():
        loads.append(1)
        return cvvp

    with torch.no_grad():
        plain = R.ClvpScorer(clvp).score(cands)
        assert torch.allclose(plain, clvp.similarity(text, cands.fixed))
        assert torch.allclose(R.ClvpScorer(clvp, share_states=True).score(cands), plain, atol=1e-6)
        assert ("clvp_states", id(clvp)) in cands.shared  # the speech pass kept for the letter head
        voice = torch.stack([cvvp.similarity(x[None], cands.fixed) for x in mels]).mean(0)
        mixed = R.ClvpScorer(clvp, load, 0.25).score(cands)
        assert torch.allclose(mixed, 0.25 * voice + 0.75 * plain, atol=1e-6) and loads == [1]
        no_mels = dataclasses.replace(cands, cond_mels=None, shared={})
        assert torch.allclose(R.ClvpScorer(clvp, load, 0.25).score(no_mels), plain) and loads == [1]  # not loaded


def test_gpt_pass_is_shared_by_likelihood_and_alignment(mini_models):
    gpt = mini_models["autoregressive"].eval()
    layout = R.Layout.of(gpt.config)
    sampled = torch.arange(20)[None].repeat(3, 1) % 5 + 10
    sampled[0, 9:] = gpt.config.stop_mel_token
    text = torch.tensor([[20, 21, 22, 0]])
    cond = torch.randn(1, gpt.config.dim, generator=torch.Generator().manual_seed(2))
    cands = R.Candidates(text, sampled, layout.fixed(sampled), layout, ar_latent=cond)
    calls = []

    class Counting:  # a GPT double around the real one: counts the passes
        def score_candidates(self, *a, **k):
            calls.append(k["alignment"])
            return gpt.score_candidates(*a, **k)

    gpt_pass = R.GptPass(Counting(), batch_size=2, alignment=True)
    with torch.no_grad():
        likelihood = R.LikelihoodScorer(gpt_pass).score(cands)
        aligned = R.AlignmentScorer(gpt_pass).score(cands)
        assert calls == [True]  # one pass for both
        want = gpt.score_candidates(cond, text, sampled, alignment=True)  # the sampled codes, unfixed
        assert torch.allclose(likelihood, want.log_likelihood, atol=1e-5)
        assert torch.allclose(aligned, want.alignment, atol=1e-5)
        assert R.LikelihoodScorer(R.GptPass(gpt)).score(cands).shape == (3,)
    with pytest.raises(SettingsError, match="ar_latent"):
        R.LikelihoodScorer(R.GptPass(gpt)).score(dataclasses.replace(cands, ar_latent=None))


def test_letter_scorers_read_the_texts_letters(mini_models):
    from hare.models.configs import SpellerConfig
    from hare.text import CTC_ALPHABET, ctc_targets

    tts = _tts(mini_models)
    gc = tts.gpt.config
    cands = _letter_candidates(gc, tts.tokenizer)
    seen = {}

    class Speller:  # a speller double: records what it was asked to read
        def score(self, letters, codes):
            seen["args"] = (letters, codes)
            return torch.tensor([-2.0, -0.5, -1.0])

    assert R.SpellerScorer(Speller(), tts.tokenizer).score(cands).tolist() == [-2.0, -0.5, -1.0]
    letters, spoken = seen["args"]
    assert letters.tolist() == ctc_targets("hello, two cats.")  # numbers spelt out
    # each candidate read to its own end (its speech, SPELLER_CALM_RUN calm codes, the tail), not padded
    assert torch.equal(spoken[0], cands.sampled[0]) and torch.equal(spoken[2], cands.sampled[2])
    assert spoken[1].tolist() == cands.sampled[1, :12].tolist() + [gc.calm_code] * SPELLER_CALM_RUN + list(gc.tail_codes)
    class Dots:  # a tokenizer double whose text has no letters (a custom vocabulary's, say)
        def decode(self, tokens):
            return "... !"

    assert R.SpellerScorer(Speller(), Dots()).score(cands) is None  # nothing to spell: abstains
    # a real speller agrees with its own score
    torch.manual_seed(0)
    speller = checkpoints.build("speller", SpellerConfig(speech_vocab=64, dim=32, depth=1, heads=1, ff_mult=2)).eval()
    with torch.no_grad():
        assert torch.allclose(R.SpellerScorer(speller, tts.tokenizer).score(cands),
                              speller.score(letters, cands.layout.spoken(cands.sampled)))
    # the CLVP's letter head reads the fixed candidates and shares the similarity's speech pass
    c = dataclasses.replace(tts.clvp.config, ctc_classes=len(CTC_ALPHABET) + 1)
    clvp = checkpoints.build("clvp2", c).eval()
    with torch.no_grad():
        got = R.ClvpLetterScorer(clvp, tts.tokenizer).score(cands)
        assert torch.allclose(got, clvp.ctc_score(letters, cands.fixed), atol=1e-5)
        states = cands.shared[("clvp_states", id(clvp))]
        assert states.shape == (3, 20, c.speech_dim)
        R.ClvpScorer(clvp, share_states=True).score(cands)
        assert cands.shared[("clvp_states", id(clvp))] is states  # one speech pass for both


# --------------------------------------------------------------------------------------------------
# The reranker a model builds from its settings


def test_the_model_builds_the_reranker_its_settings_ask_for(mini_models):
    tts = _tts(mini_models)
    plain = tts.reranker(make_settings("ultra_fast"))
    assert isinstance(plain.base, R.ClvpScorer) and plain.parts == [] and plain.min_length_ratio == 0
    assert plain.layout == R.Layout(65, 3, (3, 3, 5))  # the model's own silence codes
    s = make_settings("ultra_fast", likelihood_weight=0.25, alignment_weight=0.25, min_length_ratio=0.5)
    both = tts.reranker(s)
    (wl, lik), (wa, ali) = both.parts
    assert (wl, wa) == (0.25, 0.25) and isinstance(lik, R.LikelihoodScorer) and isinstance(ali, R.AlignmentScorer)
    assert lik.gpt_pass is ali.gpt_pass and lik.gpt_pass.alignment and both.min_length_ratio == 0.5
    assert not tts.reranker(make_settings("ultra_fast", likelihood_weight=0.5)).parts[0][1].gpt_pass.alignment
    with pytest.raises(SettingsError, match="CTC letter head"):  # this CLVP has none, nor a speller
        tts.reranker(make_settings("ultra_fast", ctc_weight=1.0))
    from hare.text import CTC_ALPHABET

    clvp = tts.clvp
    tts.clvp = checkpoints.build("clvp2", dataclasses.replace(clvp.config, ctc_classes=len(CTC_ALPHABET) + 1)).eval()
    letters = tts.reranker(make_settings("ultra_fast", ctc_weight=0.5))
    assert isinstance(letters.parts[0][1], R.ClvpLetterScorer) and letters.parts[0][1].clvp is tts.clvp
    assert letters.base.share_states and letters.base.clvp is tts.clvp  # one CLVP speech pass for both
    tts.clvp = clvp
    no_heads = dataclasses.replace(tts.gpt.config, alignment_heads=())
    tts.gpt = checkpoints.build("autoregressive", no_heads).eval()
    with pytest.raises(SettingsError, match="guided attention"):
        tts.reranker(make_settings("ultra_fast", alignment_weight=1.0))
    # and through a synthesis, before any voice or sampling work
    tts.voice_latents = lambda *a, **k: (_ for _ in ()).throw(AssertionError("no work before the settings check"))
    with pytest.raises(SettingsError, match="guided attention"):
        tts.tts("Hello there.", preset="ultra_fast", alignment_weight=0.5)


def test_rerank_picks_by_the_models_speller_end_to_end(mini_models, tmp_path):
    """A model folder with a speller network: ctc_weight reads it (its CLVP has no letter head); a folder without
    one refuses ctc_weight; the real thing runs end to end through a synthesis."""
    from hare.models.configs import SpellerConfig

    torch.manual_seed(0)
    speller = checkpoints.build("speller", SpellerConfig(speech_vocab=64, dim=32, depth=1, heads=1, ff_mult=2))
    folder = save_models_dir(mini_models, tmp_path / "m")
    write_voice(folder / "voices" / "default")
    tts = hare.load_model(folder)
    assert tts.speller() is None
    with pytest.raises(SettingsError, match="speller network .* or a CLVP"):
        tts.reranker(make_settings("ultra_fast", ctc_weight=1.0))
    checkpoints.save(speller, "speller", speller.config, folder / "speller")
    tts = hare.load_model(folder)
    loaded = tts.speller()
    assert loaded is not None and loaded is tts.speller() and not loaded.training  # loaded once, for inference
    by_letters = tts.reranker(make_settings("ultra_fast", ctc_weight=1.0, k=3))
    assert isinstance(by_letters.parts[0][1], R.SpellerScorer) and by_letters.parts[0][1].speller is loaded
    cands = _letter_candidates(tts.gpt.config, tts.tokenizer)
    with torch.no_grad():
        want = loaded.score(R.text_letters(tts.tokenizer, cands.text[0]), cands.layout.spoken(cands.sampled))
        picked = tts.rerank(cands.text, cands.sampled, make_settings("ultra_fast", ctc_weight=1.0, k=3))
    assert torch.equal(picked, cands.fixed[want.argsort(descending=True)])
    out = tts.tts("Spell it.", preset="ultra_fast", seed=0, ctc_weight=0.5, num_candidates=2, diffusion_steps=3,
                  max_codes=20)
    assert out.settings["ctc_weight"] == 0.5 and out.audio.numel() > 0


def test_listen_candidates_lets_the_listener_pick_among_the_rerankers_best(tmp_path):
    """listen_candidates: the reranker's best N are decoded by the decoder's prior and the listener's best
    among them is the one synthesised; a model without a listener refuses the setting before any work; the
    real network loads from the model folder and runs end to end."""
    from hare.models.configs import ListenerConfig
    from tiny_models import tiny_models

    torch.manual_seed(0)
    folder = save_models_dir(tiny_models(), tmp_path / "m")
    write_voice(folder / "voices" / "default")
    tts = hare.load_model(folder)
    assert tts.listener() is None
    with pytest.raises(SettingsError, match="listener network"):
        tts.tts("Hello there.", preset="ultra_fast", listen_candidates=4)
    with pytest.raises(SettingsError, match="listen_candidates must be"):
        make_settings("ultra_fast", listen_candidates=-1)

    class Ear(torch.nn.Module):  # a listener double: prefers the longest decoded mel, remembers what it read
        def __init__(self):
            super().__init__()
            self.read = []

        def score(self, letters, mels):
            self.read.append((letters, [m.shape for m in mels]))
            return torch.tensor([float(m.shape[-1]) for m in mels])

    ear = Ear()
    tts._optional["listener"] = ear
    kw = dict(preset="ultra_fast", seed=3, num_candidates=6, diffusion_steps=3, max_codes=24)
    out = tts.tts("Listen to this.", listen_candidates=4, **kw)
    letters, shapes = ear.read[-1]
    assert len(shapes) == 4 and all(s[0] == tts.diffusion.config.in_channels for s in shapes)
    assert letters.tolist() == R.text_letters(tts.tokenizer, tts.tokenizer.encode("Listen to this.")).tolist()
    assert out.decoder_inputs[0].frames == max(s[-1] for s in shapes)  # the listener's choice was decoded
    assert "listen" in out.timings
    calls = len(ear.read)
    for off in (0, 1):  # off: the reranker's pick stands and the listener is not asked
        tts.tts("Listen to this.", listen_candidates=off, **kw)
    assert len(ear.read) == calls
    # the real network, from the folder
    listener = checkpoints.build("listener", ListenerConfig(n_mels=100, dim=32, depth=1, heads=1, ff_mult=2))
    checkpoints.save(listener, "listener", listener.config, folder / "listener")
    tts = hare.load_model(folder)
    loaded = tts.listener()
    assert loaded is not None and loaded is tts.listener() and not loaded.training
    out = tts.tts("Listen to this.", listen_candidates=3, **kw)
    assert out.audio.numel() > 0 and out.settings["listen_candidates"] == 3
