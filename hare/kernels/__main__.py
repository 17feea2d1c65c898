"""`python -m hare.kernels`: build Hare's CPU kernels now (once per machine) and report which are in use."""

import logging
import sys

from hare import kernels

logging.basicConfig(level=logging.WARNING, format="%(message)s")
if not kernels.enabled():
    print("Hare's CPU kernels are turned off (HARE_KERNELS=0)")
    sys.exit(0)
info = kernels.targets()
if info["kernels"] is None:
    print("compiled kernels: no C++ compiler (set CXX or install g++): PyTorch's kernels are used")
else:
    print(f"compiled kernels: built with -march=native by {info['compiler']} for "
          f"{', '.join(info['kernels']) or 'the baseline ISA'} (what this CPU offers)")
print(f"PyTorch CPU kernels, oneDNN-packed and dynamic int8 linears: {info['pytorch']} (PyTorch's run-time dispatch)")
print("bf16 matrix hardware (AMX / AVX-512-bf16): " + ("yes: dtype bf16 is a speed option" if info["bf16_matmul"]
      else "no: bf16 would be emulated, fp32 or int8 is faster here"))
ready = kernels.status()
for name, ok in ready.items():
    detail = ""
    if ok and name in ("panel_linear", "panel_int8"):
        variants = info[name] or (kernels.panel_linear_variants() if name == "panel_linear"
                                  else kernels.panel_int8_variants())
        detail = (f" ({variants[0]}: the best variant this CPU reports support for"
                  + (f"; it also runs {', '.join(variants[1:])}" if len(variants) > 1 else "") + ")")
    if ok and name == "conv_rows":
        detail = (" (AMX bf16 tiles: the bf16 vocoder's convolutions)" if kernels.conv_rows() is not None else
                  " (built, but this CPU has no AMX bf16 tiles: the bf16 vocoder gathers its taps, row_taps)")
    print(f"{name}: {'ready' + detail if ok else 'unavailable (PyTorch kernels are used instead)'}")
if all(ready.values()):
    print(f"library: {kernels._library_path}")
sys.exit(0 if all(ready.values()) else 1)
