"""Training: data manifests and caching (`data`), a synthetic corpus builder (`synth`), one training loop
(`loop`, CLI `hare train CONFIG.yaml`) and the per-network objectives (`objectives`).

Example configurations live in `hare/train/configs/` (`<network>-tiny.yaml` runs on a CPU in minutes,
`<network>-paper.yaml` uses the official sizes).
"""

from hare.errors import HareError


class TrainingError(HareError):
    """A training run cannot start or continue (bad config, no usable data, unreadable checkpoint)."""


class TrainingDiverged(TrainingError):
    """The loss or the gradients became NaN/inf; the run stopped and kept its last good checkpoint."""
