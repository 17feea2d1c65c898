"""VQ-VAE: 4x compression, EMA codebook moves toward the data, dead-code restarts, a tiny model learns to
reconstruct, Hare and DLAS DiscreteVAE checkpoints load."""

import pytest
import torch

from hare import checkpoints
from hare.models.configs import VQVAEConfig
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
    # the encoding of the first 40 frames does not depend on the dropped tail
    assert torch.equal(m.encode(mel[..., :40]), codes)


def test_three_layers_compress_eight_times_and_no_resblocks_works():
    cfg = VQVAEConfig(num_codes=8, hidden=8, codebook_dim=4, resblocks=0, layers=3)
    m = checkpoints.build("vqvae", cfg).eval()
    codes = m.encode(torch.randn(1, 80, 33))
    assert m.compression == 8 and codes.shape == (1, 4) and m.decode(codes).shape == (1, 80, 32)


def test_quantizer_picks_nearest_code_and_its_loss():
    q = EMAQuantizer(2, 3).eval()
    q.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]]))
    z = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 4.0, -1.0]]])  # (1, dim 2, 3 frames): nearest 1, 2, 0
    out, commit, ids = q(z)
    assert ids.tolist() == [[1, 2, 0]]
    assert torch.equal(out, q.embed[ids[0]].t()[None])
    want = ((q.embed[ids[0]] - z[0].t()) ** 2).mean()
    assert torch.allclose(commit, want)
    # the argmin runs in fp32 even under autocast
    flat = torch.randn(50, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q.codes(flat), q.codes(flat.float()))


def test_ema_moves_codebook_towards_data():
    torch.manual_seed(0)
    q = EMAQuantizer(4, 8, decay=0.5, restart_after=0)
    q.initialized.fill_(1)  # keep the random codebook: test the moving average alone
    data = torch.full((1, 4, 50), 3.0)
    before = (q.embed - 3.0).norm(dim=1).min().item()
    unused = q.embed[(q.embed - 3.0).norm(dim=1).argsort()[1:]].clone()
    q.train()
    for _ in range(10):
        q(data)
    assert (q.embed - 3.0).norm(dim=1).min().item() < before * 0.1
    # the codes never assigned stay where they were (a proper running mean, no blow-up)
    assert torch.allclose(q.embed[(q.embed - 3.0).norm(dim=1).argsort()[1:]].sort(0).values, unused.sort(0).values,
                          rtol=0.05, atol=1e-3)  # only the Laplace smoothing (eps) nudges them


def test_dead_codes_restart_from_data():
    torch.manual_seed(0)
    q = EMAQuantizer(2, 4, restart_after=3).train()
    q.embed.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
    q.embed_sum.copy_(q.embed)
    q.initialized.fill_(1)
    data = torch.randn(1, 2, 64) * 0.1
    for _ in range(3):
        q(data)
    # every code that was never picked now sits on one of the data vectors
    assert q.embed.abs().max() < 1.0 and q.unused_steps.max() == 0


def test_first_training_step_puts_the_codebook_on_the_data():
    torch.manual_seed(0)
    q = EMAQuantizer(3, 8, restart_after=0)
    data = torch.randn(2, 3, 10) * 0.01 + 7.0
    q.eval()(data)
    assert q.initialized.item() == 0 and q.embed.abs().max() < 6  # eval: untouched
    q.train()(data)
    assert q.initialized.item() == 1 and ((q.embed - 7.0).abs() < 0.1).all()


def test_reconstruction_loss_falls():
    m = _model().train()
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(4, 80, 32, generator=g).cumsum(-1) * 0.1  # smooth, learnable structure
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        recon, commit, _ = m(mel)
        loss = torch.nn.functional.mse_loss(recon, mel) + 0.25 * commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.55 * losses[0]
    usage = VQVAE.codebook_usage(m.encode(mel), 64)
    assert 0 < usage["used_fraction"] <= 1 and usage["perplexity"] >= 1


def test_codebook_usage_statistic():
    usage = VQVAE.codebook_usage(torch.tensor([[0, 1, 2, 3]]), 8)
    assert usage["used_fraction"] == 0.5 and abs(usage["perplexity"] - 4.0) < 1e-5
    assert abs(VQVAE.codebook_usage(torch.zeros(1, 9, dtype=torch.long), 8)["perplexity"] - 1.0) < 1e-6


def test_safetensors_round_trip(tmp_path):
    m = _model().eval()
    path = checkpoints.save(m, "vqvae", m.config, tmp_path / "vq")
    loaded, kind, config = checkpoints.load(path)
    mel = torch.randn(1, 80, 16)
    assert kind == "vqvae" and torch.equal(loaded.encode(mel), m.encode(mel))


def _dlas_state_dict(n_mels, hidden, codebook_dim, codes, resblocks, layers):
    """The key set of DLAS's DiscreteVAE (positional_dims=1, kernel 3, no transposed convs), random values."""
    g = torch.Generator().manual_seed(0)
    widths = [hidden * 2**i for i in range(layers)]
    inner = widths[-1]
    shapes = {}
    for i, (cin, cout) in enumerate(zip([n_mels] + widths[:-1], widths)):
        shapes[f"encoder.{i}.0"] = (cout, cin, 3)
    for j in range(resblocks):
        for prefix in (f"encoder.{layers + j}", f"decoder.{1 + j}"):
            shapes[f"{prefix}.net.0"] = (inner, inner, 3)
            shapes[f"{prefix}.net.2"] = (inner, inner, 3)
            shapes[f"{prefix}.net.4"] = (inner, inner, 1)
    shapes[f"encoder.{layers + resblocks}"] = (codebook_dim, inner, 1)
    shapes["decoder.0"] = (inner, codebook_dim, 1)
    for i, (cin, cout) in enumerate(zip([inner] + widths[::-1][:-1], widths[::-1])):
        shapes[f"decoder.{1 + resblocks + i}.0.conv"] = (cout, cin, 3)
    shapes[f"decoder.{1 + resblocks + layers}"] = (n_mels, widths[0], 1)
    sd = {}
    for name, shape in shapes.items():
        sd[name + ".weight"] = torch.randn(shape, generator=g) * 0.1
        sd[name + ".bias"] = torch.randn(shape[0], generator=g) * 0.1
    sd["codebook.embed"] = torch.randn(codebook_dim, codes, generator=g)
    sd["codebook.cluster_size"] = torch.rand(codes, generator=g)
    sd["codebook.embed_avg"] = torch.randn(codebook_dim, codes, generator=g)
    return sd


def test_dlas_discrete_vae_checkpoint_loads():
    kwargs = dict(positional_dims=1, channels=80, hidden_dim=16, num_resnet_blocks=2, codebook_dim=8,
                  num_tokens=32, num_layers=2, record_codes=True, kernel_size=3, use_transposed_convs=False)
    sd = _dlas_state_dict(80, 16, 8, 32, 2, 2)
    model = checkpoints.convert("vqvae", sd, kwargs)
    assert torch.equal(model.quantizer.embed, sd["codebook.embed"].t())
    assert torch.equal(model.quantizer.embed_sum, sd["codebook.embed_avg"].t())
    assert torch.equal(model.downsample[1].weight, sd["encoder.1.0.weight"])
    assert torch.equal(model.encoder_blocks[1].proj.weight, sd["encoder.3.net.4.weight"])
    assert torch.equal(model.upsample[0].weight, sd["decoder.3.0.conv.weight"])
    assert torch.equal(model.out.weight, sd["decoder.5.weight"])
    # a code decodes through the DLAS decoder's order: 1x1, res blocks, (nearest x2, conv, relu) x2, 1x1
    assert model.decode(torch.tensor([[3, 5]])).shape == (1, 80, 8)


def test_official_tortoise_dvae_size_loads():
    kwargs = dict(positional_dims=1, channels=80, hidden_dim=512, num_resnet_blocks=3, codebook_dim=512,
                  num_tokens=8192, num_layers=2, kernel_size=3, use_transposed_convs=False)
    assert checkpoints.config_for("vqvae", kwargs) == VQVAEConfig()  # Hare's defaults are Tortoise's DVAE
    with torch.device("meta"):  # no memory, no time: every key mapped, every shape right (strict load)
        model = checkpoints.convert("vqvae", _dlas_state_dict_meta(), kwargs)
    assert sum(p.numel() for p in model.parameters()) > 30_000_000


def _dlas_state_dict_meta():
    with torch.device("meta"):
        widths, inner, K, D = [512, 1024], 1024, 8192, 512
        sd = {"encoder.0.0.weight": torch.empty(512, 80, 3), "encoder.1.0.weight": torch.empty(1024, 512, 3),
              "encoder.5.weight": torch.empty(D, inner, 1), "decoder.0.weight": torch.empty(inner, D, 1),
              "decoder.4.0.conv.weight": torch.empty(1024, 1024, 3), "decoder.5.0.conv.weight": torch.empty(512, 1024, 3),
              "decoder.6.weight": torch.empty(80, 512, 1),
              "codebook.embed": torch.empty(D, K), "codebook.embed_avg": torch.empty(D, K),
              "codebook.cluster_size": torch.empty(K)}
        for j in range(3):
            for p in (f"encoder.{2 + j}", f"decoder.{1 + j}"):
                sd[f"{p}.net.0.weight"] = torch.empty(inner, inner, 3)
                sd[f"{p}.net.2.weight"] = torch.empty(inner, inner, 3)
                sd[f"{p}.net.4.weight"] = torch.empty(inner, inner, 1)
        for k in list(sd):
            if k.endswith(".weight"):
                sd[k[: -len("weight")] + "bias"] = torch.empty(sd[k].shape[0])
        return sd


def test_config_from_dlas_arguments():
    assert checkpoints.config_for("vqvae", {}) == VQVAEConfig()
    cfg = checkpoints.config_for("vqvae", dict(num_tokens=1024, channels=80, normalization=None, stride=2))
    assert cfg.num_codes == 1024 and cfg.n_mels == 80
    with pytest.raises(TypeError, match="use_transposed_convs"):
        checkpoints.config_for("vqvae", dict(use_transposed_convs=True))
    with pytest.raises(TypeError, match="unknown"):
        checkpoints.config_for("vqvae", dict(image_size=256))
