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


def run_preflight(tmp_path, servers):
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "vars.json").write_text(json.dumps({"nginx_servers": servers}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-v",
         str(tmp_path / "play.yml"), "-e", "@" + str(tmp_path / "vars.json")],
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
