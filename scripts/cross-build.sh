#!/usr/bin/env bash
# Builds the size-optimised release binary (`dist` profile) for Raspberry Pi
# targets without Docker, then smoke-runs each one under qemu-user: start on
# a test config, ingest a reading through the local API, query it back, stop
# cleanly.
#
#   scripts/cross-build.sh [--deb] [aarch64] [armv7] [arm]   (default: aarch64 armv7)
#
# With `--deb`, each smoke-tested binary is also packaged by cargo-deb
# (`target/debian/dakkio-gateway_<version>_<arch>.deb`: arm64 for
# aarch64, armhf for armv7 and arm) and the package is checked: its
# architecture, the binary's machine, the unit, the conffile.
#
# The binaries are linked by zig against glibc 2.31 symbols (cargo-zigbuild's
# `.2.31` target suffix), so they run on Raspberry Pi OS Bullseye (glibc 2.31)
# and Bookworm (2.36); the smoke run checks the newest GLIBC_ version the
# binary needs and that the stripped binary stays within 8 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=0
want=()
for a in "$@"; do
    case "$a" in
        --deb) deb=1 ;;
        *) want+=("$a") ;;
    esac
done
[ ${#want[@]} -gt 0 ] || want=(aarch64 armv7)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# qemu-user runs the binaries; the cross libc packages give it the target's
# dynamic loader and libc. zig (the `ziglang` pip package) links; cargo-zigbuild drives it.
apt_install qemu-user curl binutils
command -v python3 >/dev/null || apt_install python3 python3-pip
python3 -m ziglang version >/dev/null 2>&1 || python3 -m pip install -q ziglang
command -v cargo-zigbuild >/dev/null 2>&1 || cargo install -q --locked cargo-zigbuild
if [ "$deb" -eq 1 ]; then
    # The version this script was checked with.
    command -v cargo-deb >/dev/null 2>&1 || cargo install -q --locked cargo-deb --version 3.8.0
    apt_install file
fi

for t in "${want[@]}"; do
    case "$t" in
        aarch64) triple=aarch64-unknown-linux-gnu; qemu=qemu-aarch64; sysroot=/usr/aarch64-linux-gnu; libc=libc6-arm64-cross; arch=arm64; machine=aarch64 ;;
        armv7) triple=armv7-unknown-linux-gnueabihf; qemu=qemu-arm; sysroot=/usr/arm-linux-gnueabihf; libc=libc6-armhf-cross; arch=armhf; machine=ARM ;;
        arm) triple=arm-unknown-linux-gnueabihf; qemu=qemu-arm; sysroot=/usr/arm-linux-gnueabihf; libc=libc6-armhf-cross; arch=armhf; machine=ARM ;;
        *) echo "error: unknown target \`$t\`; use aarch64, armv7 or arm" >&2; exit 2 ;;
    esac
    apt_install "$libc"
    rustup target add "$triple" >/dev/null
    echo "== building $triple (profile dist, glibc 2.31)"
    cargo zigbuild --quiet --profile dist --target "$triple.2.31" --bin dakkio-gateway
    bin="target/$triple/dist/dakkio-gateway"
    size=$(stat -c %s "$bin")
    glibc=$(strings -a "$bin" | grep -o '^GLIBC_[0-9.]*$' | sort -uV | tail -1)
    echo "$triple: $bin, $size bytes stripped, needs up to $glibc"
    if [ "$size" -gt $((8 * 1024 * 1024)) ]; then
        echo "error: $bin is larger than 8 MiB" >&2; exit 1
    fi
    if [ "$(printf '%s\n%s\n' "$glibc" GLIBC_2.31 | sort -V | tail -1)" != GLIBC_2.31 ]; then
        echo "error: $bin needs $glibc, newer than Bullseye's GLIBC_2.31" >&2; exit 1
    fi
    # The test-only switches (cargo feature `fault-injection`) must never
    # reach a shipped binary.
    if strings -a "$bin" | grep -q 'DAKKIO_GATEWAY_TEST_'; then
        echo "error: $bin contains a fault-injection switch (DAKKIO_GATEWAY_TEST_…)" >&2; exit 1
    fi

    echo "== smoke run under $qemu"
    run() { "$qemu" -L "$sysroot" "$bin" "$@"; }
    work=$(mktemp -d)
    trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
    admin="dakkio_a_CrossSmokeAdminKey0123456789abcdef"
    hash=$(printf %s "$admin" | run keys hash)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$work/gateway.toml" <<TOML
[gateway]
id = "cross-smoke"
data_dir = "$work/data"
[[buckets]]
id = "507f1f77bcf86cd799439011"
name = "smoke"
[api]
listen = "127.0.0.1:$port"
admin_key_sha256 = "$hash"
TOML
    # qemu itself in the background (not a shell function: a subshell
    # would receive the signal instead of the gateway).
    "$qemu" -L "$sysroot" "$bin" run --config "$work/gateway.toml" 2> "$work/log" &
    pid=$!
    for _ in $(seq 1 300); do grep -q "gateway running" "$work/log" && break; sleep 0.1; done
    grep -q "gateway running" "$work/log" || { cat "$work/log"; echo "error: $triple did not start" >&2; exit 1; }
    api() { curl -sS -X POST "http://127.0.0.1:$port$1" -H "X-API-Key: $admin" -H "Content-Type: application/json" -d "$2"; }
    # Answers are captured first: `curl | grep -q` can fail under pipefail
    # when grep exits before curl has written everything.
    created=$(api /api/data '{"bucketId":"507f1f77bcf86cd799439011","dataSourceId":"507f1f77bcf86cd799439012","values":{"temperature":21.5}}')
    queried=$(api /api/data/query '{"bucketId":"507f1f77bcf86cd799439011","filters":{"limit":10}}')
    case "$created" in *'"_id"'*) ;; *) echo "error: ingest answered: $created" >&2; exit 1 ;; esac
    case "$queried" in *'"count":1'*) ;; *) echo "error: query answered: $queried" >&2; exit 1 ;; esac
    kill -TERM "$pid"
    wait "$pid"
    grep -q "stopped cleanly" "$work/log" || { cat "$work/log"; echo "error: $triple did not stop cleanly" >&2; exit 1; }
    trap - EXIT
    rm -rf "$work"
    echo "$triple: smoke run ok (ingest, query, clean stop)"

    if [ "$deb" -eq 1 ]; then
        echo "== packaging $triple"
        # --no-build: package exactly the binary that was just smoke-run.
        pkg=$(cargo deb --no-build --no-strip --quiet --profile dist --target "$triple" | tail -1)
        fields=$(dpkg-deb -f "$pkg" Package Architecture Depends)
        case "$fields" in *"Architecture: $arch"*) ;; *) echo "error: $pkg: $fields" >&2; exit 1 ;; esac
        listing=$(dpkg-deb -c "$pkg")
        for f in ./usr/bin/dakkio-gateway ./usr/lib/systemd/system/dakkio-gateway.service \
                 ./etc/dakkio-gateway/gateway.toml; do
            case "$listing" in *" $f"*) ;; *) echo "error: $pkg lacks $f" >&2; exit 1 ;; esac
        done
        [ "$(dpkg-deb --ctrl-tarfile "$pkg" | tar -xO ./conffiles)" = /etc/dakkio-gateway/gateway.toml ] \
            || { echo "error: $pkg: gateway.toml is not a conffile" >&2; exit 1; }
        x=$(mktemp -d)
        dpkg-deb -x "$pkg" "$x"
        file -b "$x/usr/bin/dakkio-gateway" | grep -q "$machine" \
            || { echo "error: $pkg carries a binary for another machine" >&2; exit 1; }
        rm -rf "$x"
        echo "$triple: $pkg ($arch, $(stat -c %s "$pkg") bytes) ok"
    fi
done
