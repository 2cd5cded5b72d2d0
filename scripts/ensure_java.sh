#!/usr/bin/env bash
# Makes sure a Java runtime >= 11 is on PATH, as TorchServe's frontend needs one.
# Installs Debian's openjdk-17-jre-headless with apt when Java is missing or too old.
set -euo pipefail

java_major() {
  command -v java >/dev/null 2>&1 || { echo 0; return; }
  # `java -version` prints e.g. 'openjdk version "17.0.15" 2025-04-15' (or "1.8.0_x" for Java 8).
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

major=$(java_major)
if [ "${major:-0}" -ge 11 ]; then
  exit 0
fi

echo "Java >= 11 is needed by TorchServe (found: ${major:-none}); installing openjdk-17-jre-headless" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get is not available: install a Java 11+ runtime yourself and put java on PATH" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "run as root or install sudo to let setup install Java" >&2; exit 1; }
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless
major=$(java_major)
if [ "${major:-0}" -lt 11 ]; then
  echo "Java was installed but 'java -version' still reports ${major:-nothing}; check PATH" >&2
  exit 1
fi
