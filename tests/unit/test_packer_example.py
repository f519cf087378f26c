"""The example Packer template must point at what the collection has.

Packer cannot build here (no cloud), so these tests check what can go stale
without anyone noticing: the playbook and vars files it names exist, every
variable it sets is one a role documents, and the hosts land in the group
the playbooks apply to. Where a Packer with built-in plugins is installed
(Debian's packer 1.6), `packer validate` checks the template as well.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "packer"
TEMPLATE = EXAMPLE / "kmstls-nginx.pkr.hcl"
SHARED = {"kmstls_mirror_url", "kmstls_image_build"}
# Connection variables of Ansible itself that an image build may need.
ANSIBLE_VARIABLES = {"ansible_python_interpreter", "ansible_ssh_extra_args", "ansible_become"}


def role_options():
    options = set(SHARED)
    for spec in (ROOT / "roles").glob("*/meta/argument_specs.yml"):
        options |= set(yaml.safe_load(spec.read_text())["argument_specs"]["main"]["options"])
    return options


def hcl_without_comments():
    return "\n".join(re.sub(r"\s*#.*$", "", line) for line in TEMPLATE.read_text().splitlines())


def block(text, header):
    """The body of the first block whose header matches, braces balanced."""
    match = re.search(header + r"\s*\{", text)
    assert match, "no block %s" % header
    depth, start = 0, match.end() - 1
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start + 1:index]
    raise AssertionError("block %s is not closed" % header)


def in_repository(path):
    return (EXAMPLE / path.replace("${path.root}/", "")).resolve()


def extra_arguments():
    provisioner = block(hcl_without_comments(), r'provisioner\s+"ansible"')
    listing = re.search(r"extra_arguments\s*=\s*\[(.*?)\]", provisioner, re.S).group(1)
    return re.findall(r'"([^"]*)"', listing)


def test_the_template_requires_the_ansible_plugin():
    plugins = block(hcl_without_comments(), r"packer")
    assert re.search(r'source\s*=\s*"github.com/hashicorp/ansible"', plugins)


def test_the_provisioner_runs_site_yml_on_the_playbooks_group():
    provisioner = block(hcl_without_comments(), r'provisioner\s+"ansible"')
    playbook = re.search(r'playbook_file\s*=\s*"([^"]+)"', provisioner).group(1)
    assert in_repository(playbook) == ROOT / "playbooks" / "site.yml"
    hosts = {play["hosts"] for play in yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
             if "hosts" in play}
    groups = re.search(r"groups\s*=\s*\[([^\]]*)\]", provisioner).group(1)
    assert hosts <= set(re.findall(r'"([^"]+)"', groups))
    assert re.search(r"use_proxy\s*=\s*false", provisioner)
    config = re.search(r'"ANSIBLE_CONFIG=([^"]+)"', provisioner).group(1)
    assert in_repository(config) == ROOT / "ansible.cfg"


def test_every_extra_variable_is_one_the_collection_or_ansible_knows():
    arguments = extra_arguments()
    values = [value for flag, value in zip(arguments, arguments[1:]) if flag in ("-e", "--extra-vars")]
    assert values, "no --extra-vars in the ansible provisioner"
    known = role_options() | ANSIBLE_VARIABLES
    for value in values:
        if value.startswith("@"):
            path = in_repository(value[1:])
            assert path.is_file(), value
            names = set(yaml.safe_load(path.read_text()))
        else:
            names = {value.split("=", 1)[0]}
        assert names <= known, "unknown variables in %s: %s" % (value, sorted(names - known))
    assert "kmstls_image_build=true" in values


def test_the_image_vars_hold_no_secret():
    names = set()
    for value in extra_arguments():
        if value.startswith("@"):
            names |= set(yaml.safe_load(in_repository(value[1:]).read_text()))
    assert not names & {"pkcs11_user_pin", "pkcs11_so_pin", "libkmsp11_credentials"}


def packer_with_builtin_plugins():
    """Packer before 1.7 has the amazon and ansible plugins built in, so it validates offline."""
    if shutil.which("packer") is None:
        return None
    version = subprocess.run(["packer", "version"], capture_output=True, text=True).stdout
    match = re.search(r"v(\d+)\.(\d+)", version)
    return "packer" if match and (int(match.group(1)), int(match.group(2))) < (1, 7) else None


@pytest.mark.skipif(packer_with_builtin_plugins() is None,
                    reason="needs packer < 1.7 (Debian's package), whose plugins are built in")
def test_packer_validates_the_template(tmp_path):
    # Packer 1.6 does not know required_plugins (1.7 and later fetch the
    # plugins it names, which needs the network): validate without it.
    text = TEMPLATE.read_text()
    start = text.index("\npacker {") + 1
    body = block(text[start:], "packer")
    copy = tmp_path / "docs" / "examples" / "packer"
    copy.mkdir(parents=True)
    (copy / TEMPLATE.name).write_text(text[:start] + text[start + len("packer {") + len(body) + 1:])
    (copy / "image-vars.yml").symlink_to(EXAMPLE / "image-vars.yml")
    for name in ("playbooks", "ansible.cfg"):
        (tmp_path / name).symlink_to(ROOT / name)
    certificate = tmp_path / "www.crt"
    certificate.write_text("placeholder\n")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               CHECKPOINT_DISABLE="1")
    result = subprocess.run(["packer", "validate", "-var", "certificate_file=%s" % certificate, str(copy)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
