"""Start-up of the embedded servers (issue 10, item 12): readiness is the protocol
answering, not a port or a fixed sleep; a server that cannot start gives one clear
error naming it, with its log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import infra


class _Mute(infra.NatsServer):
    """Listens on its port but never speaks NATS."""

    def command(self) -> list[str]:
        code = (
            "import socket, time; s = socket.socket(); "
            f"s.bind(('127.0.0.1', {self.port})); s.listen(); time.sleep(60)"
        )
        return [sys.executable, "-c", code]


def test_a_listening_but_silent_server_is_not_ready(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(infra, "READY_TIMEOUT_S", 2.0)
    server = _Mute(tmp_path / "nats")
    try:
        with pytest.raises(infra.StartError, match="did not answer"):
            server.start()
    finally:
        server.stop(timeout=2)


def test_a_server_that_exits_names_itself_and_shows_its_log(tmp_path: Path):
    busy = infra.RedisServer(tmp_path / "a")
    busy.start()
    clash = infra.RedisServer(tmp_path / "b", port=busy.port)  # the port is taken
    try:
        with pytest.raises(infra.StartError) as err:
            clash.start()
        assert "redis" in str(err.value)  # names the server (and shows its log)
    finally:
        clash.stop()
        busy.stop()


def test_infrastructure_that_cannot_start_stops_the_session_with_one_message(tmp_path: Path):
    env = {**os.environ, "MESH_READY_TIMEOUT_S": "0.001"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/cache/test_cache.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 3, text[-2000:]
    assert "test infrastructure did not start: nats did not listen" in text
    assert "no tests ran" in text and " error" not in text  # not one error per test
