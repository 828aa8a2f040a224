#!/bin/sh
# Container entrypoint of `quark serve` (docs/DEPLOY.md): renders the node's configuration
# from a template and the pod's identity, then runs the node in the foreground (SIGTERM from
# the kubelet reaches it directly: it drains and stops).
#
# Template placeholders (every occurrence is replaced):
#   @NODE_ID@      QUARK_NODE_ID, else the StatefulSet ordinal of the host name plus one
#                  (pod quark-0 is node 1): the same pod, and so the same volume, is always
#                  the same node id;
#   @POD_IP@       POD_IP (the downward API's status.podIP): the address the node advertises;
#   @PORT@         QUARK_PORT (default 7100), @ADMIN_PORT@ QUARK_ADMIN_PORT (default 9100);
#   @ZONE@         QUARK_ZONE (default empty);
#   @APP_VERSION@  QUARK_APP_VERSION (default empty).
# QUARK_TEMPLATE (default /etc/quark/quark.toml.in) and QUARK_CONFIG (default
# /tmp/quark.toml) name the files; QUARK_BIN the binary (default: quark on the PATH).
# QUARK_RENDER_ONLY=1 prints the rendered file and exits (scripts/deploy/check.sh uses it).
set -eu

template=${QUARK_TEMPLATE:-/etc/quark/quark.toml.in}
out=${QUARK_CONFIG:-/tmp/quark.toml}
host=${QUARK_HOSTNAME:-$(hostname)}

if [ -n "${QUARK_NODE_ID:-}" ]; then
    node_id=$QUARK_NODE_ID
else
    ordinal=${host##*-}
    case $ordinal in
        '' | *[!0-9]*)
            echo "quark-entrypoint: cannot take a node id from the host name '$host'" \
                "(expected NAME-ORDINAL, as in a StatefulSet); set QUARK_NODE_ID" >&2
            exit 2
            ;;
    esac
    node_id=$((ordinal + 1))
fi
if [ -z "${POD_IP:-}" ]; then
    echo "quark-entrypoint: POD_IP is not set (give it the downward API's status.podIP)" >&2
    exit 2
fi
if [ ! -r "$template" ]; then
    echo "quark-entrypoint: cannot read the configuration template $template" >&2
    exit 2
fi

sed -e "s|@NODE_ID@|$node_id|g" \
    -e "s|@POD_IP@|$POD_IP|g" \
    -e "s|@PORT@|${QUARK_PORT:-7100}|g" \
    -e "s|@ADMIN_PORT@|${QUARK_ADMIN_PORT:-9100}|g" \
    -e "s|@ZONE@|${QUARK_ZONE:-}|g" \
    -e "s|@APP_VERSION@|${QUARK_APP_VERSION:-}|g" \
    "$template" >"$out"

if [ "${QUARK_RENDER_ONLY:-0}" = 1 ]; then
    cat "$out"
    exit 0
fi
echo "quark-entrypoint: node $node_id ($host, $POD_IP), configuration $out" >&2
exec "${QUARK_BIN:-quark}" serve --config "$out" --log-format "${QUARK_LOG_FORMAT:-json}"
