"""The example inventories must parse and name only variables the roles know.

A misspelt variable in an inventory is silently ignored by Ansible; these
examples are what users copy, so every name is checked against the roles'
argument specs.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = ["demo", "production"]
# Names that belong to Ansible, the playbooks or the examples' own vault.
PLAYBOOK_OPTIONS = {"kmstls_mirror_url", "kmstls_image_build", "kmstls_serial",
                    "kmstls_max_fail_percentage", "kmstls_bundle"}


def known_options():
    names = {}
    for spec in ROOT.glob("roles/*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            names.update(entry.get("options", {}))
    return names


def group_vars(name):
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i",
         str(ROOT / "inventory" / name), "--list"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    inventory = json.loads(listed.stdout)
    hosts = inventory["kmstls_nginx"]["hosts"]
    assert hosts, "no host in group kmstls_nginx"
    return inventory["_meta"]["hostvars"][hosts[0]]


@pytest.mark.parametrize("name", INVENTORIES)
def test_inventory_variables_are_known_to_the_roles(name):
    options = known_options()
    unknown = [var for var in group_vars(name)
               if not (var in options or var in PLAYBOOK_OPTIONS or var.startswith("ansible_"))]
    assert not unknown, "inventory/%s sets variables no role knows: %s" % (name, unknown)


@pytest.mark.parametrize("name", INVENTORIES)
def test_inventory_server_blocks_use_known_keys(name):
    server_keys = set(known_options()["nginx_servers"]["options"])
    for index, server in enumerate(group_vars(name)["nginx_servers"]):
        assert set(server) <= server_keys, "nginx_servers[%d]: %s" % (index, set(server) - server_keys)
        assert "pin" not in json.dumps(server["key"]).lower()


def test_production_example_holds_no_secret_values():
    text = "\n".join(p.read_text() for p in (ROOT / "inventory" / "production").rglob("*")
                     if p.is_file())
    assert "BEGIN PRIVATE KEY" not in text and '"private_key"' not in text
    variables = group_vars("production")
    assert variables["pkcs11_backend"] == "kmsp11"
    # The PIN comes from a vault variable; the inline fallback is not a secret.
    assert "vault_kmstls_pkcs11_user_pin" in (ROOT / "inventory/production/group_vars/kmstls_nginx/main.yml").read_text()
