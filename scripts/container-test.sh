#!/usr/bin/env bash
# The install path, proven under a real systemd: builds the amd64 .deb,
# boots a Debian 12 root file system with systemd as PID 1 under
# systemd-nspawn (private network), installs the package, configures it as
# docs/operator-manual.md says (broker settings, credentials) and checks, as
# an operator would:
#
#   install (user, conffile, enabled but not started) · start, READY and
#   STATUS= · journal fields · MQTT and API ingest, query back · `check` and
#   `queue stats` from a root shell · reload, valid and invalid · the
#   watchdog while idle · stop · `kill -9` and restart with nothing lost ·
#   start at boot · remove and purge
#
#   scripts/container-test.sh [--keep]
#
# The root file system is made once by debootstrap from Debian's packages
# and cached in $DAKKIO_CT_CACHE (default /var/cache/dakkio-gateway-ct);
# each run boots a copy. Needs root (nspawn, nsenter).
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
[ "${1:-}" = "--keep" ] && keep=1
started=$(date +%s)
cache=${DAKKIO_CT_CACHE:-/var/cache/dakkio-gateway-ct}
rootfs_cache="$cache/bookworm"

step() { printf '\n== %s (%ss)\n' "$*" "$(($(date +%s) - started))"; }
fail() {
    echo "FAIL: $*" >&2
    if [ -n "${leader:-}" ]; then
        echo "--- journal of the unit (last 60 lines):" >&2
        run journalctl -u dakkio-gateway --no-pager -n 60 >&2 || true
    fi
    exit 1
}

apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# A machine that cannot run a container at all is told so, not failed.
skip() {
    echo "SKIPPED: container test: $*"
    exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn, nsenter); run it as root"
unshare --mount --pid --uts --ipc --net --fork true 2>/dev/null ||
    skip "this machine does not allow new namespaces (no CAP_SYS_ADMIN), so systemd-nspawn cannot run"

step "tools"
apt_install systemd-container debootstrap util-linux
command -v cargo-deb >/dev/null 2>&1 || cargo install -q --locked cargo-deb --version 3.8.0

step "Debian 12 root file system"
if [ ! -x "$rootfs_cache/usr/bin/mosquitto_pub" ]; then
    rm -rf "$rootfs_cache.tmp"
    mkdir -p "$cache"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,mosquitto,mosquitto-clients,curl,ca-certificates,adduser,procps \
        bookworm "$rootfs_cache.tmp" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log"; fail "debootstrap"; }
    mv "$rootfs_cache.tmp" "$rootfs_cache"
fi

step "amd64 package"
# DAKKIO_CT_DEB: test this package instead of building one.
if [ -n "${DAKKIO_CT_DEB:-}" ]; then
    deb=$DAKKIO_CT_DEB
else
    cargo build --release --locked -q
    cargo deb --no-build --quiet >/dev/null
    deb=$(ls -t target/debian/dakkio-gateway_*_amd64.deb | head -1)
fi
echo "$deb"

work=$(mktemp -d /var/tmp/dakkio-ct.XXXXXX)
root="$work/root"
cleanup() {
    if [ -n "${nspawn_pid:-}" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [ "$keep" -eq 0 ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT
cp -a "$rootfs_cache" "$root"
# Not /tmp: the container mounts a fresh tmpfs there at boot.
cp "$deb" "$root/var/tmp/dakkio-gateway.deb"
echo "container-test" >"$root/etc/hostname"

# Run a command inside the booted container (all its namespaces).
run() { nsenter -t "$leader" -m -u -i -n -p -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
sh_in() { run /bin/sh -c "$1"; }

boot() {
    systemd-nspawn -D "$root" --boot --private-network --register=no --keep-unit \
        -M "dakkio-ct-$$" >>"$work/console.log" 2>&1 &
    nspawn_pid=$!
    leader=""
    # The container's systemd is nspawn's child (its /proc/PID/root reads
    # "/" from here: it lives in its own mount namespace).
    for _ in $(seq 1 300); do
        leader=$(pgrep -P "$nspawn_pid" -x systemd || true)
        [ -n "$leader" ] && break
        sleep 0.1
    done
    [ -n "$leader" ] || fail "the container did not boot (see $work/console.log)"
    local state=""
    for _ in $(seq 1 600); do
        state=$(run systemctl is-system-running 2>/dev/null || true)
        case "$state" in running | degraded) break ;; esac
        sleep 0.1
    done
    case "$state" in running | degraded) ;; *) fail "systemd did not finish booting: $state" ;; esac
}

poweroff() {
    run systemctl poweroff || true
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=""
}

# The unit's state, one property.
prop() { run systemctl show -p "$1" --value dakkio-gateway; }

wait_active() {
    for _ in $(seq 1 200); do
        [ "$(prop ActiveState)" = active ] && [ "$(prop SubState)" = running ] && return 0
        sleep 0.1
    done
    fail "dakkio-gateway did not become active: $(prop ActiveState)/$(prop SubState)"
}

ADMIN=dakkio_a_ContainerTestAdminKey0123456789abcdef
WRITE=dakkio_w_ContainerTestWriteKey0123456789abcdef
BUCKET=65a1b2c3d4e5f6a7b8c9d0e1
SOURCE=65a1b2c3d4e5f6a7b8c9d0e2

api() { # METHOD PATH [BODY]
    run curl -sS -X "$1" -H "X-API-Key: $ADMIN" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "http://127.0.0.1:8080$2"
}
count_points() {
    api POST /api/data/query "{\"bucketId\":\"$BUCKET\",\"filters\":{\"limit\":1}}" |
        sed -n 's/.*"total":\([0-9]*\).*/\1/p'
}

step "boot"
boot

step "install"
run dpkg -i /var/tmp/dakkio-gateway.deb >/dev/null || fail "dpkg -i"
run getent passwd dakkio-gateway >/dev/null || fail "no service user"
grep -qw dialout <<<"$(run id -nG dakkio-gateway)" || fail "the service user is not in dialout"
[ "$(run stat -c %a /etc/dakkio-gateway/gateway.toml)" = 640 ] || fail "conffile mode"
[ "$(run systemctl is-enabled dakkio-gateway)" = enabled ] || fail "not enabled"
[ "$(prop ActiveState)" = inactive ] || fail "started before it was configured"

step "configure as the operator manual says"
# The broker settings block of the manual, as a drop-in of the stock config.
awk '/<!-- container-test: mosquitto.conf -->/{f=1; next} f&&/^```/{if(n++)exit; next} f&&n==1' \
    docs/operator-manual.md >"$root/etc/mosquitto/conf.d/dakkio-gateway.conf"
[ -s "$root/etc/mosquitto/conf.d/dakkio-gateway.conf" ] || fail "no broker settings block in docs/operator-manual.md"
run systemctl restart mosquitto || fail "mosquitto refuses the manual's broker settings"
# Keys in root-owned files, handed over by LoadCredential=.
sh_in "umask 077; printf %s '$WRITE' >/etc/dakkio-gateway/credentials/barn.key; printf %s '$ADMIN' >/etc/dakkio-gateway/credentials/admin.key"
mkdir -p "$root/etc/systemd/system/dakkio-gateway.service.d"
cat >"$root/etc/systemd/system/dakkio-gateway.service.d/credentials.conf" <<EOF
[Service]
LoadCredential=barn.key:/etc/dakkio-gateway/credentials/barn.key
LoadCredential=admin.key:/etc/dakkio-gateway/credentials/admin.key
EOF
cat >"$root/etc/dakkio-gateway/gateway.toml" <<EOF
[gateway]
id = "container-test"

[[buckets]]
id = "$BUCKET"
name = "barn"
write_key_file = "barn.key"

[uplink]
# No dakkio here (private network): readings stay queued.
url = "http://127.0.0.1:9"

[api]
listen = "127.0.0.1:8080"
admin_key_file = "admin.key"

[mqtt]
host = "127.0.0.1"

[[mqtt.routes]]
topic = "barn/{source}"
bucket = "$BUCKET"
data_source = "{source}"
EOF
run systemctl daemon-reload

step "start: READY, STATUS=, journal fields"
run systemctl start dakkio-gateway || fail "start"
wait_active
status=$(prop StatusText)
echo "STATUS=$status"
case "$status" in *"readings queued"*) ;; *) fail "no STATUS= line: $status" ;; esac
# Whole outputs into grep, never `| grep -q`: with pipefail, journalctl
# killed by SIGPIPE when grep stops early fails the check.
journal() { run journalctl -u dakkio-gateway --no-pager "$@"; }
grep -q '"F_ADDR"' <<<"$(journal -o json)" ||
    fail "the journal has no F_ fields"

step "ingest over MQTT and the API, query back"
for i in $(seq 1 20); do
    run mosquitto_pub -h 127.0.0.1 -q 1 -t "barn/$SOURCE" -m "{\"temperature\": $i}"
done
grep -q "Data point ingested" <<<"$(api POST /api/data "{\"bucketId\":\"$BUCKET\",\"dataSourceId\":\"$SOURCE\",\"values\":{\"temperature\":99}}")" ||
    fail "API ingest"
for _ in $(seq 1 100); do
    [ "$(count_points)" = 21 ] && break
    sleep 0.1
done
[ "$(count_points)" = 21 ] || fail "query back: $(count_points) points, 21 sent"
# STATUS= follows within seconds (it was refreshed every 20 s with the
# unit's WatchdogSec=60s).
for _ in $(seq 1 40); do
    case "$(prop StatusText)" in "21 readings queued"*) break ;; esac
    sleep 0.1
done
case "$(prop StatusText)" in "21 readings queued"*) ;; *) fail "STATUS= is stale: $(prop StatusText)" ;; esac

step "check and queue stats from a root shell"
run dakkio-gateway check --config /etc/dakkio-gateway/gateway.toml >/dev/null ||
    fail "\`dakkio-gateway check\` from a root shell"
stats=$(run dakkio-gateway queue stats --config /etc/dakkio-gateway/gateway.toml) ||
    fail "\`queue stats\` from a root shell"
grep -q "NO KEY" <<<"$stats" && fail "queue stats cannot see the bucket key: $stats"

step "reload: valid, then invalid"
# `systemctl reload` returns once the change is applied: its log lines are
# there when it returns.
reloads() { grep -c "configuration reloaded" <<<"$(journal)" || true; }
n=$(reloads)
sed -i 's/^id = "container-test"/id = "container-test-2"/' "$root/etc/dakkio-gateway/gateway.toml"
run systemctl reload dakkio-gateway || fail "reload"
[ "$(reloads)" -gt "$n" ] || fail "systemctl reload returned before the change was applied"
grep -q "needs a restart" <<<"$(journal)" ||
    fail "a changed gateway.id is not reported as needing a restart"
[ "$(prop ActiveState)" = active ] || fail "not active after reload"
# An invalid file: `systemctl reload` fails, the gateway keeps running on
# the previous configuration, and the reason is in the journal's text once.
sh_in "printf '[store]\nmax_size = \"1KiB\"\n' >>/etc/dakkio-gateway/gateway.toml"
run systemctl reload dakkio-gateway 2>/dev/null && fail "systemctl reload succeeded on an invalid file"
[ "$(prop ActiveState)" = active ] || fail "not active after a refused reload"
[ "$(grep -c 'store.max_size' <<<"$(journal)")" = 1 ] ||
    fail "the reason an invalid reload was refused is not in the journal's text exactly once"
sed -i '/^\[store\]$/,$d' "$root/etc/dakkio-gateway/gateway.toml"

step "the watchdog while idle"
# A short watchdog so that 15 idle seconds prove it is fed.
printf '[Service]\nWatchdogSec=6s\n' >"$root/etc/systemd/system/dakkio-gateway.service.d/watchdog.conf"
run systemctl daemon-reload
run systemctl restart dakkio-gateway || fail "restart with a short watchdog"
wait_active
restarts=$(prop NRestarts)
sleep 15
wait_active
[ "$(prop NRestarts)" = "$restarts" ] || fail "restarted while idle (watchdog?)"

step "kill -9 and restart: nothing lost"
before=$(count_points)
for i in $(seq 1 200); do
    run mosquitto_pub -h 127.0.0.1 -q 1 -t "barn/$SOURCE" -m "{\"n\": $i}"
done
run systemctl kill -s KILL dakkio-gateway
for _ in $(seq 1 200); do
    [ "$(prop NRestarts)" -gt "$restarts" ] && break
    sleep 0.1
done
wait_active
for _ in $(seq 1 200); do
    [ "$(count_points)" = "$((before + 200))" ] && break
    sleep 0.1
done
[ "$(count_points)" = "$((before + 200))" ] || fail "after kill -9: $(count_points) points, $((before + 200)) expected"

step "stop"
run systemctl stop dakkio-gateway
[ "$(prop Result)" = success ] || fail "stop: $(prop Result)"

step "start at boot, with the data kept"
poweroff
boot
wait_active
[ "$(count_points)" = "$((before + 200))" ] || fail "after a reboot: $(count_points) points"

step "remove and purge"
run dpkg -r dakkio-gateway >/dev/null || fail "dpkg -r"
run test ! -e /usr/bin/dakkio-gateway || fail "binary left after remove"
run dpkg -P dakkio-gateway >/dev/null || fail "dpkg -P"
run getent passwd dakkio-gateway >/dev/null && fail "service user left after purge"
run test ! -e /etc/dakkio-gateway || fail "config left after purge"
run test ! -e /var/lib/dakkio-gateway || fail "data left after purge"
poweroff

echo
echo "container test: all checks passed in $(($(date +%s) - started)) s"
