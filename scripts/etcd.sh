#!/usr/bin/env bash
# A throwaway etcd v3 server for the etcd membership tests (runtime/tests/etcd_membership.rs):
# one member on loopback, its data dir in a temp dir, fsync off. Installs Debian's `etcd-server`
# (the server), `etcd-client` (`etcdctl`, its health check) and `protobuf-compiler` (`protoc`, which the `etcd` cargo feature's build needs)
# when missing (as root: apt-get install -y, after apt-get update if needed).
#
#   eval "$(scripts/etcd.sh start)"   # prints the exports: QUARK_ETCD_DIR, QUARK_TEST_ETCD
#                                     # (the endpoint, http://127.0.0.1:PORT), QUARK_ETCD_BIN
#   scripts/etcd.sh start-tls CERTS [USER:PASSWORD]
#                                     # the same over TLS with client certificates required
#                                     # (--client-cert-auth): CERTS holds ca.crt, server.crt,
#                                     # server.key (SAN 127.0.0.1) and client.crt, client.key
#                                     # (etcdctl's); prints QUARK_ETCD_DIR and QUARK_TEST_ETCD
#                                     # (https://127.0.0.1:PORT). With USER:PASSWORD, etcd
#                                     # authentication is enabled too: that user may read and
#                                     # write /quark/ (runtime/tests/etcd_membership.rs makes the
#                                     # certificates with rcgen and runs this)
#   scripts/etcd.sh stop [dir]        # stops the server and removes its dir ($QUARK_ETCD_DIR)
#   scripts/etcd.sh install           # only installs the packages
#
# The tests read the endpoint from QUARK_TEST_ETCD; the one that restarts etcd under a cluster
# starts a private server of its own from QUARK_ETCD_BIN.
set -euo pipefail

install() {
    local need=()
    command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
    command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
    command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
    [ ${#need[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "etcd.sh: ${need[*]} missing and this is not root: install them" >&2
        exit 1
    fi
    echo "etcd.sh: installing Debian's ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y "${need[@]}" >&2; then
        apt-get update >&2
        apt-get install -y "${need[@]}" >&2
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "${1:-start}" in
install)
    install
    ;;
start)
    install
    dir=$(mktemp -d /tmp/quark-etcd.XXXXXX)
    client=$(free_port)
    peer=$(free_port)
    ETCD_UNSUPPORTED_ARCH=${ETCD_UNSUPPORTED_ARCH:-} etcd --name quark-test --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$client" \
        --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "quark-test=http://127.0.0.1:$peer" \
        --unsafe-no-fsync --log-level warn >"$dir/server.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 1 100); do
        if ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$client" endpoint health >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$client" endpoint health >&2 ||
        { cat "$dir/server.log" >&2; exit 1; }
    echo "export QUARK_ETCD_DIR=$dir"
    echo "export QUARK_TEST_ETCD=http://127.0.0.1:$client"
    echo "export QUARK_ETCD_BIN=$(command -v etcd)"
    ;;
start-tls)
    install
    certs="${2:?etcd.sh start-tls: give the certificate directory}"
    auth="${3:-}"
    dir=$(mktemp -d /tmp/quark-etcd-tls.XXXXXX)
    client=$(free_port)
    peer=$(free_port)
    ETCD_UNSUPPORTED_ARCH=${ETCD_UNSUPPORTED_ARCH:-} etcd --name quark-test --data-dir "$dir/data" \
        --listen-client-urls "https://127.0.0.1:$client" \
        --advertise-client-urls "https://127.0.0.1:$client" \
        --cert-file "$certs/server.crt" --key-file "$certs/server.key" \
        --trusted-ca-file "$certs/ca.crt" --client-cert-auth \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "quark-test=http://127.0.0.1:$peer" \
        --unsafe-no-fsync --log-level warn >"$dir/server.log" 2>&1 &
    echo $! >"$dir/pid"
    ctl() {
        ETCDCTL_API=3 etcdctl --endpoints "https://127.0.0.1:$client" --cacert "$certs/ca.crt" \
            --cert "$certs/client.crt" --key "$certs/client.key" "$@"
    }
    for _ in $(seq 1 100); do
        ctl endpoint health >/dev/null 2>&1 && break
        sleep 0.1
    done
    ctl endpoint health >&2 || { cat "$dir/server.log" >&2; exit 1; }
    if [ -n "$auth" ]; then
        user="${auth%%:*}"
        pass="${auth#*:}"
        {
            ctl user add "root:$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
            ctl user grant-role root root
            ctl user add "$user:$pass"
            ctl role add quark
            ctl role grant-permission quark --prefix=true readwrite /quark/
            ctl user grant-role "$user" quark
            ctl auth enable
        } >&2
    fi
    echo "export QUARK_ETCD_DIR=$dir"
    echo "export QUARK_TEST_ETCD=https://127.0.0.1:$client"
    ;;
stop)
    dir="${2:-${QUARK_ETCD_DIR:?etcd.sh stop: give the dir or set QUARK_ETCD_DIR}}"
    if [ -f "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: scripts/etcd.sh start | start-tls CERTS [USER:PASSWORD] | stop [dir] | install" >&2
    exit 2
    ;;
esac
