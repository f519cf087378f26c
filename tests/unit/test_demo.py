"""The demo command's refusals: they must come before anything is set up."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_demo(tmp_path, env_overrides, *args):
    env = dict(os.environ, **env_overrides)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")] + list(args),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_demo_without_docker_says_so_and_touches_nothing(tmp_path):
    # A PATH with python but no docker command.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    result = run_demo(tmp_path, {"PATH": str(bindir)})
    assert result.returncode == 2
    assert "docker command is not installed" in result.stderr
    assert "Nothing was changed" in result.stderr


def test_demo_with_docker_daemon_down_says_so(tmp_path):
    # A docker client that cannot reach any daemon.
    result = run_demo(tmp_path, {"DOCKER_HOST": "unix://%s/no-docker.sock" % tmp_path})
    assert result.returncode == 2
    assert "daemon does not answer" in result.stderr
    assert "Nothing was changed" in result.stderr


def test_demo_down_without_docker_fails_the_same_way(tmp_path):
    result = run_demo(tmp_path, {"DOCKER_HOST": "unix://%s/no-docker.sock" % tmp_path}, "down")
    assert result.returncode == 2
    assert "daemon does not answer" in result.stderr


def test_demo_rejects_an_unknown_action(tmp_path):
    result = run_demo(tmp_path, {}, "sideways")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_demo_refuses_a_port_that_is_not_a_number(tmp_path):
    result = run_demo(tmp_path, {"KMSTLS_DEMO_PORT": "abc"})
    assert result.returncode == 2
    assert "KMSTLS_DEMO_PORT" in result.stderr and "Traceback" not in result.stderr
