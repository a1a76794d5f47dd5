"""Reference workloads that gpusched places: a DeepSpeed training job and an LLM inference server.

Both share one small GPT-style decoder (`workloads.gpt`), so the weights a training run produces
have the same layout the inference server loads.
"""
