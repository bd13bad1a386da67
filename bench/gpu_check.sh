#!/usr/bin/env bash
# GPU checks and benchmarks, one short script for a lent GPU host (see README "GPU checks").
#
#   OUT=bench/results/gpu bash bench/gpu_check.sh
#
# 1. tests/test_cuda.py: pinned/non-blocking delivery bit-identical to CPU delivery, GPU normalisation, the
#    batched nvJPEG decode path, no stream sync in the loader, a bf16 + channels_last train.py run and its eval.
# 2. tools/profile_loader.py on the GPU: folder / torch (CPU decode in threads, copy to the GPU) / torch:processes
#    (CPU decode in DataLoader processes) / torch:nvjpeg (GPU decode)
#    on a generated 320x240 dataset, train mode, 8 frames, 224 px.
# 3. train.py: ACTION-ResNet-50, 8 segments, 224 px, bf16: model-bound synthetic rate and the real rate fed by the
#    torch loader (clips/s, data-wait fraction), side by side in one run.
# 4. bench/gpu_model.py: model-bound step rate of TSN / TSM / ACTION R50, eager and torch.compile.
# The host has no package registry: simplejpeg travels as a wheel in .whl/ (carried), DALI does not fit the 64 MiB
# a call can carry (nvidia-dali-cuda130 2.4.0 is 199 MB plus nvimgcodec/nvcomp), so DALI is not measured here.
set -u
OUT=${OUT:-bench/results/gpu}
WORKERS=${WORKERS:-12}
CLIPS=${CLIPS:-480}
STEPS=${STEPS:-tests,profile,train,model}   # a subset, e.g. STEPS=tests,train
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" || exit 1
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision, simplejpeg, pyarrow, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'simplejpeg', simplejpeg.__version__, 'pyarrow', pyarrow.__version__, 'cpus', os.cpu_count())"
} 2>&1 | tee "$OUT/gpu_env.txt"

want() { case ",$STEPS," in *,$1,*) return 0;; *) return 1;; esac; }
GEN=/tmp/gpu-gen
if want tests; then
echo "== 1. CUDA tests"
timeout 180 python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.log"
fi

if want profile || want train; then
echo "== 2. loader profile on the GPU"
# train alone: only generate the dataset (a one-backend profile), keep its outputs out of $OUT
if want profile; then BACKENDS=folder,torch,torch:processes,torch:nvjpeg PD=$OUT; else BACKENDS=torch PD=/tmp/prof; fi
mkdir -p "$PD"
timeout 180 python3 tools/profile_loader.py --generate "$GEN" --clips "$CLIPS" --frames 24 \
  --backends "$BACKENDS" --device cuda --workers "$WORKERS" --batch-size 32 --batches 20 --warmup 3 \
  --rounds 2 --json "$PD/profile_loader_gpu.json" --plot "$PD/profile_loader_gpu.png" 2>&1 | tee "$PD/profile.log"
fi

if want train; then
echo "== 3. ACTION-R50 training rate"
timeout 160 python3 train.py train --dataset jester --data "$GEN/out" --run-dir /tmp/gpu-run --device cuda \
  --arch resnet50 --num-segments 8 --size 224 --batch-size 32 --epochs 3 --lr-steps 2 --eval-every 0 \
  --workers "$WORKERS" --ceiling-steps 15 --log-interval 5 2>&1 | tee "$OUT/train_r50.log"
cp /tmp/gpu-run/metrics.jsonl "$OUT/train_r50_metrics.jsonl" 2>/dev/null
fi

if want model; then
echo "== 4. model-bound step rate: TSN vs TSM vs ACTION, eager and compiled"
timeout 240 python3 bench/gpu_model.py --arch resnet50 --batch-size 32 --json "$OUT/gpu_model.json" 2>&1 \
  | tee "$OUT/gpu_model.log"
fi
echo "== done"
