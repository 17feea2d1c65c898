"""`python -m hare.kernels`: build Hare's CPU kernels now (once per machine) and report which are in use."""

import logging
import sys

from hare import kernels

logging.basicConfig(level=logging.WARNING, format="%(message)s")
if not kernels.enabled():
    print("Hare's CPU kernels are turned off (HARE_KERNELS=0)")
    sys.exit(0)
ready = kernels.status()
for name, ok in ready.items():
    print(f"{name}: {'ready' if ok else 'unavailable (PyTorch kernels are used instead)'}")
if all(ready.values()):
    print(f"library: {kernels._library_path}")
sys.exit(0 if all(ready.values()) else 1)
