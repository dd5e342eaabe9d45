"""Running the emulator: blocking for the CLI, or in a background thread for tests.

The socket is bound before uvicorn starts, so port 0 can pick a free port and the caller learns the
real URL before the first request. uvicorn runs without signal handlers off the main thread, which
is what lets `running_emulator` live inside a test process.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from batchops.emulator.app import build_app
from batchops.emulator.config import EmulatorConfig

STARTUP_TIMEOUT = 10.0


class _QuietDroppedConnections(logging.Filter):
    """Hide uvicorn's complaint about connections the fault layer drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should return None" not in str(record.msg)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _server(config: EmulatorConfig, log_level: str) -> tuple[uvicorn.Server, Callable[[], None]]:
    app, emu = build_app(config)
    logging.getLogger("uvicorn.error").addFilter(_QuietDroppedConnections())
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            http="h11",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    return server, emu.store.close


def _server_on(
    sock: socket.socket, config: EmulatorConfig, log_level: str
) -> tuple[uvicorn.Server, Callable[[], None]]:
    """`_server`, closing the bound socket if the server cannot be made (an unusable --db)."""
    try:
        return _server(config, log_level)
    except BaseException:
        sock.close()
        raise


def serve(config: EmulatorConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted; `on_ready` receives the base URL once the port is bound."""
    sock = _bind(config.host, config.port)
    server, close = _server_on(sock, config, "warning")
    if on_ready is not None:
        on_ready(_url(sock, config.host))
    try:
        server.run(sockets=[sock])
    finally:
        close()
        sock.close()


@contextmanager
def running_emulator(config: EmulatorConfig | None = None) -> Iterator[str]:
    """Run an emulator in a background thread; yields its base URL, e.g. http://127.0.0.1:54321."""
    config = config or EmulatorConfig()
    sock = _bind(config.host, config.port)
    server, close = _server_on(sock, config, "error")
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="batchops-emulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the emulator did not start")
        time.sleep(0.005)
    try:
        yield _url(sock, config.host)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        close()
        sock.close()
