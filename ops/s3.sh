#!/usr/bin/env bash
#! Installs (once) s3s-fs, the S3-compatible server the storage tests run against, and starts one on loopback.
# s3s-fs (Rust registry) checks SigV4 signatures for real, so wrong-credential tests mean something; 0.14.1
# is the last release that builds with rustc 1.95 (0.16+ need 1.96). Bucket = a folder under its root.
#
#   source ops/env.sh && source ops/s3.sh   # install if missing; exports TRESNET_S3S_FS (the binary)
#   tresnet_s3_start                        # start one: exports TRESNET_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
#                                           # AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP,
#                                           # TRESNET_S3_ROOT (bucket "tresnet" exists), TRESNET_S3_PID
#   tresnet_s3_stop                         # stop it and remove its root
#   bash ops/s3.sh serve                    # or: install, print the exports, serve in the foreground
#
# The Rust tests (common/tests/storage_s3.rs) start their own servers from TRESNET_S3S_FS.
_tresnet_s3s_version="0.14.1"
export TRESNET_CACHE_DIR="${TRESNET_CACHE_DIR:-$HOME/.cache/tresnet-eval}"
export TRESNET_S3S_FS="$TRESNET_CACHE_DIR/tools/bin/s3s-fs"

if ! "$TRESNET_S3S_FS" --version 2>/dev/null | grep -qx "s3s-fs $_tresnet_s3s_version"; then
  echo "tresnet-eval: installing s3s-fs $_tresnet_s3s_version into $TRESNET_CACHE_DIR/tools (about 2 minutes)" >&2
  # Unset CARGO_TARGET_DIR so cargo builds in a throw-away folder, not the project's target dir.
  env -u CARGO_TARGET_DIR cargo install s3s-fs --version "$_tresnet_s3s_version" --features binary --locked \
    --root "$TRESNET_CACHE_DIR/tools" >&2 || return 1 2>/dev/null || exit 1
fi

tresnet_s3_start() {
  local port key secret root
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  key="tresnet-$RANDOM$RANDOM"
  secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  root="$(mktemp -d "${TMPDIR:-/tmp}/tresnet-s3.XXXXXX")"
  mkdir -p "$root/tresnet"
  "$TRESNET_S3S_FS" --host 127.0.0.1 --port "$port" --access-key "$key" --secret-key "$secret" "$root" \
    >"$root.log" 2>&1 &
  export TRESNET_S3_PID=$!
  export TRESNET_S3_ROOT="$root"
  export TRESNET_S3_ENDPOINT="http://127.0.0.1:$port"
  export AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret" AWS_REGION="us-east-1" AWS_ALLOW_HTTP="true"
  export AWS_ENDPOINT="$TRESNET_S3_ENDPOINT"
  local tries=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ] || ! kill -0 "$TRESNET_S3_PID" 2>/dev/null; then
      echo "tresnet-eval: s3s-fs did not start on port $port; its log:" >&2
      cat "$root.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "tresnet-eval: s3s-fs on $TRESNET_S3_ENDPOINT (pid $TRESNET_S3_PID, root $root, bucket s3://tresnet)" >&2
}

tresnet_s3_stop() {
  if [ -n "${TRESNET_S3_PID:-}" ]; then
    kill "$TRESNET_S3_PID" 2>/dev/null || true
    wait "$TRESNET_S3_PID" 2>/dev/null || true
  fi
  if [ -n "${TRESNET_S3_ROOT:-}" ]; then
    rm -rf "$TRESNET_S3_ROOT" "$TRESNET_S3_ROOT.log"
  fi
  unset TRESNET_S3_PID TRESNET_S3_ROOT TRESNET_S3_ENDPOINT AWS_ENDPOINT
}

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "${1:-}" = "serve" ]; then
  set -euo pipefail
  tresnet_s3_start
  trap tresnet_s3_stop EXIT
  for var in TRESNET_S3_ENDPOINT AWS_ENDPOINT AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_ALLOW_HTTP; do
    echo "export $var=${!var}"
  done
  wait "$TRESNET_S3_PID"
fi
unset _tresnet_s3s_version
