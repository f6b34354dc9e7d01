#!/usr/bin/env bash
# Installs the system packages a fresh machine lacks for building and testing portcullis.
# Checks first and installs only what is missing. Pingora's zlib-ng build needs cmake.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)
# The rate-limit tests start their own redis-server.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# CI verifies systemd/portcullis.service with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)

if [ "${#need[@]}" -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
