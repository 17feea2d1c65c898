#!/usr/bin/env bash
# Install the reference implementation (tortoise-tts==3.0.0, pinned deps) in its own venv, on the same
# torch as Hare (the local CPU wheel 2.13.0), for bench/pipeline.py's side-by-side run.
# torchaudio has no build for torch 2.13: bench/reference_shim/torchaudio provides the two functions the
# reference's inference path calls (functional.resample and transforms.MelSpectrogram), written with torch.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-ref
test -x $VENV/bin/python || python3 -m venv $VENV
$VENV/bin/pip install -q -c ../constraints.txt torch==2.13.0
$VENV/bin/pip install -q -c ../constraints.txt "tortoise-tts==3.0.0" "transformers==4.31.0" "tokenizers==0.13.3" \
    rotary_embedding_torch einops unidecode inflect progressbar scipy librosa tqdm
site=$($VENV/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$(pwd)/reference_shim" > "$site/hare_bench_torchaudio_shim.pth"
$VENV/bin/python -c "import tortoise.api; print('reference ready')"
