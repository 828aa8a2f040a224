#!/usr/bin/env bash
# Independent check of the OTLP exporter's wire format: runs the two-node export test with its
# receiver dumping every request body, then decodes the bodies with the official
# OpenTelemetry protobuf classes (PyPI `opentelemetry-proto`, in a throwaway virtualenv) and
# checks that the spans of the traced chain form one tree (4 spans, one root parent outside
# the export, every other parent an exported span). Not in CI (it installs Python packages).
#
# Usage: scripts/otlp_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet opentelemetry-proto
mkdir "$work/dump"
QUARK_OTLP_DUMP_DIR="$work/dump" cargo test -p quark --features otlp --test otlp \
    the_spans_of_a_call_chain_across_two_nodes_are_exported_as_one_tree -- --exact
"$work/venv/bin/python" - "$work/dump" <<'PY'
import collections, pathlib, sys
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

spans = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.pb")):
    req = ExportTraceServiceRequest()
    req.ParseFromString(f.read_bytes())
    for rs in req.resource_spans:
        res = {kv.key: kv.value for kv in rs.resource.attributes}
        assert res["service.name"].string_value == "quark", res
        for ss in rs.scope_spans:
            assert ss.scope.name == "quark"
            for s in ss.spans:
                spans.append((res["quark.node"].int_value, s))
by_trace = collections.defaultdict(list)
for node, s in spans:
    by_trace[s.trace_id].append((node, s))
assert len(by_trace) == 1, f"one trace expected, got {len(by_trace)}"
(trace, tree), = by_trace.items()
ids = {s.span_id for _, s in tree}
roots = [s for _, s in tree if s.parent_span_id not in ids]
assert len(tree) == 4 and len(ids) == 4, tree
assert len(roots) == 1, "one span whose parent is the caller outside the export"
for node, s in tree:
    attrs = {kv.key: kv.value for kv in s.attributes}
    assert s.name == "quark.call" and s.kind == Span.SPAN_KIND_SERVER
    assert len(s.trace_id) == 16 and len(s.span_id) == 8 and len(s.parent_span_id) == 8
    assert attrs["quark.node"].int_value == node
    assert attrs["quark.message"].string_value.endswith("Chain")
    assert s.status.code == Status.STATUS_CODE_UNSET
    assert 0 < s.start_time_unix_nano <= s.end_time_unix_nano
    print(f"node {node} shard {attrs['quark.shard'].int_value} {attrs['quark.actor'].string_value}: "
          f"span {s.span_id.hex()} parent {s.parent_span_id.hex()}")
print(f"OK: {len(tree)} spans of trace {trace.hex()} decoded with the official OTLP classes form one tree")
PY
