#!/usr/bin/env bash
# Regenerate the Python gRPC stubs (and .pyi type stubs) of the vendored kubelet PodResources v1
# and CRI runtime v1 protos. Run from anywhere; needs grpcio-tools (the dev extra), pinned to the
# grpcio the agent runs with, because the generated code checks that version at import.
# Descriptor paths stay distinct (gpu_agent/podresources/api.proto, gpu_agent/cri/api.proto), so
# both load into one process. Generated files get a "ruff: noqa" first line: they are not ours
# to lint. Pass proto paths (relative to the repository root) to regenerate only those, e.g.
# `gpu_agent/tools/gen_protos.sh gpu_agent/cri/api.proto`; with none, both are regenerated.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
PROTOS=("$@")
[ ${#PROTOS[@]} -gt 0 ] || PROTOS=(gpu_agent/podresources/api.proto gpu_agent/cri/api.proto)
for proto in "${PROTOS[@]}"; do
    "$PYTHON" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. "$proto"
    dir="$(dirname "$proto")"
    for generated in "$dir"/api_pb2.py "$dir"/api_pb2.pyi "$dir"/api_pb2_grpc.py; do
        { echo "# ruff: noqa"; cat "$generated"; } > "$generated.tmp" && mv "$generated.tmp" "$generated"
    done
done
