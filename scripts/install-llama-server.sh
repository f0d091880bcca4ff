#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server into a venv ($1, relative to the repo root; default .venv),
# idempotently: a no-op when the pinned version is already importable.
# The package has no prebuilt CPU wheel on PyPI, so it compiles (~5 min on 2 cores): the wheel is
# built once into a cache dir and reused. GGML_NATIVE=OFF because the native build segfaults on our CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv}"
VERSION="0.3.36"
CACHE="${LLAMALAB_WHEEL_CACHE:-$HOME/.cache/llamalab/wheels}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "install-llama-server: no Python at $PY (create the venv first, e.g. make install)" >&2
    exit 1
fi

installed="$("$PY" -c 'import importlib.metadata as m, llama_cpp.server; print(m.version("llama-cpp-python"))' \
    2>/dev/null || true)"
if [ "$installed" = "$VERSION" ]; then
    exit 0
fi

mkdir -p "$CACHE"
wheel="$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
if [ -z "$wheel" ]; then
    echo "install-llama-server: building llama-cpp-python $VERSION (takes ~5 minutes, done once)" >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF" "$PY" -m pip wheel --quiet --no-deps --no-binary llama-cpp-python \
        --wheel-dir "$CACHE" "llama-cpp-python==$VERSION"
    wheel="$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl | head -n 1)"
fi

# The constraints keep the project's pinned packages (pydantic, numpy, ...) from being moved by the server's deps.
constraints=()
if [ -f constraints.txt ]; then
    constraints=(-c constraints.txt)
fi
"$PY" -m pip install --quiet "${constraints[@]}" "${wheel}[server]"
"$PY" -c "import llama_cpp.server"
echo "install-llama-server: llama-cpp-python $VERSION installed in $VENV" >&2

# llama.cpp's HF-to-GGUF converter, from the same version's source (for `llamalab export --gguf`); kept in the
# llamalab cache, so only the first run downloads the source package.
"$PY" -m llamalab.export --install-converter >&2
