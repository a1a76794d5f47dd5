#!/usr/bin/env bash
# Run the agent once against this machine's real NVML and keep what it saw, for comparison with
# the fake NVML machines. Needs only python3 and nvidia-ml-py (pynvml); run from anywhere:
#
#     OUT=/some/folder gpu_agent/tools/real_nvml_check.sh
#
# Writes to $OUT (default ./real-nvml-out):
#   real-report.json   the GPUNodeReport from `python3 -m gpu_agent.cli --once --print`
#   nvml-probe.json    every NVML query the reader makes, with its raw answer or error
#   agent-stderr.txt   the agent's log
#   env.txt            python, nvidia-ml-py and agent exit status
#   nvidia-smi-*.txt   nvidia-smi's topology matrix and full query, when nvidia-smi exists
# Exit status: the agent's.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-./real-nvml-out}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
{
    "$PYTHON" --version
    "$PYTHON" -c "import pynvml, importlib.metadata as m; print('nvidia-ml-py', m.version('nvidia-ml-py'))"
} > "$OUT/env.txt" 2>&1
"$PYTHON" -m gpu_agent.cli --once --print --node-name "$(hostname)" \
    --podresources-socket "$OUT/no-kubelet.sock" --disk-probe-bytes 0 \
    > "$OUT/real-report.json" 2> "$OUT/agent-stderr.txt"
rc=$?
echo "agent exit status: $rc" >> "$OUT/env.txt"
"$PYTHON" -m gpu_agent.tools.nvml_probe > "$OUT/nvml-probe.json" 2>> "$OUT/agent-stderr.txt"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi topo -m > "$OUT/nvidia-smi-topo.txt" 2>&1
    nvidia-smi -q > "$OUT/nvidia-smi-q.txt" 2>&1
fi
cat "$OUT/env.txt"
tail -n 5 "$OUT/agent-stderr.txt"
exit "$rc"
