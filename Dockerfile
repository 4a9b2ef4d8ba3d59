# EchoForge server image.
#
#   docker build -t echoforge .                                                    # CPU (default)
#   docker build -t echoforge:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#   docker run --rm -p 8000:8000 -v echoforge-data:/data echoforge                  # add --gpus all for CUDA
#
# PyTorch's CUDA wheels bundle the CUDA runtime, so the CUDA image only differs in the torch
# wheel index; the host needs the NVIDIA driver + Container Toolkit. Configuration: ECHOFORGE_*
# environment variables (see docs/reference/configuration.md). CSM weights: mount them and set
# ECHOFORGE_CSM__MODEL, or mount a Hugging Face cache at /models/hf.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0
# Extras installed into the image: redis = the scale-out queue client.
ARG EXTRAS=redis

RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng ffmpeg libsndfile1 \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
# torch first, from the chosen index, so the project install does not pull a different build.
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"
COPY pyproject.toml README.md* ./
COPY echoforge ./echoforge
RUN pip install ".[${EXTRAS}]"

RUN useradd --create-home --uid 1000 echoforge && mkdir -p /data /models/hf && chown -R echoforge /data /models
USER echoforge
ENV ECHOFORGE_DATA_DIR=/data \
    ECHOFORGE_SERVER__HOST=0.0.0.0 \
    ECHOFORGE_SERVER__PORT=8000 \
    HF_HOME=/models/hf
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4).status != 200)"
CMD ["echoforge", "serve"]
