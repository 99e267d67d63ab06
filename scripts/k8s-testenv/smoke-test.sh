#!/usr/bin/env bash
# Smoke test of scripts/k8s-testenv.sh with kubectl: starts an environment in a temporary
# directory, checks namespaces, a CRD with a status subresource and printer columns (status patch,
# 409 Conflict on a stale resourceVersion), a Namespace, a Node and a Pod, then stops it and
# checks that no process is left. Needs kubectl on PATH. Usage: smoke-test.sh [DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v kubectl >/dev/null 2>&1 || { echo "smoke-test: kubectl is needed" >&2; exit 1; }
dir="${1:-}"
temporary=false
if [ -z "$dir" ]; then
  dir="$(mktemp -d "${TMPDIR:-/tmp}/k8s-testenv-smoke.XXXXXX")"
  temporary=true
fi

stop() {
  local status=$?
  bash "$here/k8s-testenv.sh" stop "$dir" || status=1
  if [ "$status" = 0 ] && [ "$temporary" = true ]; then rm -rf "$dir"; fi
  exit "$status"
}
trap stop EXIT
bash "$here/k8s-testenv.sh" start "$dir" >/dev/null
k() { kubectl --kubeconfig "$dir/kubeconfig" "$@"; }
step() { echo "== $*"; }

step "kubectl get ns"
k get ns

step "CRD with a status subresource and printer columns"
k apply -f - <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.spiderpool.test
spec:
  group: smoke.spiderpool.test
  scope: Cluster
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Phase, type: string, jsonPath: .status.phase}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, properties: {phase: {type: string}}}
YAML
k wait --for=condition=Established --timeout=60s crd/widgets.smoke.spiderpool.test
k apply -f - <<'YAML'
apiVersion: smoke.spiderpool.test/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
YAML
k patch widget w1 --subresource=status --type=merge -p '{"status":{"phase":"Ready"}}'
k patch widget w1 --type=merge -p '{"status":{"phase":"Ignored"}}' # the main resource drops status
k get widget w1
phase="$(k get widget w1 -o jsonpath='{.status.phase}')"
[ "$phase" = Ready ] || { echo "smoke-test: status.phase is '$phase', not Ready" >&2; exit 1; }

step "stale resourceVersion -> 409 Conflict"
stale="$(k get widget w1 -o jsonpath='{.metadata.resourceVersion}')"
k patch widget w1 --type=merge -p '{"spec":{"size":4}}' >/dev/null
out="$(k replace -f - 2>&1 <<YAML || true
apiVersion: smoke.spiderpool.test/v1
kind: Widget
metadata: {name: w1, resourceVersion: "$stale"}
spec: {size: 5}
YAML
)"
echo "$out"
[[ "$out" == *"Conflict"* || "$out" == *"the object has been modified"* ]] ||
  { echo "smoke-test: a stale update did not conflict" >&2; exit 1; }
code="$(python3 - "$dir" "$stale" <<'PY'
import json, os, ssl, sys, urllib.error, urllib.request
d, stale = sys.argv[1], sys.argv[2]
pki = os.path.join(d, "pki")
server = open(os.path.join(d, "kubeconfig")).read().split('server: "')[1].split('"')[0]
ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
body = json.dumps({"apiVersion": "smoke.spiderpool.test/v1", "kind": "Widget",
    "metadata": {"name": "w1", "resourceVersion": stale}, "spec": {"size": 6}}).encode()
req = urllib.request.Request(server + "/apis/smoke.spiderpool.test/v1/widgets/w1", data=body,
    method="PUT", headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, context=ctx)
    print("200")
except urllib.error.HTTPError as e:
    print(e.code)
PY
)"
echo "raw PUT with the stale resourceVersion: HTTP $code"
[ "$code" = 409 ] || { echo "smoke-test: expected HTTP 409" >&2; exit 1; }

step "Namespace, Node, Pod"
k create namespace smoke
k apply -f - <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}
YAML
k -n smoke apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: p1, annotations: {ipam.spidernet.io/ippool: '{"ipv4":["pool-a"]}'}}
spec:
  nodeName: node-1
  containers: [{name: c, image: registry.invalid/none:1}]
YAML
k get nodes
k -n smoke get pods -o wide
echo "smoke-test: OK"
