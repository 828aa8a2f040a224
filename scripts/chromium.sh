#!/usr/bin/env bash
# Makes sure a headless-capable Chromium is installed and prints its path.
#
# The dashboard test (runtime/tests/admin_dashboard.rs) loads the admin endpoint's page in a
# real headless Chromium and checks the DOM it renders. This script installs Debian's
# `chromium` package when no Chromium binary is found. It needs root for the install (CI and
# the developer machines run as root); it runs `apt-get update` first when the package is not
# known to apt yet.
#
# Usage: scripts/chromium.sh        # prints e.g. /usr/bin/chromium; exit 1 if it cannot
set -euo pipefail

find_chromium() {
    for c in chromium chromium-browser; do
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    if [ -x /usr/bin/chromium ]; then
        echo /usr/bin/chromium
        return 0
    fi
    return 1
}

if path=$(find_chromium); then
    echo "$path"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "chromium.sh: chromium is missing and installing Debian's chromium package needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show chromium >/dev/null 2>&1; then
    apt-get update -qq >&2
fi
# --no-install-recommends: the headless browser only (no desktop integration, no extra fonts
# beyond its dependencies).
if ! apt-get install -y -qq --no-install-recommends chromium >&2; then
    echo "chromium.sh: apt-get install chromium failed" >&2
    exit 1
fi

if path=$(find_chromium); then
    echo "$path"
else
    echo "chromium.sh: the chromium package is installed but no chromium binary was found" >&2
    exit 1
fi
