"""Run llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) for tests.

``llama_server`` starts the server as a subprocess on a local port, waits until
``GET /v1/models`` answers, yields the base URL (``http://127.0.0.1:PORT``; the OpenAI API is
under ``/v1``) and stops the server on exit. Nothing here imports ``llama_cpp``: the server
runs in its own interpreter (``sys.executable`` unless told otherwise), so llama-cpp-python
must be installed there (the ``real-engine`` extra).

The server handles one request at a time: it holds a lock around its single model, so
concurrent requests queue and are served one after another. By default it also cuts a
streaming response short (ending it with ``[DONE]``) as soon as another request is waiting;
``llama_server`` turns that off (``--interrupt_requests False``) unless asked otherwise, so
that concurrent streams each run to completion.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from hermes.testing.ports import free_port

__all__ = ["DEFAULT_MODEL_ALIAS", "LlamaServerError", "llama_server"]

DEFAULT_MODEL_ALIAS = "tiny-llama"
"""The model name the server reports in ``/v1/models`` (it accepts any name in requests)."""


class LlamaServerError(RuntimeError):
    """The server exited or did not become ready in time."""


def _tail(log: IO[bytes], limit: int = 4000) -> str:
    log.flush()
    log.seek(0, os.SEEK_END)
    size = log.tell()
    log.seek(max(0, size - limit))
    return log.read().decode("utf-8", errors="replace")


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2.0) as response:
            status: int = response.status
            response.read()
            return status == 200
    except (OSError, http.client.HTTPException):
        return False


@contextlib.contextmanager
def llama_server(
    model_path: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    n_ctx: int = 512,
    n_threads: int = 1,
    n_batch: int = 512,
    chat_format: str | None = "chatml",
    model_alias: str = DEFAULT_MODEL_ALIAS,
    interrupt_requests: bool = False,
    verbose: bool = False,
    extra_args: Sequence[str] = (),
    python: str | None = None,
    startup_timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Serve ``model_path`` with ``python -m llama_cpp.server``; yield its base URL.

    ``chat_format=None`` uses the chat template stored in the GGUF file; the default
    ``"chatml"`` uses llama-cpp-python's built-in ChatML formatter. The server's stdout and
    stderr go to a temporary file whose tail is put in the ``LlamaServerError`` raised when the
    server exits early or is not ready within ``startup_timeout`` seconds.
    """
    if port is None:
        port = free_port(host)
    base_url = f"http://{host}:{port}"
    command = [
        python or sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        model_alias,
        "--host",
        host,
        "--port",
        str(port),
        *_engine_args(n_ctx, n_batch, n_threads, interrupt_requests, verbose),
    ]
    if chat_format is not None:
        command += ["--chat_format", chat_format]
    command += list(extra_args)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("OMP_NUM_THREADS", str(n_threads))

    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env
        )
        try:
            _wait_until_ready(process, base_url, command, log, startup_timeout)
            yield base_url
        finally:
            _stop(process)


def _engine_args(
    n_ctx: int, n_batch: int, n_threads: int, interrupt_requests: bool, verbose: bool
) -> list[str]:
    """The server's context, batch and thread options: CPU only, one thread count for both
    prompt and generation."""
    return [
        "--n_ctx",
        str(n_ctx),
        "--n_batch",
        str(min(n_batch, n_ctx)),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        "--n_gpu_layers",
        "0",
        "--interrupt_requests",
        str(interrupt_requests),
        "--verbose",
        str(verbose),
    ]


def _wait_until_ready(
    process: subprocess.Popen[bytes],
    base_url: str,
    command: list[str],
    log: IO[bytes],
    startup_timeout: float,
) -> None:
    """Poll until the server answers; raise with the output's tail if it exits or times out."""
    deadline = time.monotonic() + startup_timeout
    while not _ready(base_url):
        code = process.poll()
        if code is not None:
            raise LlamaServerError(
                f"llama_cpp.server exited with code {code} before it was ready; "
                f"command: {' '.join(command)}\n--- output tail ---\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise LlamaServerError(
                f"llama_cpp.server not ready at {base_url} after {startup_timeout:g} s; "
                f"command: {' '.join(command)}\n--- output tail ---\n{_tail(log)}"
            )
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
