"""CLVP/CVVP: one text row broadcast equals repeated rows; masks ignore padding; losses behave."""

import torch

from hare import checkpoints

CLVP_KW = dict(dim_text=32, dim_speech=32, dim_latent=16, text_enc_depth=1, speech_enc_depth=1, text_heads=2,
               speech_heads=2, use_xformers=True)


def _clvp():
    torch.manual_seed(0)
    return checkpoints.build("clvp2", checkpoints.config_for("clvp2", CLVP_KW)).eval()


def test_broadcast_text_equals_repeated():
    m = _clvp()
    text = torch.randint(0, 256, (1, 9))
    codes = torch.randint(0, 8192, (4, 15))
    assert torch.allclose(m.similarity(text, codes), m.similarity(text.expand(4, -1), codes), atol=1e-6)


def test_mask_ignores_padding():
    m = _clvp()
    codes = torch.randint(0, 8192, (1, 10))
    padded = torch.cat([codes, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.tensor([[True] * 10 + [False] * 5])
    assert torch.allclose(m.speech_latents(codes), m.speech_latents(padded, mask), atol=1e-5)


def test_contrastive_loss_prefers_matching_pairs():
    m = _clvp().train()
    text = torch.randint(0, 256, (4, 8))
    codes = torch.randint(0, 8192, (4, 12))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss = m(text, codes)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5


def test_cvvp_similarity_shape():
    torch.manual_seed(0)
    kw = dict(model_dim=32, transformer_heads=2, conditioning_enc_depth=1, speech_enc_depth=1, mel_codes=8192)
    m = checkpoints.build("cvvp", checkpoints.config_for("cvvp", kw)).eval()
    sims = m.similarity(torch.randn(3, 80, 40), torch.randint(0, 8192, (3, 20)))
    assert sims.shape == (3,) and torch.isfinite(sims).all()


def test_gated_feed_forward_inference_path_matches_autograd_path_and_keeps_dropout():
    from hare.models.clvp import GatedFeedForward

    torch.manual_seed(0)
    ff = GatedFeedForward(16, 2, dropout=0.5).eval()
    x = torch.randn(3, 5, 16)
    expected = ff(x)  # autograd path (parameters require grad)
    with torch.no_grad():
        assert torch.allclose(ff(x), expected, atol=1e-6)  # in place
        ff.train()  # training mode without autograd still drops
        assert not torch.allclose(ff(x), expected, atol=1e-3)
