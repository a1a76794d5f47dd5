#!/usr/bin/env bash
# GPU check for gpusched's workloads: one real DeepSpeed training step (torchrun, NCCL, ZeRO 2, bf16)
# and the inference server's weights-load time from a cold and a warm page cache (about 3 GB of
# random bf16 safetensors generated at run time, loaded onto the GPU). Prints a summary and writes
# $OUT/gpu_check.json (OUT defaults to ./gpu_check_out).
#
# The GPU machine has python3 (3.12) with torch, safetensors, huggingface_hub, prometheus-client,
# httpx, anyio and DeepSpeed's other needs (einops, msgpack, ninja, numpy, packaging, psutil,
# py-cpuinfo, tqdm), but no DeepSpeed, hjson, pydantic or FastAPI, and no network. They travel as
# wheels in .whl/ (git-ignored, about 5 MB); build it in the repo root before the run:
#
#   rm -rf .whl
#   DS_BUILD_OPS=0 .venv/bin/pip wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#       typing-inspection==0.4.5 typing-extensions==4.16.0 fastapi==0.165.0 starlette==1.10.0 \
#       opentelemetry-api==1.45.2
#
# (deepspeed is an sdist on PyPI; DS_BUILD_OPS=0 builds a pure-Python wheel whose kernels are never
# needed here: the trainer uses torch's AdamW and gloo/NCCL collectives. FastAPI, starlette and
# opentelemetry-api are only for the in-process HTTP check; without them that part reports itself
# unavailable and the rest still runs.)
#
# Run from the repo root:
#   bash workloads/tools/gpu_check.sh                                   # on the GPU machine
#   PYTHON=.venv/bin/python bash workloads/tools/gpu_check.sh --cpu     # dry run here, no GPU
# Further arguments go to `python -m workloads.tools.gpu_check` (--size-gb N, --steps N, --skip PART).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_check_out}
exec "$PY" -m workloads.tools.gpu_check --out "$OUT" "$@"
