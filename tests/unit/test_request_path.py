"""The request path of a local Ray instance (``services.run.local_serve_env``, ``DISTILREC_REQUEST_PATH``,
``distilrec serve|demo --request-path``) and the clean-up of stale Ray Serve HAProxy processes before a
local start (``services.run.stale_haproxy``, ``clean_stale_haproxy``), without Ray: stand-ins named
``haproxy`` and ``raylet`` play the processes that Ray Serve and Ray start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from services import run

FAST = {**run.THROUGHPUT_OPTIMIZED_ENV, "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30", "DISTILREC_FREEZE_HEAP": "1"}


def _without_ports(env: dict[str, str]) -> dict[str, str]:
    ports = [env.pop(k) for k in ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")]
    assert all(p.isdigit() for p in ports)  # free ports: two local instances side by side
    return env


def test_fast_path_is_the_default_where_there_is_haproxy(monkeypatch, capsys):
    monkeypatch.setattr(run, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    monkeypatch.delenv(run.REQUEST_PATH_ENV, raising=False)
    assert _without_ports(run.local_serve_env()) == FAST
    for value in ("fast", " fast ", ""):
        monkeypatch.setenv(run.REQUEST_PATH_ENV, value)
        assert _without_ports(run.local_serve_env()) == FAST
    assert capsys.readouterr().err == ""


def test_fast_path_without_haproxy_keeps_serves_proxy_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(run, "haproxy_binary", lambda: None)
    monkeypatch.setattr(run, "_warned_no_haproxy", False)
    monkeypatch.delenv(run.REQUEST_PATH_ENV, raising=False)
    expected = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
                "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30", "DISTILREC_FREEZE_HEAP": "1"}
    assert run.local_serve_env() == expected
    assert run.local_serve_env() == expected
    err = capsys.readouterr().err
    assert err.count("no HAProxy binary") == 1 and "Serve's Python proxy" in err


def test_ray_default_sets_nothing_of_the_fast_path(monkeypatch):
    monkeypatch.setattr(run, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    monkeypatch.setenv(run.REQUEST_PATH_ENV, "ray-default")
    assert run.local_serve_env() == {"RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}  # one node, one proxy


def test_an_unknown_request_path_is_an_error_naming_it(monkeypatch):
    for value in ("1", "haproxy", "FAST"):
        monkeypatch.setenv(run.REQUEST_PATH_ENV, value)
        with pytest.raises(ValueError, match=f"DISTILREC_REQUEST_PATH='{value}'.*fast, ray-default"):
            run.local_serve_env()


def test_the_serve_and_demo_commands_take_request_path(monkeypatch, tmp_path, capsys):
    from distilrec.cli import main

    monkeypatch.setenv(run.REQUEST_PATH_ENV, "fast")  # restored after the test
    assert main(["serve", "--model", str(tmp_path / "none"), "--request-path", "ray-default"]) == 2
    assert os.environ[run.REQUEST_PATH_ENV] == "ray-default"
    monkeypatch.setenv(run.REQUEST_PATH_ENV, "nonsense")
    assert main(["serve", "--model", str(tmp_path / "none")]) == 2
    assert "DISTILREC_REQUEST_PATH='nonsense'" in capsys.readouterr().err
    for cmd in (["serve", "--model", "x"], ["demo"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--request-path", "haproxy"])
        assert "invalid choice: 'haproxy'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ stale HAProxy processes

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="/proc: Linux only")

# Listens on a free port of 127.0.0.1, prints "pid port", waits; STUBBORN=1 ignores SIGTERM.
_HAPROXY = f"""#!{sys.executable}
import os, signal, socket, sys, time
if os.environ.get("STUBBORN"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(os.getpid(), s.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.fixture
def serve_dirs(tmp_path, monkeypatch):
    """Ray Serve's HAProxy config location moved into ``tmp_path`` (only stand-ins match it), a stand-in
    ``haproxy`` and ``raylet``, and the processes a test starts, stopped afterwards."""
    base = tmp_path / "haproxy-serve"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(base / "haproxy.cfg"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("haproxy", _HAPROXY), ("raylet", f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")):
        (bin_dir / name).write_text(textwrap.dedent(text))
        (bin_dir / name).chmod(0o755)
    procs: list[subprocess.Popen] = []
    pids: list[int] = []
    yield {"base": base, "bin": bin_dir, "procs": procs, "pids": pids}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        p.kill()
        p.wait(10)


def _config(dirs, node_id: str | None = None) -> str:
    cfg = dirs["base"] / (node_id or uuid.uuid4().hex + uuid.uuid4().hex[:24]) / "haproxy.cfg"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("# stand-in\n")
    return str(cfg)


def _haproxy(dirs, cfg: str, parent_title: str | None = None, stubborn: bool = False) -> tuple[int, int]:
    """Start the stand-in ``haproxy -db -f CFG`` (under a shell titled ``parent_title`` if given, as Ray
    titles its workers ``ray::...``); its (pid, port) once it listens."""
    env = {**os.environ, "STUBBORN": "1" if stubborn else ""}
    argv = [str(dirs["bin"] / "haproxy"), "-db", "-f", cfg]
    if parent_title:
        p = subprocess.Popen([parent_title, "-c", '"$@" & wait', "sh", *argv], executable="/bin/bash",
                             stdout=subprocess.PIPE, text=True, env=env)
    else:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    dirs["procs"].append(p)
    pid, port = map(int, p.stdout.readline().split())
    dirs["pids"].append(pid)
    return pid, port


@linux_only
def test_a_stale_serve_haproxy_is_found_and_stopped(serve_dirs, capsys):
    cfg = _config(serve_dirs)
    pid, port = _haproxy(serve_dirs, cfg)  # its parent (this process) is no Ray worker; its Ray node is gone
    assert [(h.pid, h.config, h.ports, h.stale) for h in run.stale_haproxy()] == [(pid, cfg, (port,), True)]
    assert run.stale_haproxy()[0].node_id == os.path.basename(os.path.dirname(cfg))
    cleaned = run.clean_stale_haproxy([port], host="127.0.0.1", grace_s=5)
    assert [h.pid for h in cleaned] == [pid] and run._gone(pid)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {pid} (ports {port})" in err[0] and "stale" in err[0]
    assert run.stale_haproxy() == [] and run.clean_stale_haproxy([port]) == []


@linux_only
def test_a_stale_haproxy_that_ignores_sigterm_is_killed(serve_dirs):
    pid, _ = _haproxy(serve_dirs, _config(serve_dirs), stubborn=True)
    t0 = time.monotonic()
    assert [h.pid for h in run.clean_stale_haproxy(grace_s=0.3)] == [pid] and run._gone(pid)
    assert time.monotonic() - t0 < 5


@linux_only
def test_a_running_serves_haproxy_is_left_alone_and_named_when_it_holds_the_port(serve_dirs):
    node = uuid.uuid4().hex + uuid.uuid4().hex[:24]
    pid, port = _haproxy(serve_dirs, _config(serve_dirs, node), parent_title="ray::HAProxyManager")
    (h,) = run.serve_haproxies()
    assert (h.pid, h.node_id, h.ports, h.stale) == (pid, node, (port,), False) and run.stale_haproxy() == []
    with pytest.raises(run.PortInUseError, match=f"port {port} .*pid {pid}, the HAProxy of a running Ray Serve"):
        run.clean_stale_haproxy([port])
    assert not run._gone(pid)


@linux_only
def test_an_orphan_whose_ray_node_still_runs_is_not_stale(serve_dirs):
    node = uuid.uuid4().hex + uuid.uuid4().hex[:24]
    raylet = subprocess.Popen([str(serve_dirs["bin"] / "raylet"), f"--node_id={node}"])
    serve_dirs["procs"].append(raylet)
    pid, _ = _haproxy(serve_dirs, _config(serve_dirs, node))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and f"--node_id={node}" not in run._argv(raylet.pid):
        time.sleep(0.02)  # until the stand-in raylet has exec'd
    assert [(h.pid, h.stale) for h in run.serve_haproxies()] == [(pid, False)]
    raylet.kill()
    raylet.wait(10)
    assert [h.pid for h in run.stale_haproxy()] == [pid]


@linux_only
def test_haproxy_with_a_config_of_its_own_is_not_serves(serve_dirs, tmp_path):
    other = tmp_path / "etc" / "haproxy.cfg"
    other.parent.mkdir()
    other.write_text("# not Serve's\n")
    pid, port = _haproxy(serve_dirs, str(other))
    assert run.serve_haproxies() == []
    with pytest.raises(run.PortInUseError, match=f"port {port} is already in use by haproxy \\(pid {pid}\\)"):
        run.clean_stale_haproxy([port], host="127.0.0.1")


@linux_only
def test_a_port_held_by_another_process_fails_with_its_name_and_pid_and_a_free_one_passes(serve_dirs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(run.PortInUseError, match=f"port {port} is already in use by .* \\(pid {os.getpid()}\\)"):
            run.clean_stale_haproxy([port])
        assert run._holders(port, "0.0.0.0") and run._holders(port, "127.0.0.1")
        assert run._holders(port, "127.0.0.2") is None  # another address of the loopback: no clash
    assert run.clean_stale_haproxy([port], host="127.0.0.1") == []
