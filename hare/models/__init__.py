"""The Tortoise networks, in Hare's own module names. Official checkpoints are mapped in `hare.convert`."""
