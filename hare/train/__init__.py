"""Training: data manifests and caching (`data`), a synthetic corpus builder (`synth`, CLI `hare data synth`),
one training loop (`loop`, CLI `hare train CONFIG.yaml`) with its configuration (`config`), checkpoint format
(`checkpoint`), process group (`distributed`), optimiser and EMA (`optim`) and random state (`rng`), the
per-network objectives (`objectives/`, one module each) and the vocoder's discriminators (`discriminators`).

Example configurations live in `hare/train/configs/` (`<network>-tiny.yaml` runs on a CPU in minutes,
`<network>-paper.yaml` uses the official sizes).
"""

from hare.errors import HareError


class TrainingError(HareError):
    """A training run cannot start or continue (bad config, no usable data, unreadable checkpoint)."""


class TrainingDiverged(TrainingError):
    """The loss or the gradients became NaN/inf; the run stopped and kept its last good checkpoint."""
