"""The training objectives, one module each, and `make_objective`, which builds one by name. Each one knows how
to build its network(s) from a config, which cached features it needs, how to turn an utterance into a training
example (crops, conditioning clips), how to collate examples into a batch, and how to turn a batch into a dict of
losses.

    objective = make_objective("gpt", model={...GPTConfig fields...}, options={...})
    models = objective.build_models()                     # {"model": GPT}
    batch = objective.collate([objective.example(corpus, i, rng) for i in ...])
    losses = objective.loss("main", models, batch, step=0, scratch={})   # {"loss": total, ...}

- `vqvae`: mel reconstruction (MSE) + commitment; reports codebook perplexity and the fraction of codes used.
- `gpt`: text and speech-code cross-entropy (weights 0.01 and 1, as the community Tortoise recipe), the voice
  latent computed from clips of *other* utterances of the same speaker.
  Optional guided attention (`guided_weight`): a diagonal prior on some heads' attention from speech to text.
- `clvp`: symmetric contrastive loss over the batch (text <-> speech codes). Optional: codes laid out as the
  pipeline's reranker receives them (`calm_code`, `tail_codes`) and hard negatives (`hard_negatives`: damaged
  copies of each example's own codes that its text must score below the true ones) and a CTC letter head on
  the speech encoder (`ctc_weight`, a Hare extension: the reranker's check that a candidate says every word).
- `diffusion`: epsilon MSE + the learned-variance VLB term, conditioning dropped at random
  (`unconditioned_percentage`) so conditioning-free guidance works; conditioned on VQ-VAE codes, or (as
  Tortoise) on the latents a frozen GPT computes from the text and those codes (`options.gpt`).
  Optional: the auxiliary mel loss (`aux_mel_weight`, the shallow-diffusion prior) and training the denoiser
  on the start of the schedule only (`max_t_fraction`, for models sampled with shallow diffusion).
- `speller` (a Hare network): CTC over the letters of each utterance's text given its codes, the reranker's
  check that a candidate says every word (`Settings.ctc_weight`). Optional: codes laid out as the reranker
  receives them and random code noise.
- `listener` (a Hare network): CTC over the letters of each utterance's text given its HiFi-GAN log mel (the
  recording's, or the diffusion decoder prior's from its true codes, `prior_dir`), with SpecAugment-style
  masks: the reranker's ear on the decoded mels of the speller's best candidates (`Settings.listen_candidates`).
- `vocoder`: UniVNet: multi-resolution STFT loss + least-squares GAN with period and resolution
  discriminators, two phases per step (generator, then discriminator). Fine-tuning from the official
  vocoder is supported (`train.init`).
- `hifi_decoder`: Tortoise v3's HiFi-GAN latent decoder on a frozen GPT's latents: multi-resolution STFT +
  least-squares GAN + feature matching, with the vocoder's discriminators.

Model hyperparameters are the network's dataclass in `hare.models.configs`; objective knobs (loss weights,
crop lengths) are the `*Options` dataclass in the objective's module (`vqvae`, `gpt`, `clvp`, `diffusion`,
`vocoder`, `hifi_decoder`, `speller`, `listener`). `base` holds the `Objective` class and its `Phase`s; `candidates` the
candidate layout the reranker's networks train on (shared with `hare.rerank`).
"""

from __future__ import annotations

from typing import Any, Mapping

from hare.train import TrainingError
from hare.train.objectives.base import Objective, Phase
from hare.train.objectives.clvp import CLVPObjective
from hare.train.objectives.diffusion import DiffusionObjective
from hare.train.objectives.gpt import GPTObjective
from hare.train.objectives.hifi_decoder import HifiDecoderObjective
from hare.train.objectives.listener import ListenerObjective
from hare.train.objectives.speller import SpellerObjective
from hare.train.objectives.vocoder import VocoderObjective
from hare.train.objectives.vqvae import VQVAEObjective

__all__ = ["OBJECTIVES", "Objective", "Phase", "make_objective"]


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (VQVAEObjective, GPTObjective, CLVPObjective, DiffusionObjective, VocoderObjective,
                                HifiDecoderObjective, SpellerObjective, ListenerObjective)
}


def make_objective(name: str, model: Mapping[str, Any] | None = None,
                   options: Mapping[str, Any] | None = None) -> Objective:
    if name not in OBJECTIVES:
        raise TrainingError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name].from_dicts(model, options)
