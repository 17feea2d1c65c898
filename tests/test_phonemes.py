"""The English phoneme front end (`hare.phonemes`): symbols, round trips, numbers, punctuation, unknown words,
non-Latin input, the disk cache; a phoneme GPT in training (its embedding mapped from a letter GPT's) and in
the pipeline (the GPT reads phonemes, the reranker the BPE spelling)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from hare import checkpoints, phonemes
from hare.errors import CheckpointError, TextError
from hare.phonemes import PhonemeTokenizer, split_phoneme
from hare.text import Tokenizer, tokenizer_for

pytestmark = [pytest.mark.usefixtures("isolated_home"),
              pytest.mark.skipif(not phonemes.available(), reason="gruut / gruut-lang-en not installed "
                                 "(pip install gruut gruut-lang-en)")]

SENTENCES = ["Hello! This is Hare, a small text to speech model.", "Where did you put the keys?",
             "The quick brown fox jumps over the lazy dog.", "I read it yesterday; I'll read it again tomorrow."]


@pytest.fixture(scope="module")
def tok():
    return PhonemeTokenizer()


def test_symbols_are_phonemes_words_and_breaks(tok):
    assert tok.symbols("Hello world.") == list("hɛl") + ["ˈ", "oʊ", " ", "w", "ˈ", "ɚ", "l", "d", "."]
    assert tok.decode(tok.encode("The cat sat.")) == "ðə kˈæt sˈæt."
    assert tok.vocab_size == tok.start_token == phonemes.VOCAB_SIZE and tok.stop_token == 0
    ids = tok.encode(SENTENCES[0])
    assert all(0 < i < tok.vocab_size for i in ids)


@pytest.mark.parametrize("text", SENTENCES)
def test_round_trip_through_the_symbol_string(tok, text):
    ids = tok.encode(text)
    assert PhonemeTokenizer.ids_of(tok.decode(ids)) == ids
    assert tok.decode(torch.tensor(ids + [0])) == tok.decode(ids)  # tensors, and the stop token dropped
    with pytest.raises(TextError, match="not a phoneme symbol"):
        PhonemeTokenizer.ids_of("hɛlq")


def test_numbers_money_and_abbreviations_are_read_as_words(tok):
    assert tok.encode("I have 42 cats.") == tok.encode("I have forty two cats.")
    assert tok.encode("It costs $3.50.") == tok.encode("It costs three dollars, fifty cents.")
    assert tok.encode("Dr. Smith came in 1999.") == tok.encode("Doctor Smith came in nineteen ninety nine.")
    with pytest.raises(TextError, match="too large"):
        tok.encode("9" * 50)


def test_punctuation_becomes_one_break_of_four(tok):
    def breaks(text):
        return [s for s in tok.symbols(text) if s in phonemes.BREAKS]

    assert breaks("Yes, I know. Do you? Wow!") == [",", ".", "?", "!"]
    assert breaks("Really?! Fine...") == ["?", "."]  # runs of marks: one break, the strongest
    assert breaks('He said "no" (twice) -- then left') == []  # quotes, brackets, dashes: no break symbol
    assert tok.symbols("Stop.")[-1] == "." and tok.symbols(" , Stop")[0] != ","  # no break before any word


def test_unknown_words_get_a_guess_not_unk(tok):
    symbols = tok.symbols("Zorblax quixotically flummoxed the xylophone.")
    assert "[UNK]" not in symbols and symbols.count(" ") == 4
    assert sum(s in phonemes.PHONEMES for s in symbols) > 20


def test_heteronyms_follow_the_part_of_speech(tok):
    past, present = tok.decode(tok.encode("I read it yesterday.")), tok.decode(tok.encode("I will read it."))
    assert "ɹˈɛd" in past and "ɹˈid" in present


def test_non_latin_text_is_transliterated_and_nothing_to_say_is_an_error(tok):
    assert tok.encode("Привет мир") == tok.encode("Privet mir")  # the documented fallback: ASCII transliteration
    assert tok.encode("naïve café") == tok.encode("naive cafe")
    for bad in ["", "   ", "...", "🙂🙂", "?!"]:
        with pytest.raises(TextError, match="nothing to speak"):
            tok.encode(bad)
    with pytest.raises(TextError, match="must be a string"):
        tok.encode(None)
    assert tok.encode("...", check=False) == []


def test_too_long_text_is_refused_with_the_limit_named():
    short = PhonemeTokenizer(max_tokens=12)
    short.encode("Hi there.")
    with pytest.raises(TextError, match="too long for one piece"):
        short.encode("This sentence has far more than ten phonemes in it.")


def test_split_phoneme_stress_marks_and_unknown_characters():
    assert split_phoneme("ˈoʊ") == ["ˈ", "oʊ"]
    assert split_phoneme("ˌt͡ʃ") == ["ˌ", "t͡ʃ"]
    assert split_phoneme("iː") == ["i"] and split_phoneme("g") == ["ɡ"] and split_phoneme("tʃ") == ["t͡ʃ"]
    assert split_phoneme("q") == ["[UNK]"]
    assert set(phonemes.SPELLINGS) == set(phonemes.SYMBOLS)


def test_disk_cache_is_shared_and_survives_pickling(tmp_path, monkeypatch):
    path = tmp_path / "cache.sqlite"
    first = PhonemeTokenizer(disk_cache=path)
    ids = first.encode(SENTENCES[2])
    assert path.is_file()
    second = pickle.loads(pickle.dumps(first))  # what a data-loader worker gets

    def no_gruut(text):
        raise AssertionError("should come from the cache")

    monkeypatch.setattr(PhonemeTokenizer, "_phonemize", staticmethod(no_gruut))
    second._memo.clear()
    assert second.encode(SENTENCES[2]) == ids
    assert PhonemeTokenizer(disk_cache=path).encode(SENTENCES[2]) == ids
    monkeypatch.undo()
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"not a database at all" * 100)  # a corrupt cache costs speed, never the result
    assert PhonemeTokenizer(disk_cache=broken).encode(SENTENCES[2]) == ids
    blocked = tmp_path / "a-file" / "cache.sqlite"
    (tmp_path / "a-file").write_text("")  # its folder cannot be made
    assert PhonemeTokenizer(disk_cache=blocked).encode(SENTENCES[2]) == ids


def test_tokenizer_for_names():
    assert isinstance(tokenizer_for("bpe"), Tokenizer)
    assert isinstance(tokenizer_for("phonemes-en"), PhonemeTokenizer)
    with pytest.raises(CheckpointError, match="unknown text front end"):
        tokenizer_for("klingon")


# ----------------------------------------------------------------------------------------------------------
# A phoneme GPT


def phoneme_config(config):
    v = phonemes.VOCAB_SIZE
    return dataclasses.replace(config, text_tokenizer=phonemes.FRONT_END, text_vocab=v, start_text_token=v,
                               stop_text_token=0)


def test_a_letter_gpt_starts_a_phoneme_gpt_from_its_spelling_rows():
    from hare.models.configs import GPTConfig
    from hare.train.objectives import make_objective

    torch.manual_seed(0)
    small = dict(layers=1, dim=32, heads=2, max_mel_tokens=48, max_text_tokens=48, mel_vocab=18,
                 start_mel_token=16, stop_mel_token=17, cond_attn_blocks=1)
    letters = checkpoints.build("autoregressive", GPTConfig(**small))
    obj = make_objective("gpt", {**small, **{f.name: getattr(phoneme_config(letters.config), f.name)
                                            for f in dataclasses.fields(GPTConfig)
                                            if f.name in ("text_tokenizer", "text_vocab", "start_text_token")}})
    model = obj.build_models()["model"]
    fresh_stress = model.text_embedding.weight[phonemes.SYMBOLS.index("ˈ")].clone()
    obj.load_init(model, letters, "letters")
    new, old = model.text_embedding.weight, letters.text_embedding.weight
    bpe = Tokenizer()
    assert torch.equal(new[phonemes.SYMBOLS.index("k")], old[bpe.encode("k")[0]])
    sh = bpe.encode("sh", check=False)
    assert torch.allclose(new[phonemes.SYMBOLS.index("ʃ")], old[sh].mean(0))
    assert torch.equal(new[phonemes.VOCAB_SIZE], old[letters.config.start_text_token])  # start token
    assert torch.equal(new[phonemes.SYMBOLS.index("ˈ")], fresh_stress)  # no spelling: its fresh value
    assert torch.equal(model.blocks[0].qkv.weight, letters.blocks[0].qkv.weight)  # the body is the letter GPT's
    bad = make_objective("gpt", {**small, "text_tokenizer": phonemes.FRONT_END})
    from hare.train import TrainingError

    with pytest.raises(TrainingError, match="text_vocab"):
        bad.build_models()


def test_a_phoneme_gpt_trains_end_to_end(tmp_path):
    from test_train_data import write_tone_corpus
    from test_train_loop import MODELS, OPTIONS
    from hare.models.configs import VQVAEConfig
    from hare.train.config import TrainConfig
    from hare.train.loop import train

    torch.manual_seed(0)
    vq = checkpoints.build("vqvae", VQVAEConfig(**MODELS["vqvae"]))
    vq_path = checkpoints.save(vq, "vqvae", vq.config, tmp_path / "vq")
    v = phonemes.VOCAB_SIZE
    cfg = {"objective": "gpt", "out_dir": str(tmp_path / "out"),
           "model": {**MODELS["gpt"], "text_tokenizer": phonemes.FRONT_END, "text_vocab": v, "start_text_token": v},
           "options": dict(OPTIONS["gpt"], guided_weight=1.0, guided_layers=[0], guided_heads=1),
           "data": {"train": str(write_tone_corpus(tmp_path / "c", speakers=2, per_speaker=4, seed=3)),
                    "cache_dir": str(tmp_path / "cache"), "vqvae": str(vq_path), "batch_size": 4, "workers": 0,
                    "preprocess_workers": 0},
           "optim": {"lr": 1e-3, "warmup_steps": 1},
           "train": {"steps": 3, "log_every": 1, "save_every": 0, "progress": False, "tensorboard": False}}
    result = train(TrainConfig.from_dict(cfg))
    model, kind, config = checkpoints.load(result.exported)
    assert kind == "autoregressive" and config.text_tokenizer == phonemes.FRONT_END
    assert model.text_embedding.weight.shape[0] == v + 1


def test_the_pipeline_gives_the_gpt_phonemes_and_the_reranker_the_spelling(tmp_path, monkeypatch):
    from tiny_models import tiny_models, tiny_tts, write_voice
    from hare import rerank as R

    models = tiny_models()
    letters = models["autoregressive"]
    gpt = checkpoints.build("autoregressive", phoneme_config(letters.config)).eval()
    with torch.no_grad():
        gpt.mel_head.bias[8193] += 3.0  # candidates end early, as tiny_models does
    models["autoregressive"] = gpt
    write_voice(tmp_path / "voices" / "alice")
    tts = tiny_tts(tmp_path / "voices", models=models)
    assert isinstance(tts.gpt_tokenizer, PhonemeTokenizer) and isinstance(tts.tokenizer, Tokenizer)
    text = "Hello there, world."
    seen = {}
    real_sim = tts.clvp.similarity
    import hare.sampling as S

    real_sample = S.sample_codes

    def spy_sample(model, cond, text_ids, *a, **k):
        seen["gpt"] = text_ids[0].tolist()
        return real_sample(model, cond, text_ids, *a, **k)

    def spy_sim(text_ids, *a, **k):
        seen["clvp"] = text_ids[0].tolist()
        return real_sim(text_ids, *a, **k)

    real_pass = R.GptPass.__call__

    def spy_pass(self, candidates):
        seen["pass"] = candidates.text_for_gpt[0].tolist()
        return real_pass(self, candidates)

    monkeypatch.setattr(S, "sample_codes", spy_sample)
    monkeypatch.setattr(tts.clvp, "similarity", spy_sim)
    monkeypatch.setattr(R.GptPass, "__call__", spy_pass)
    out = tts.tts(text, voice="alice", preset="fast", seed=1, num_candidates=3, diffusion_steps=4, max_codes=30,
                  likelihood_weight=0.3)
    assert out.audio.numel() > 0
    assert seen["gpt"] == seen["pass"] == PhonemeTokenizer().encode(text) + [0]
    assert seen["clvp"] == Tokenizer().encode(text) + [0]
    bad = dataclasses.replace(gpt.config, text_vocab=70, start_text_token=70)
    models["autoregressive"] = checkpoints.build("autoregressive", bad)
    with pytest.raises(CheckpointError, match="text vocabulary"):
        tiny_tts(tmp_path / "voices", models=models)


def test_warm_up_in_the_background_and_a_clear_error_without_gruut(monkeypatch):
    import sys

    tok = PhonemeTokenizer()
    tok.start_warm_up()
    assert tok._warm is not None
    assert tok.encode("Warm words.") == PhonemeTokenizer().encode("Warm words.")
    assert not tok._warm.is_alive()
    phonemes._gruut.cache_clear()
    monkeypatch.setitem(sys.modules, "gruut", None)  # as if it were not installed
    try:
        with pytest.raises(TextError, match="pip install gruut gruut-lang-en"):
            PhonemeTokenizer().encode("No front end.")
    finally:
        phonemes._gruut.cache_clear()


def test_a_decoder_objective_reads_its_frozen_gpts_front_end_and_its_workers_never_load_that_gpt(tmp_path,
                                                                                                 monkeypatch):
    from test_train_loop import MODELS
    from hare.models.configs import GPTConfig
    from hare.train.objectives import diffusion, make_objective

    gpt = checkpoints.build("autoregressive", phoneme_config(GPTConfig(**MODELS["gpt"])))
    path = checkpoints.save(gpt, "autoregressive", gpt.config, tmp_path / "gpt")
    obj = make_objective("diffusion", {**MODELS["diffusion"], "conditioning_input": "latents"},
                         {"max_codes": 8, "cond_frames": 32, "gpt": str(path)})
    assert isinstance(obj.tokenizer, PhonemeTokenizer)  # the main process: read from the GPT's config
    worker = pickle.loads(pickle.dumps(obj))

    def no_load(*a, **k):
        raise AssertionError("a data-loader worker loaded the GPT")

    monkeypatch.setattr(diffusion, "load_frozen_gpt", no_load)
    assert isinstance(worker.tokenizer, PhonemeTokenizer)
    assert worker.tokenizer.encode("Hello.") == obj.tokenizer.encode("Hello.")
