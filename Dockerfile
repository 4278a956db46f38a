# The distilrec image: the rayproject/ray 2.60 image (Python 3.11) with the project installed by the base
# image's `ray` user (uid 1000, the owner of its Python environment), running as the non-root `distilrec`
# user (uid 10001, gid 100 `users`: a uid of 10000 and more is no user of the node's). One file, two variants:
#
#   docker build -t distilrec:0.1.0 .                                  # CPU (CPU-only torch wheels)
#   docker build -t distilrec:0.1.0-gpu --build-arg VARIANT=gpu .      # GPU (CUDA torch wheels)
#   docker build -t distilrec:0.1.0 --build-arg EXTRAS=s3,plots .      # without the baked-in MiniLM weights
#
# The Helm chart runs every Ray node (head, workers, training and serving) and the RayJob submitter from it;
# Serve imports services.app:build_app from the installed package.
ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

ARG RAY_VERSION
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# Where torch comes from: empty = the CPU wheel index for VARIANT=cpu and PyPI's CUDA wheels for VARIANT=gpu.
ARG TORCH_INDEX_URL=""
# Extras of the project: s3 (s3fs, for s3:// artifacts), plots (matplotlib: the pipeline's PNG plots beside
# report.json), text (the all-MiniLM-L6-v2 weights baked in, so that training and serving need no download;
# leave it out for a smaller image). Installed with constraints.txt, the versions the tests ran with.
ARG EXTRAS=s3,plots,text

# THP_MEM_ALLOC_ENABLE: PyTorch backs its buffers of 2 MB and more with transparent huge pages (where the
# node's kernel allows it, "madvise" or "always"): fewer page faults in a CPU training step's large buffers.
# `distilrec` sets it too when the environment does not.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    THP_MEM_ALLOC_ENABLE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

USER 0:0
# The runtime user: no home of its own (HOME stays /home/ray, read-only to it), no login shell.
RUN useradd --uid 10001 --gid 100 --no-create-home --home-dir /home/ray --shell /usr/sbin/nologin distilrec

USER 1000:100
WORKDIR /home/ray/distilrec

COPY --chown=1000:100 pyproject.toml README.md constraints.txt ./
COPY --chown=1000:100 distilrec/ distilrec/
COPY --chown=1000:100 training/ training/
COPY --chown=1000:100 services/ services/

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3013: torch is pinned; the project (".") installs with constraints.txt, which pins every dependency (torch
# goes without it, as in the Makefile: torch's own index may lack the other pinned versions).
# hadolint ignore=DL3013
RUN index="${TORCH_INDEX_URL}"; \
    if [ -z "$index" ] && [ "$VARIANT" = "cpu" ]; then index="https://download.pytorch.org/whl/cpu"; fi; \
    pip install ${index:+--index-url "$index"} "torch==${TORCH_VERSION}" \
    && pip install ".[${EXTRAS}]" -c constraints.txt \
    && python -c "import ray, torch, distilrec, services.app, training.pipeline; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
    && python -c "from services.run import haproxy_binary; assert haproxy_binary(), 'no HAProxy for RAY_SERVE_ENABLE_HA_PROXY'" \
    && distilrec --help > /dev/null

# Installed files stay owned by uid 1000: the runtime user reads them and writes only to /tmp and /dev/shm.
USER 10001:100

# Ray's ports (GCS, dashboard, client, Serve HTTP, metrics); KubeRay starts Ray itself.
EXPOSE 6379 8265 10001 8000 8080
CMD ["distilrec", "--help"]
