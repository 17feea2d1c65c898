"""The random latent generator against a hand-written formula of the reference's layers."""

import math

import torch
import torch.nn.functional as F

from hare import checkpoints


def test_rlg_matches_formula():
    dim = 8
    g = torch.Generator().manual_seed(3)
    sd = {}
    for i in range(6):
        sd[f"layers.{i}.weight"] = torch.randn(dim, dim, generator=g)
        sd[f"layers.{i}.bias"] = torch.randn(dim, generator=g)
    model = checkpoints.convert("rlg_auto", sd, {"channels": dim})
    x = torch.randn(3, dim, generator=g)
    y = x
    for i in range(5):  # equalized lr: weight * 0.1/sqrt(dim), bias * 0.1, leaky relu * sqrt 2
        y = F.leaky_relu(y @ (sd[f"layers.{i}.weight"] * 0.1 / math.sqrt(dim)).T + sd[f"layers.{i}.bias"] * 0.1, 0.2)
        y = y * math.sqrt(2)
    y = y @ sd["layers.5.weight"].T + sd["layers.5.bias"]
    assert torch.allclose(model(x), y, atol=1e-5)


def test_generate_is_seeded():
    model = checkpoints.build("rlg_diffuser", checkpoints.config_for("rlg_diffuser", {"channels": 16}))
    a = model.generate(2, generator=torch.Generator().manual_seed(1))
    b = model.generate(2, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 16) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
