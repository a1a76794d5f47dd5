# The image the manifests run (gpusched:0.1.0): the extender and the agent, with pinned dependencies.
# CI does not build it (no container engine there); the e2e tests run the same commands as processes.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scheduler scheduler
COPY gpu_agent gpu_agent
COPY simulations simulations
COPY workloads workloads
COPY localcluster localcluster
RUN apt-get update && apt-get install -y --no-install-recommends gcc && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir -c constraints.txt '.[agent]'
USER 65532:65532
ENTRYPOINT ["gpusched-extender"]
