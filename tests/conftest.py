"""Fixtures shared by the unit, integration and reliability suites: a real ``redis-server`` on a free port,
and (plugin ``cluster_fixtures``) the session's Ray cluster, artifact and Serve application.

It runs with ``appendonly yes`` and ``appendfsync always`` (the durable setting the README asks for)
in a temporary folder. Without the binary the tests that need it skip on a user's machine and fail
in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from distilrec.ports import free_port

# The session's Ray cluster, trained artifact and Serve application (tests/cluster_fixtures.py), shared
# by tests/integration and tests/reliability.
pytest_plugins = ["cluster_fixtures"]


class RedisServer:
    """A ``redis-server`` child process; :meth:`restart` stops it (SIGTERM) and starts it again on
    the same port and data folder."""

    def __init__(self, binary: str, folder: str, password: str | None = None):
        self.binary, self.folder, self.password = binary, folder, password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0, with_password: bool = True) -> str:
        auth = f":{self.password}@" if self.password and with_password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.folder,
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("redis-server is missing in CI (.ci/run installs it with apt-get)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.fail("redis-py is missing (a dependency of distilrec)")
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A password-protected, durable redis-server for the session."""
    server = RedisServer(_redis_binary(), str(tmp_path_factory.mktemp("redis")), password="test-pass")
    server.start()
    yield server
    server.stop()
