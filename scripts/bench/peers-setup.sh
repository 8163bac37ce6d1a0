#!/usr/bin/env bash
# The routers `engine-bench --peers` runs beside orchestratord, from PyPI into a
# cached venv (never into the repo): vllm-router (vLLM's router) and
# sglang-router, whose `smg` is SGLang's gateway. Both ship their Rust binary in
# the wheel. Idempotent; prints the venv's path. Not a CI step: the benchmark is a
# command (README, Performance).
set -euo pipefail

VLLM_ROUTER_VERSION="0.1.17"
SGLANG_ROUTER_VERSION="0.3.2"
venv="${ORCH_PEERS_VENV:-${HOME:-/root}/.cache/orchqueue/peers-venv}"

log() { echo "[peers-setup] $*" >&2; }
installed() {
    [ -x "$venv/bin/pip" ] && "$venv/bin/pip" freeze 2>/dev/null \
        | grep -qx "$1==$2"
}
if installed vllm-router "$VLLM_ROUTER_VERSION" && installed sglang-router "$SGLANG_ROUTER_VERSION"; then
    log "routers cached in $venv"
else
    log "installing vllm-router==$VLLM_ROUTER_VERSION and sglang-router==$SGLANG_ROUTER_VERSION (PyPI) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "vllm-router==$VLLM_ROUTER_VERSION" "sglang-router==$SGLANG_ROUTER_VERSION"
fi
"$venv/bin/vllm-router" --help >/dev/null
"$venv/bin/smg" launch --help >/dev/null
echo "$venv"
