# The image the manifests run (gpusched:0.1.0): the extender and the agent, with pinned dependencies.
#   docker build -t gpusched:0.1.0 .
# CI does not build it (no container engine there); tests/integration/test_images.py checks this
# file (pinned base, two stages, no compiler in the final one) and the e2e tests run the same
# commands as processes.
#
# Stage 1 builds a virtual environment, and the agent's fake NVML library (`--fake-nvml`, for
# demos on machines without GPUs) into it, with gcc; stage 2 copies the environment onto the same
# base, without the compiler.
FROM python:3.11.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/gpusched
ENV PATH=/opt/gpusched/bin:$PATH GPUSCHED_FAKE_NVML_CACHE=/opt/gpusched/fake-nvml
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scheduler scheduler
COPY gpu_agent gpu_agent
COPY simulations simulations
COPY workloads workloads
COPY localcluster localcluster
RUN pip install --no-cache-dir -c constraints.txt '.[agent]' \
    && cd / && python -c "from gpu_agent.fake_nvml import build; build()"

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="gpusched" org.opencontainers.image.version="0.1.0"
COPY --from=build /opt/gpusched /opt/gpusched
ENV PATH=/opt/gpusched/bin:$PATH GPUSCHED_FAKE_NVML_CACHE=/opt/gpusched/fake-nvml
USER 65532:65532
ENTRYPOINT ["gpusched-extender"]
