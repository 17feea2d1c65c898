"""The one place where official Tortoise checkpoint keys are mapped onto Hare's module names.

One module per checkpoint kind, each exposing:

- `config_from_reference(kwargs: dict | None) -> Config`: the reference constructor arguments (as in a
  fixture's `meta.json`; `None` = the official sizes) turned into Hare's hyperparameter dataclass;
- `CONFIG_CLASS`: that dataclass (used to read Hare's own JSON configs back);
- `build(config) -> nn.Module`: a fresh Hare module;
- `map_state_dict(state_dict, config) -> dict[str, Tensor]`: official keys renamed (and, where the layout
  differs, tensors reshaped) to Hare's names. Keys the rules do not recognise are passed through unchanged,
  so that the strict check in `hare.checkpoints.convert` reports them by name.

`hare.checkpoints.convert(kind, ...)` is the public entry point.
"""

KIND_MODULES = {
    "autoregressive": "hare.convert.gpt",
    "diffusion_decoder": "hare.convert.diffusion",
    "clvp2": "hare.convert.clvp",
    "cvvp": "hare.convert.cvvp",
    "vocoder": "hare.convert.vocoder",
    "rlg_auto": "hare.convert.rlg",
    "rlg_diffuser": "hare.convert.rlg",
    "vqvae": "hare.convert.vqvae",  # no official Tortoise file: Hare checkpoints or the DLAS dvae.pth
    "hifigan": "hare.convert.hifigan",  # hare-mini's vocoder (jik876 HiFi-GAN V1 generator files)
    "speller": "hare.convert.speller",  # Hare's letter recogniser for the reranker (no official file)
    "listener": "hare.convert.listener",  # Hare's mel letter recogniser for the reranker (no official file)
    "hifi_decoder": "hare.convert.hifi_decoder",  # tortoise v3 api_fast: GPT latents -> 24 kHz (hifidecoder.pth)
    "classifier": "hare.convert.classifier",  # tortoise v3 "is this from Tortoise?" (classifier.pth)
}
