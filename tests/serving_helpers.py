"""Helpers of the serving tests: a live server on 127.0.0.1 (uvicorn in a thread of the test process), ``allmrec predict``."""

from __future__ import annotations

import socket
import threading
import time

from typer.testing import CliRunner

ARGS = ["--top-k", "4", "--shard-size", "7"]  # the predict tests' options: 40 users in 6 shards


def predict_cli(artifact, out, *extra):
    """``allmrec predict ARTIFACT --out OUT`` in this process; returns its output."""
    from allmrec.cli import app

    result = CliRunner().invoke(app, ["predict", str(artifact), "--out", str(out), *ARGS, *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``allmrec.serving.app`` under uvicorn in a thread of the test process, on 127.0.0.1."""

    def __init__(self, artifact, model=None, **options) -> None:
        import uvicorn

        from allmrec.serving.app import ServeOptions, create_app

        self.app = create_app(artifact, ServeOptions(**options), model=model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"server at {self.url} not ready: {self.app.state.allmrec.error}")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
