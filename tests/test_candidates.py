"""The candidate fix-up, the speller's view of the candidates, the calm-code cut and the diffusion output length
(hand-computed expectations)."""

import pytest
import torch

from hare.pipeline import CALM_CODE, calm_cut, diffusion_frames, fix_candidates, spoken_candidates

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
    from hare.pipeline import drop_short_candidates

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
