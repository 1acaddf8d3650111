#!/usr/bin/env bash
# Runs the whole test suite. First installs, when missing, the real
# components the tests use from the distribution's packages: a mosquitto
# broker and its clients, socat for pseudo serial ports, openssl (a
# self-signed certificate for the local API's TLS test), curl (dakkio's
# documented curl examples against the local API) and Chromium with
# chromedriver (the status page in a real browser).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# Fault suite (tests/faults): network namespaces and veth pairs for the
# partition scenarios, nftables drop rules, a loop-mounted ext4 for the full
# disk, libfaketime for the clock jumps.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
# The status page's browser test (tests/integration/status_page.rs):
# Chromium and its WebDriver from the distribution (nothing downloads a
# browser build).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test dependencies: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Modbus tests (tests/integration/modbus.rs) talk to pymodbus's server,
# a real Modbus slave written by others, over socat ptys and loopback TCP.
# Pinned: its datastore API moved between 3.x releases.
PYMODBUS_VERSION=3.11.4
python3=$(command -v python3 || true)
if [ -z "$python3" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3 python3-pip
fi
if [ "$(python3 -c 'import pymodbus; print(pymodbus.__version__)' 2>/dev/null)" != "$PYMODBUS_VERSION" ]; then
    echo "installing pymodbus $PYMODBUS_VERSION (the Modbus slave of the tests)"
    python3 -m pip install --quiet "pymodbus[serial]==$PYMODBUS_VERSION" \
        || python3 -m pip install --quiet --break-system-packages "pymodbus[serial]==$PYMODBUS_VERSION"
fi

# `--workspace`: also the tests of `testkit/` (the dakkio stand-in's own).
exec cargo test --workspace "$@"
