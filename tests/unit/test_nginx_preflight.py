"""A PIN put in a key reference by mistake must be refused without being shown.

Runs the nginx role's pre-flight on the controller (connection local): it
only reads variables, so no host is needed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: kmstls.nginx_pkcs11.nginx
        tasks_from: preflight
"""


def run_preflight(tmp_path, servers, *extra):
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "vars.json").write_text(json.dumps({"nginx_servers": servers}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-v",
         str(tmp_path / "play.yml"), "-e", "@" + str(tmp_path / "vars.json")] + list(extra),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("key", [
    {"token": "t", "object": "web?pin-value=SECRETPIN1"},
    {"token": "t", "object": "web", "pin": "SECRETPIN1"},
    {"token": "t", "object": "web;pin-value=SECRETPIN1"},
])
def test_a_pin_in_a_key_is_refused_and_never_printed(tmp_path, key):
    servers = [
        {"server_names": ["good"], "certificate": "/etc/good.crt", "key": {"token": "t", "object": "a"}},
        {"server_names": ["bad"], "certificate": "/etc/bad.crt", "key": key},
    ]
    result = run_preflight(tmp_path, servers)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "nginx_servers[1].key" in output
    assert "PIN" in output
    assert "SECRETPIN1" not in output


def test_good_server_blocks_pass_the_key_checks(tmp_path):
    servers = [{"server_names": ["good"], "certificate": "/etc/good.crt",
                "key": {"token": "t", "object": "a", "id": "01"}}]
    result = run_preflight(tmp_path, servers)
    output = result.stdout + result.stderr
    # Checks further down may need a host; the key checks themselves pass.
    assert "Check that every key reference can be built and carries no PIN" in output
    assert "nginx_servers[0].key" not in output


def test_an_object_id_too_long_for_old_libp11_is_refused(tmp_path):
    servers = [{"server_names": ["x"], "certificate": "/etc/x.crt",
                "key": {"token": "t", "object": "a", "id": "ab" * 101}}]
    (tmp_path / "extra.json").write_text(json.dumps({"nginx_libp11_version": "0.4.12"}))
    result = run_preflight(tmp_path, servers, "-e", "@" + str(tmp_path / "extra.json"))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "nginx_servers[0].key.id is 101" in output and "0.4.12" in output


def test_a_block_with_both_a_body_and_a_backend_is_refused(tmp_path):
    servers = [{"server_names": ["x"], "certificate": "/etc/x.crt", "key": {"token": "t", "object": "a"},
                "body": "hi", "proxy_pass": "http://127.0.0.1:8080"}]
    result = run_preflight(tmp_path, servers)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "nginx_servers[0]" in output and "body and proxy_pass" in output
