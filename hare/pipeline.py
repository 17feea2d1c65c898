"""TextToSpeech: conditioning -> AR candidates -> rerank -> GPT latents -> diffusion -> vocoder."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

CALM_CODE = 83  # the speech code the released VQ-VAE emits for silence
TAIL_CODES = (45, 45, 248)  # what it emits for a zero-padded tail; omitting these gives a harsh ending
MAX_CALM_RUN = 8  # calm codes kept after speech ends ("breathing room") before the latents are cut


def fix_candidates(codes: torch.Tensor, stop_token: int = 8193) -> torch.Tensor:
    """Tortoise's fix-up of sampled candidates (returns a new tensor).

    codes: (batch, length). In every row that contains `stop_token`, the first stop and everything after it
    become the calm code and the last three positions become the tail codes. Rows without a stop token (the
    speech ran to the length cap) are left unchanged.
    """
    codes = codes.clone()
    seen_stop = (codes == stop_token).cumsum(dim=1) > 0  # (batch, length)
    has_stop = seen_stop[:, -1]
    if not bool(has_stop.all()):
        log.warning("%d candidate(s) never emitted a stop token: the text may be too long to speak in one "
                    "chunk", int((~has_stop).sum()))
    codes[seen_stop] = CALM_CODE
    if codes.shape[1] >= len(TAIL_CODES):
        tail = torch.tensor(TAIL_CODES, dtype=codes.dtype, device=codes.device)
        codes[has_stop, -len(TAIL_CODES):] = tail
    return codes


def calm_cut(codes: torch.Tensor, max_calm_run: int = MAX_CALM_RUN) -> int:
    """Number of leading codes to keep: cut at the first run of more than `max_calm_run` calm codes.

    codes: (length,). Returns the index of the (max_calm_run+1)-th consecutive calm code, or the full length.
    """
    calm = (codes == CALM_CODE).to(torch.int64)
    # run length ending at each position: position minus the index of the last non-calm code before it
    idx = torch.arange(codes.shape[0], device=codes.device)
    last_break = torch.where(calm.bool(), torch.full_like(idx, -1), idx).cummax(dim=0).values
    run = idx - last_break
    over = (run > max_calm_run).nonzero()
    return int(over[0, 0]) if over.numel() else int(codes.shape[0])


def diffusion_frames(num_codes: int) -> int:
    """24 kHz mel frames the diffusion decoder produces for `num_codes` speech codes."""
    return num_codes * 4 * 24000 // 22050
