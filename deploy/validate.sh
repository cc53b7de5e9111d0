#!/usr/bin/env bash
# Engine-free validation of the deployment files (no Docker engine, no network):
#   1. docker-compose.yml resolves with `docker-compose config` (Debian's docker-compose,
#      which needs no engine) against .env.example, for the default and every profile;
#   2. a missing .env is refused with a clear message (no secret has a default);
#   3. both HAProxy configs pass `haproxy -c` (run in an empty network namespace so their
#      hostnames are never looked up on a real network).
# Usage: deploy/validate.sh [--no-install] [--out DIR]
#   --no-install  never apt-get install haproxy when missing (skip that check instead)
#   --out DIR     also write the resolved compose config of each profile to DIR
# Exit status: 0 valid, 1 invalid, 2 docker-compose missing.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
out=""
while (($#)); do
  case "$1" in
    --no-install) install=0 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: $0 [--no-install] [--out DIR]" >&2; exit 64 ;;
  esac
  shift
done

if ! command -v docker-compose >/dev/null; then
  echo "validate: docker-compose missing (apt-get install docker-compose)" >&2
  exit 2
fi

# A clean environment: the shell's own COUCHDB_*/WALLABY_* must not mask .env.example.
compose() {
  env -i PATH="$PATH" HOME="${HOME:-/root}" \
    docker-compose --project-directory . --env-file .env.example -f docker-compose.yml "$@"
}

profiles=("" cluster)
for profile in "${profiles[@]}"; do
  args=()
  [[ -n "$profile" ]] && args=(--profile "$profile")
  label="${profile:-default}"
  compose "${args[@]}" config -q
  if [[ -n "$out" ]]; then
    mkdir -p "$out"
    compose "${args[@]}" config >"$out/compose-$label.yml"
  fi
  echo "ok: docker-compose config (profile: $label)"
done

# Without an .env every secret must be refused, not defaulted.
empty_env="$(mktemp)"
trap 'rm -f "$empty_env"' EXIT
if env -i PATH="$PATH" HOME="${HOME:-/root}" docker-compose --project-directory . \
     --env-file "$empty_env" -f docker-compose.yml config -q 2>/dev/null; then
  echo "FAIL: docker-compose.yml resolves without .env: a secret has a default" >&2
  exit 1
fi
echo "ok: no .env -> refused (secrets have no defaults)"

if ! command -v haproxy >/dev/null && ((install)) && [[ $(id -u) == 0 ]] \
   && command -v apt-get >/dev/null; then
  echo "validate: installing haproxy for the config check"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy \
    >/dev/null 2>&1 \
  || { apt-get update -qq >/dev/null 2>&1 \
       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            haproxy >/dev/null 2>&1; } || true
fi
if command -v haproxy >/dev/null; then
  for cfg in deploy/haproxy.cfg deploy/haproxy-couchdb.cfg; do
    if unshare -n true 2>/dev/null; then
      # No network at all inside: hostnames fail to resolve locally (init-addr none).
      unshare -n haproxy -c -q -f "$cfg"
    else
      # No namespaces here: check a copy whose hostnames are loopback addresses.
      tmp="$(mktemp)"
      sed -E 's/^(\s*server\s+\S+\s+)[A-Za-z0-9.-]+:/\1127.0.0.1:/' "$cfg" >"$tmp"
      haproxy -c -q -f "$tmp"
      rm -f "$tmp"
    fi
    echo "ok: haproxy -c $cfg"
  done
else
  echo "skip: haproxy not installed (apt-get install haproxy to check deploy/haproxy*.cfg)"
fi
echo "deployment files valid"
