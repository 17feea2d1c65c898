from __future__ import annotations

import torch

from hare import schedulers

from ._util import load_converted

MODELS = ("DiffusionTts", "SpacedDiffusion")


def _run_network(case_dir, meta, inputs):
    model = load_converted(case_dir, meta, "diffusion_decoder")
    x, t = inputs["x"], inputs["t"].long()
    frames = int(meta.get("expected_seq_len", x.shape[-1]))
    cond = model.conditioning_latent(inputs["cond_mels"])
    aligned = model.aligned_conditioning(inputs["latents"], cond, frames)
    eps_cond, eps_free = model.guided(x, t, aligned)
    from_codes = model(x, t, model.aligned_conditioning(inputs["codes"].long(), cond, x.shape[-1]))
    return {
        "cond_latent": cond,
        "aligned_embeddings": aligned,
        "eps": model(x, t, aligned),
        "eps_conditioning_free": eps_free,
        "eps_from_codes": from_codes,
    }


def _run_sampler(case_dir, meta, inputs):
    k = meta["kwargs"]
    out = {}
    for n in (30, 80, 200):
        ddpm = schedulers.DDPM(trained_steps=k.get("trained_steps", 4000))
        ddpm.set_timesteps(n)
        out[f"timestep_map_{n}"] = ddpm.timesteps.flip(0)
        out[f"betas_{n}"] = ddpm.betas
    ddpm = schedulers.DDPM(trained_steps=k.get("trained_steps", 4000))
    ddpm.set_timesteps(30)
    for index in (0, 11, 29):
        guided = schedulers.guide(inputs["model_out_cond"], inputs["model_out_uncond"],
                                  schedulers.ramped_k(k["conditioning_free_k"], index, 30))
        step = ddpm.p_mean_variance(guided, inputs["x_t"], index)
        for name in ("mean", "variance", "log_variance", "pred_xstart"):
            out[f"step{index}_{name}"] = step[name]
    return out


def run(case_dir, meta, inputs):
    with torch.no_grad():
        if meta["model"] == "DiffusionTts":
            return _run_network(case_dir, meta, inputs)
        return _run_sampler(case_dir, meta, inputs)
