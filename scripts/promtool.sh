#!/usr/bin/env bash
# Makes sure Prometheus's `promtool` is installed and prints its path.
#
# The admin endpoint's exposition test (runtime/tests/admin_metrics.rs) runs
# `promtool check metrics` on a real scrape. This script installs Debian's `prometheus`
# package (which ships /usr/bin/promtool) when promtool is missing. It needs root for the
# install (CI and the developer machines run as root); it runs `apt-get update` first when
# the package is not known to apt yet.
#
# Usage: scripts/promtool.sh        # prints e.g. /usr/bin/promtool; exit 1 if it cannot
set -euo pipefail

find_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
    elif [ -x /usr/bin/promtool ]; then
        echo /usr/bin/promtool
    else
        return 1
    fi
}

if path=$(find_promtool); then
    echo "$path"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "promtool.sh: promtool is missing and installing Debian's prometheus package needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show prometheus >/dev/null 2>&1; then
    apt-get update -qq >&2
fi
# --no-install-recommends: only promtool is needed, not the server's recommended extras.
# policy-rc.d keeps the package's post-install from starting a Prometheus server.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
status=0
apt-get install -y -qq --no-install-recommends prometheus >&2 || status=$?
if [ "$created_policy" = 1 ]; then
    rm -f "$policy"
fi
if [ "$status" -ne 0 ]; then
    echo "promtool.sh: apt-get install prometheus failed (exit $status)" >&2
    exit 1
fi

if path=$(find_promtool); then
    echo "$path"
else
    echo "promtool.sh: the prometheus package is installed but promtool was not found" >&2
    exit 1
fi
