#!/usr/bin/env bash
# Checks a built serving image without a container engine:
#
#   docker/check-image.sh [IMAGE]     # as root, after docker/build-local.sh
#
# First java, python, torch and ts inside the image (buildah run). Then the image's CMD as PID 1
# of a fresh PID namespace, chrooted into the image as its user, the way a container runs it:
# the health check command must turn healthy, a photo must get an answer, and SIGTERM must end
# the JVM quickly. There is no network namespace, so the ports move off TorchServe's defaults.
# The single-quoted scripts below are expanded by the shell inside the image, not by this one.
# shellcheck disable=SC2016
set -euo pipefail

image=${1:-localhost/smoke-serve}
storage=(--storage-driver "${STORAGE_DRIVER:-vfs}")
ports=(TS_INFERENCE_ADDRESS=http://127.0.0.1:18080 TS_MANAGEMENT_ADDRESS=http://127.0.0.1:18081
       TS_METRICS_ADDRESS=http://127.0.0.1:18082 TS_GRPC_INFERENCE_PORT=17070
       TS_GRPC_MANAGEMENT_PORT=17071)
log=${LOG:-/tmp/smoke-serve-check.log}

container=$(buildah "${storage[@]}" from "$image")
trap 'buildah "${storage[@]}" rm "$container" >/dev/null' EXIT

echo "== tools in the image"
buildah "${storage[@]}" run --isolation chroot "$container" -- sh -c '
    id; java -version 2>&1 | head -1; python --version; command -v python tini || true
    python -c "import torch, torchvision, ts.version as ts
print(torch.__version__, torchvision.__version__, ts.__version__)"'

# The image's user, environment and command, as a container engine would use them.
config=$(buildah "${storage[@]}" inspect --type container "$container")
user=$(jq -r '.Docker.config.User' <<< "$config")
mapfile -t environment < <(jq -r '.Docker.config.Env[]' <<< "$config")
mapfile -t command < <(jq -r '.Docker.config.Cmd[]' <<< "$config")
root=$(buildah "${storage[@]}" mount "$container")
in_image=(chroot --userspec="$user:$user" "$root"
          env -i "${environment[@]}" "${ports[@]}" HOME=/home/smoke)

echo "== CMD as PID 1: ${command[*]}"
# unshare's child mounts /proc and /dev for the image, then becomes the JVM by exec.
unshare --pid --fork --mount --propagation private sh -c \
    'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec "$@"' \
    "$root" "${in_image[@]}" sh -c 'cd /app && exec "$@"' sh "${command[@]}" > "$log" 2>&1 &
unshare_pid=$!
sleep 2
jvm=$(pgrep -P "$unshare_pid")
inside=(nsenter --target "$jvm" --mount --pid "${in_image[@]}" sh -c)
"${inside[@]}" 'echo "PID 1: $(tr "\0" " " < /proc/1/cmdline)"'

started=$SECONDS
status_file=/tmp/smoke-serve-status.json
until "${inside[@]}" 'cd /app && python -m scripts.server status' > "$status_file" 2>&1; do
    if (( SECONDS - started > 240 )) || ! kill -0 "$jvm" 2> /dev/null; then
        echo "not healthy after $((SECONDS - started)) s"; cat "$status_file"; tail -30 "$log"
        kill -KILL "$jvm" 2> /dev/null || true; exit 1
    fi
    sleep 3
done
echo "== healthy after $((SECONDS - started)) s:"; cat "$status_file"
"${inside[@]}" 'cd /app && python -c "from PIL import Image
Image.new(\"RGB\", (640, 480), (150, 120, 90)).save(\"/tmp/photo.jpg\")"
    python -m scripts.server predict /tmp/photo.jpg'
"${inside[@]}" 'ls -l /app; for p in /proc/[0-9]*; do
    echo "${p#/proc/} $(tr "\0" " " < "$p/cmdline" 2> /dev/null | cut -c1-90)"; done'

echo "== SIGTERM to PID 1"
stopping=$SECONDS
kill -TERM "$jvm"
status=0
wait "$unshare_pid" || status=$?
# 143 is 128 + SIGTERM, how a JVM that ran its shutdown hooks reports the signal.
echo "PID 1 exited with status $status after $((SECONDS - stopping)) s; its log ends with:"
tail -8 "$root/app/logs/ts_log.log"
buildah "${storage[@]}" umount "$container" > /dev/null
