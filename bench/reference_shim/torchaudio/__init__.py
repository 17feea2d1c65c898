"""A stand-in for torchaudio in the reference benchmark venv only (torchaudio has no build for torch 2.13).

It provides exactly what tortoise-tts 3.0.0's inference path calls, with Hare's implementations of the
same formulas (checked against the reference's outputs by tests/test_fixtures.py): the windowed-sinc
`functional.resample` and the AR `transforms.MelSpectrogram` (80 HTK bands, Slaney norm, power 2).
"""

import pathlib
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[3]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from . import functional, transforms  # noqa: E402,F401
