#!/usr/bin/env bash
# Checks the systemd unit: hardening exposure at most 2.0 and no parse
# warnings (systemd-analyze verify exits 0 on those, so its output is read).
set -euo pipefail
cd "$(dirname "$0")/.."
unit=systemd/dakkio-gateway.service
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze not found; installing systemd"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd
fi
systemd-analyze security --offline=yes --threshold=20 "$unit" | tail -1
out=$(systemd-analyze verify "$unit" 2>&1 || true)
if echo "$out" | grep -Ei "failed to parse|unknown key|unknown section|invalid" ; then
    echo "error: systemd-analyze verify found problems in $unit" >&2
    exit 1
fi
echo "$unit: verify ok"
