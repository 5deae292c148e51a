#!/usr/bin/env bash
# Install the system packages the integration tests need (Debian 12, run as root).
# Idempotent: does nothing (quietly) when every package is already installed.
set -euo pipefail

PACKAGES=(
    mosquitto
    mosquitto-clients
    gir1.2-gst-rtsp-server-1.0
    python3-gi
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly
    gstreamer1.0-libav
    gstreamer1.0-tools
    prometheus
    chromium
    chromium-driver
    iproute2
    shellcheck
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "ci-deps: missing packages (${missing[*]}) and not running as root" >&2
    exit 1
fi

echo "ci-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Fail if anything is still missing (e.g. a package name vanished from the archive).
for pkg in "${missing[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
        echo "ci-deps: $pkg is still not installed" >&2
        exit 1
    fi
done
