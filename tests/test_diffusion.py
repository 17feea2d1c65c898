"""The diffusion decoder: batched guidance equals separate forwards; shapes; code and latent conditioning."""

import pytest
import torch

from hare import checkpoints

KW = dict(model_channels=32, num_layers=1, in_latent_channels=16, num_heads=2, unconditioned_percentage=0.5)


def _model():
    torch.manual_seed(0)
    return checkpoints.build("diffusion_decoder", checkpoints.config_for("diffusion_decoder", KW)).eval()


def test_guided_equals_two_forwards():
    m = _model()
    cond = m.conditioning_latent(torch.randn(1, 2, 100, 40))
    assert cond.shape == (1, 64)
    aligned = m.aligned_conditioning(torch.randn(1, 7, 16), cond, 30)
    assert aligned.shape == (1, 32, 30)
    x, t = torch.randn(1, 100, 30), torch.tensor([123])
    c, u = m.guided(x, t, aligned)
    assert torch.allclose(c, m(x, t, aligned), atol=1e-5)
    assert torch.allclose(u, m(x, t, m.unconditioned_conditioning(1, 30)), atol=1e-5)
    assert c.shape == (1, 200, 30)


def test_codes_and_dropout():
    m = _model()
    cond = torch.randn(3, 64)
    a = m.aligned_conditioning(torch.randint(0, 8193, (3, 5)), cond, 20, drop_mask=torch.tensor([True, False, True]))
    assert torch.allclose(a[0], m.unconditioned[0].expand(-1, 20))
    assert not torch.allclose(a[1], m.unconditioned[0].expand(-1, 20))
    m.train()
    assert m.random_drop_mask(1000, "cpu").float().mean().item() == pytest.approx(0.5, abs=0.08)


def test_voice_latent_is_the_mean_over_clips():
    m = _model()
    mels = torch.randn(1, 3, 100, 24)
    each = torch.stack([m.conditioning_latent(mels[:, i]) for i in range(3)])  # (clips, 1, 64)
    assert torch.allclose(m.conditioning_latent(mels), each.mean(0), atol=1e-5)


def test_predict_mel_zeroes_dropped_rows():
    m = _model()
    aligned = torch.randn(2, 32, 9)
    mel = m.predict_mel(aligned, drop_mask=torch.tensor([True, False]))
    assert mel.shape == (2, 100, 9) and mel[0].abs().sum() == 0
    assert torch.allclose(mel[1], m.mel_head(aligned)[1])


def test_layer_drop_skips_inner_trunk_blocks_only_in_training():
    torch.manual_seed(0)
    m = checkpoints.build("diffusion_decoder", checkpoints.config_for("diffusion_decoder", {**KW, "layer_drop": 1.0}))
    x, t, aligned = torch.randn(1, 100, 12), torch.tensor([7]), torch.randn(1, 32, 12)
    m.train()
    m(x, t, aligned).square().mean().backward()
    trunk = [*m.layers, *m.res_layers]
    def grads():
        return [sum(p.grad.abs().sum().item() for p in b.parameters() if p.grad is not None) for b in trunk]

    g = grads()
    assert g[0] > 0 and g[-1] > 0 and all(v == 0 for v in g[1:-1])
    m.eval()
    m.zero_grad()
    m(x, t, aligned).square().mean().backward()
    assert all(v > 0 for v in grads())


def test_sampling_loop_batches_guidance_like_two_forwards(one_thread):
    from hare import schedulers

    m = _model()
    cond = m.conditioning_latent(torch.randn(1, 1, 100, 20))
    aligned = m.aligned_conditioning(torch.randn(1, 5, 16), cond, 16)
    noise = torch.randn(1, 100, 16, generator=torch.Generator().manual_seed(0))

    def two_forwards(x, t):
        return m(x, t, aligned), m(x, t, m.unconditioned_conditioning(1, 16))

    for name in schedulers.SAMPLERS:
        a = schedulers.sample(m, aligned, (1, 100, 16), sampler=name, steps=4, cond_free_k=2.0, noise=noise,
                              generator=torch.Generator().manual_seed(1))
        b = schedulers.denoise_loop(two_forwards, (1, 100, 16), name, 4, cond_free_k=2.0, noise=noise,
                                    generator=torch.Generator().manual_seed(1))
        assert a.shape == (1, 100, 16) and torch.isfinite(a).all()
        # DPM-Solver++ extrapolates the (random-weight) x0 predictions, which magnifies rounding differences
        assert (a - b).abs().max() < (1e-4 if name != "dpm++2m" else 1e-2), name
