# Serving image: TorchServe answering with model_store/smoke.mar on the CPU.
#
#   make archive                      # model_store/smoke.mar must exist before the build
#   buildah bud -t smoke-serve .      # or: docker build -t smoke-serve .
#   docker run --rm --name smoke -p 127.0.0.1:8080-8082:8080-8082 smoke-serve
#   docker exec smoke python -c 'import json; print(json.load(open("key_file.json"))["inference"]["key"])'
#
# Callers authenticate as on the host (see config.properties): TorchServe writes key_file.json
# into /app at start, and the inference key above goes into "Authorization: Bearer <key>".
# It does not train or build the archive; the handler travels inside smoke.mar.
FROM python:3.11-slim-bookworm

# TorchServe's frontend is a Java program; tini relays docker stop's SIGTERM (see ENTRYPOINT).
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Only the serving part of the pinned requirements.txt: training, plotting, experiment tracking,
# load testing and test tools stay out of the image. torch comes from PyTorch's CPU wheel index
# instead of PyPI's CUDA build (what this repo's machine caches), which adds gigabytes of CUDA
# libraries a CPU container never loads; the pins still hold, as 2.14.1+cpu satisfies ==2.14.1.
COPY requirements.txt .
RUN grep -E '^(torch|torchvision|torchserve|numpy|pillow|pyyaml|requests|psutil)==' \
        requirements.txt > serving-requirements.txt \
    && pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r serving-requirements.txt \
    && rm serving-requirements.txt requirements.txt

# TorchServe writes logs/ and key_file.json into its working directory, so /app belongs to the
# unprivileged user, while the files copied below stay root's and read-only to the server.
RUN useradd --create-home --uid 10001 smoke && chown smoke:smoke /app
COPY config.properties metrics.yaml ./
COPY model_store/smoke.mar model_store/
# scripts.server answers the health check below.
COPY scripts/__init__.py scripts/server.py scripts/
USER smoke

# config.properties binds 127.0.0.1, which is unreachable from outside a container; these
# override its addresses (it sets enable_envvars_config=true) to listen on every interface of
# the container. gRPC keeps 127.0.0.1 and is not published.
ENV TS_INFERENCE_ADDRESS=http://0.0.0.0:8080 \
    TS_MANAGEMENT_ADDRESS=http://0.0.0.0:8081 \
    TS_METRICS_ADDRESS=http://0.0.0.0:8082 \
    PYTHONUNBUFFERED=1
EXPOSE 8080 8081 8082

# /ping needs the inference key; the status command reads it from key_file.json (renewing it
# once expired) and exits 0 only when TorchServe answers Healthy. start-period covers the JVM
# start and the model load.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "scripts.server", "status"]

# `torchserve --foreground` is a Python launcher that starts the JVM as its child and waits.
# As PID 1 it would ignore SIGTERM (the kernel drops signals that PID 1 has no handler for), so
# docker stop would hang for 10 s and then SIGKILL. tini is PID 1 instead and, with -g, sends
# the signal to the whole process group: the launcher and the JVM end at once. The JVM's own
# shutdown is cut short when the launcher exits first, so requests in flight are dropped.
ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
CMD ["torchserve", "--foreground", "--ncs", "--ts-config", "config.properties", \
     "--models", "smoke.mar"]
