"""The candidate fix-up, the calm-code cut and the diffusion output length (hand-computed expectations)."""

import torch

from hare.pipeline import CALM_CODE, calm_cut, diffusion_frames, fix_candidates

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
