#!/bin/sh
# The GPU checks in one run (issue 27), for a machine with one CUDA GPU and the PyTorch,
# timm, ONNX Runtime, safetensors, scipy and Pillow of its own image (no network):
#   - the process-count rules on one GPU (scoring shares it, training stops in one line),
#   - CPU vs CUDA probabilities of one film (full float32),
#   - a training batch finished on the GPU against the same batch made on the CPU,
#   - make bench-gpu's table (benchmarks/bench_gpu.py), under 5 minutes.
# Everything it prints also goes to $OUT/gpu_check.log.
#
# Run from the repository root. medview is used from the checkout (PYTHONPATH); the
# only package such an image lacks on this path is platformdirs: carry it as a wheel in
# .whl (see docs/gpu.md for the one-line download).
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 QT_QPA_PLATFORM=offscreen
export PYTHONPATH="/tmp/site:$PWD"
export MEDVIEW_MODELS_DIR=/tmp/medview-models MEDVIEW_CACHE_DIR=/tmp/medview-cache
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
{
    set -x
    nvidia-smi -L
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
    python3 - <<'EOF'
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
yy, xx = np.ogrid[:1400, :1200]
img = 90 + 60 * np.exp(-(((yy - 700) / 450) ** 2 + ((xx - 600) / 340) ** 2))
Image.fromarray((img + rng.normal(0, 12, (1400, 1200))).clip(0, 255).astype(np.uint8)
                ).save("/tmp/film.jpeg", quality=90)
EOF
    # scoring with more processes than GPUs shares the GPU
    python3 -m medview predict /tmp/film.jpeg /tmp/film.jpeg --model cxr-pneumonia \
        --device cuda --nproc 2 --csv /tmp/two.csv --score-out-of-scope; echo "rc=$?"
    cat /tmp/two.csv
    # training with more processes than GPUs stops at once, in one line (rc 2)
    mkdir -p /tmp/empty-data
    python3 -m medview train /tmp/empty-data --device cuda --nproc 2 --out /tmp/m
    echo "rc=$?"
    # one film, CPU and CUDA: the probabilities within 1e-4
    python3 -m medview predict /tmp/film.jpeg --model cxr-pneumonia --device cpu \
        --backend torch --json --score-out-of-scope > /tmp/cpu.json
    python3 -m medview predict /tmp/film.jpeg --model cxr-pneumonia --device cuda \
        --json --score-out-of-scope > /tmp/cuda.json
    python3 -c "
import json
a, b = (json.load(open(p))['predictions'][0] for p in ('/tmp/cpu.json', '/tmp/cuda.json'))
pa, pb = a['probabilities'], b['probabilities']
print('max |dp|', max(abs(pa[k] - pb[k]) for k in pa), a['device'], b['device'])"
    # a training batch finished on the GPU (copy, augmentation, normalisation there)
    # against the same batch made on a CPU thread: the same input to float rounding
    python3 -c "
import numpy as np, torch
from medview.training.engine import _to_input
from medview.training.pipeline import draw_augmentation, make_step_input
from medview.training.types import TrainConfig
films = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 224, 224), dtype=np.uint8))
aug = draw_augmentation(64, TrainConfig(hflip=True), torch.Generator().manual_seed(0))
f = lambda b: _to_input(b, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
cpu = make_step_input(torch.arange(64), films, aug, 'cpu', f).model_input('cpu', f)
gpu = make_step_input(torch.arange(64), films, aug, 'cuda', f)
print('pinned', gpu.films.is_pinned(), 'max |dx| GPU vs CPU batch',
      float((gpu.model_input('cuda', f).cpu() - cpu).abs().max()))"
    timeout 480 python3 benchmarks/bench_gpu.py
    echo "bench rc=$?"
} 2>&1 | tee "$OUT/gpu_check.log"
