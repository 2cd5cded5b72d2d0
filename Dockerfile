# Serving image: TorchServe answering with model_store/smoke.mar on the CPU.
#
#   make archive                      # model_store/smoke.mar must exist before the build
#   docker build -t smoke-serve .     # or: buildah bud --format docker -t smoke-serve .
#   docker run --rm --name smoke -p 127.0.0.1:8080-8082:8080-8082 smoke-serve
#   docker exec smoke python -c 'import json; print(json.load(open("key_file.json"))["inference"]["key"])'
#
# Callers authenticate as on the host (see config.properties): TorchServe writes key_file.json
# into /app at start, and the inference key above goes into "Authorization: Bearer <key>".
# It does not train or build the archive; the handler travels inside smoke.mar. Where no
# registry serves base images, docker/build-base.sh makes a stand-in for BASE_IMAGE.

# Any Debian bookworm with Python 3.11 and its venv module: the pinned requirements and the
# paths in CMD assume that Python. buildah's --format docker keeps the HEALTHCHECK (OCI drops it).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# TorchServe's frontend is a Java program. Debian removes the old version of a package from its
# mirror when a security fix lands, so pinned apt versions would break later builds; the base
# image's release (bookworm) is what fixes the Java major version here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# pip reads these build arguments from its environment. torch comes from PyTorch's CPU wheel
# index instead of PyPI's CUDA build, which adds gigabytes of CUDA libraries a CPU container never
# loads; the pins still hold, as 2.14.1+cpu satisfies ==2.14.1. A build behind a TLS proxy or
# with local indexes sets the others, with the files they name mounted into the build
# (docker/build-local.sh does). Build arguments stay in the image history: no credentials here.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS
ARG PIP_CERT

# Only the serving part of the pinned requirements.txt: training, plotting, experiment tracking,
# load testing and test tools stay out of the image. The virtual environment gives TorchServe a
# fixed path for CMD to name, whichever layout the base image's Python has (/usr/local in
# python:*, /usr with Debian's externally managed marker in a plain bookworm).
COPY requirements.txt .
RUN python3 -m venv /opt/venv \
    && grep -E '^(torch|torchvision|torchserve|numpy|pillow|pyyaml|requests|psutil)==' \
        requirements.txt > serving-requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r serving-requirements.txt \
    && rm serving-requirements.txt requirements.txt
ENV PATH=/opt/venv/bin:$PATH

# TorchServe writes logs/ and key_file.json into its working directory, so /app belongs to the
# unprivileged user, while the files copied below stay root's and read-only to the server.
RUN useradd --create-home --uid 10001 smoke && chown smoke:smoke /app
COPY config.properties metrics.yaml log4j2.xml ./
COPY model_store/smoke.mar model_store/
# scripts.server answers the health check below.
COPY scripts/__init__.py scripts/server.py scripts/
# By number, so that Kubernetes' runAsNonRoot can tell it is not root.
USER 10001

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

# The java command that `torchserve --foreground` would build (ts/model_server.py, start()), run
# without that launcher: the launcher is a Python parent that ignores SIGTERM as PID 1 (the
# kernel drops signals PID 1 has no handler for), so docker stop would wait 10 s and SIGKILL.
# The JVM as PID 1 handles SIGTERM itself and runs TorchServe's shutdown hook, which closes the
# listeners; it also reaps the Python workers it starts, so no init process is needed.
# Like the launcher, it passes the vmargs of config.properties (logging, C1 compiler only);
# the launcher would add -Djava.io.tmpdir only with TEMP set. It would also write a pid file to
# /tmp, which `torchserve --stop` and `scripts.server stop` read and nothing in the container
# needs: stop the container instead.
CMD ["java", "-Dmodel_server_home=/opt/venv/lib/python3.11/site-packages", \
     "-Dlog4j.configurationFile=log4j2.xml", "-XX:TieredStopAtLevel=1", \
     "-cp", ".:/opt/venv/lib/python3.11/site-packages/ts/frontend/*", \
     "org.pytorch.serve.ModelServer", "--python", "/opt/venv/bin/python", \
     "-f", "config.properties", "-s", "model_store", "-ncs", "-m", "smoke.mar"]
