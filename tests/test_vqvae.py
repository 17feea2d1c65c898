"""VQ-VAE: 4x compression, EMA codebook moves toward the data, a tiny model learns to reconstruct."""

import torch

from hare import checkpoints
from hare.models.vqvae import VQVAE, EMAQuantizer

KW = dict(num_tokens=64, hidden_dim=32, codebook_dim=16, num_resnet_blocks=1, num_layers=2)


def _model():
    torch.manual_seed(0)
    return checkpoints.build("vqvae", checkpoints.config_for("vqvae", KW))


def test_shapes_and_compression():
    m = _model().eval()
    mel = torch.randn(2, 80, 42)  # trimmed to 40 frames
    codes = m.encode(mel)
    assert codes.shape == (2, 10) and m.compression == 4
    assert m.decode(codes).shape == (2, 80, 40)
    recon, commit, codes2 = m(mel)
    assert recon.shape == (2, 80, 40) and torch.equal(codes, codes2) and commit.item() >= 0


def test_ema_moves_codebook_towards_data():
    torch.manual_seed(0)
    q = EMAQuantizer(4, 8, decay=0.5)
    data = torch.full((1, 4, 50), 3.0)
    before = (q.embed - 3.0).norm(dim=1).min().item()
    q.train()
    for _ in range(10):
        q(data)
    assert (q.embed - 3.0).norm(dim=1).min().item() < before * 0.1


def test_reconstruction_loss_falls():
    m = _model().train()
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(4, 80, 32, generator=g).cumsum(-1) * 0.1  # smooth, learnable structure
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        recon, commit, _ = m(mel)
        loss = torch.nn.functional.mse_loss(recon, mel) + 0.25 * commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    usage = VQVAE.codebook_usage(m.encode(mel), 64)
    assert 0 < usage["used_fraction"] <= 1 and usage["perplexity"] >= 1


def test_safetensors_round_trip(tmp_path):
    m = _model().eval()
    path = checkpoints.save(m, "vqvae", m.config, tmp_path / "vq")
    loaded, kind, config = checkpoints.load(path)
    mel = torch.randn(1, 80, 16)
    assert kind == "vqvae" and torch.equal(loaded.encode(mel), m.encode(mel))
