"""LLM inference workload: a torch model server that loads safetensors weights from the node's
Hugging Face-layout cache, hot-loads LoRA adapters and exports its weights-load time."""
