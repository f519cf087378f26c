"""Image builds: how each role detects one, and what the nginx role writes for it.

Role variables are evaluated with Ansible's own templating, as a play would,
so a change that breaks the image mode fails here in seconds; the throwaway
nginx -t of an image build is run for real against a stand-in nginx binary.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

ROLES = Path(__file__).resolve().parents[2] / "roles"
IMAGE_ROLES = ["pkcs11", "nginx", "libkmsp11"]


def role_variables(role, **overrides):
    variables = {}
    for name in ("defaults/main.yml", "vars/main.yml"):
        path = ROLES / role / name
        if path.exists():
            variables.update(yaml.safe_load(path.read_text()))
    variables.update(ansible_os_family="Debian", ansible_managed="Ansible managed")
    variables.update(overrides)
    return variables


def evaluate(role, expression, **settings):
    return Templar(loader=DataLoader(), variables=role_variables(role, **settings)).template(expression)


def render(role, template, **settings):
    templar = Templar(loader=DataLoader(), variables=role_variables(role, **settings))
    return templar.template((ROLES / role / "templates" / template).read_text(), escape_backslashes=False)


@pytest.mark.parametrize("role", IMAGE_ROLES)
@pytest.mark.parametrize("settings, expected", [
    ({}, False),
    # Packer's ansible provisioner passes -e packer_build_name=<source name>.
    ({"packer_build_name": "amazon-ebs.nginx"}, True),
    ({"kmstls_image_build": True}, True),
    # The explicit switch wins over the detection, both ways.
    ({"kmstls_image_build": False, "packer_build_name": "qemu.nginx"}, False),
])
def test_each_role_detects_an_image_build(role, settings, expected):
    assert evaluate(role, "{{ %s_image_build | bool }}" % role, **settings) is expected


def test_an_image_build_writes_no_secrets_and_starts_nothing():
    image = {"packer_build_name": "qemu.nginx"}
    assert evaluate("pkcs11", "{{ pkcs11_manage_secrets | bool }}", **image) is False
    assert evaluate("pkcs11", "{{ pkcs11_manage_secrets | bool }}") is True
    assert evaluate("nginx", "{{ nginx_service_state }}", **image) == "stopped"
    assert evaluate("nginx", "{{ nginx_service_state }}") == "started"
    assert evaluate("nginx", "{{ nginx_service_enabled | bool }}", **image) is True


SERVERS = [
    {"server_names": ["a.test"], "certificate": "/etc/kmstls/certs/a.crt", "key": {"object": "a"}},
    {"server_names": ["b.test"], "certificate": "/etc/kmstls/certs/b.crt", "key": {"object": "b"},
     "pin_file": "/etc/kmstls/b.pin"},
    {"server_names": ["c.test"], "certificate": "/etc/kmstls/certs/a.crt", "key": {"object": "c"}},
]


def test_the_unit_waits_for_certificates_pin_files_and_credentials():
    settings = {"nginx_servers": SERVERS, "pkcs11_key_pin_file": "/etc/kmstls/pkcs11.pin",
                "pkcs11_service_environment": {"OPENSSL_CONF": "/etc/kmstls/openssl-pkcs11.cnf",
                                               "GOOGLE_APPLICATION_CREDENTIALS": "/etc/libkmsp11/sa.json"}}
    expected = ["/etc/kmstls/b.pin", "/etc/kmstls/certs/a.crt", "/etc/kmstls/certs/b.crt",
                "/etc/kmstls/pkcs11.pin", "/etc/libkmsp11/sa.json"]
    assert evaluate("nginx", "{{ __nginx_required_files }}", **settings) == expected
    for template in ("nginx.service.j2", "nginx-reload.timer.j2"):
        unit = render("nginx", template, **settings)
        conditions = [line.split("=", 1)[1] for line in unit.splitlines()
                      if line.startswith("ConditionPathExists=")]
        assert conditions == expected, template
        # Conditions belong to [Unit]; systemd ignores them anywhere else.
        assert unit.index("ConditionPathExists=") < unit.index("\n[", unit.index("[Unit]"))


def test_a_token_without_pin_adds_no_pin_condition():
    unit = render("nginx", "nginx.service.j2", nginx_servers=SERVERS[:1], pkcs11_key_pin_file="")
    assert [line for line in unit.splitlines() if line.startswith("Condition")] == [
        "ConditionPathExists=/etc/kmstls/certs/a.crt"]


def test_libkmsp11_exports_its_credentials_file_only_when_there_is_one():
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in evaluate("libkmsp11", "{{ __libkmsp11_environment }}")
    environment = evaluate("libkmsp11", "{{ __libkmsp11_environment }}",
                           libkmsp11_credentials_file="/etc/libkmsp11/sa.json")
    assert environment == {"KMS_PKCS11_CONFIG": "/etc/libkmsp11/libkmsp11.yaml",
                           "GRPC_ENABLE_FORK_SUPPORT": "1",
                           "GOOGLE_APPLICATION_CREDENTIALS": "/etc/libkmsp11/sa.json"}


# A stand-in for nginx -t: records its arguments and the file it was given,
# and fails like nginx when a certificate or key line still names the token.
FAKE_NGINX = """#!/bin/sh
printf '%s\\n' "$@" > "$KMSTLS_TEST_OUT/args"
while [ $# -gt 0 ]; do [ "$1" = -c ] && conf=$2; shift; done
cp "$conf" "$KMSTLS_TEST_OUT/checked.conf"
for f in $(sed -n 's/^ *ssl_certificate\\(_key\\)\\{0,1\\} \\(.*\\);$/\\2/p' "$conf"); do
  [ -s "$f" ] || { echo "nginx: [emerg] cannot load $f" >&2; exit 1; }
done
env > "$KMSTLS_TEST_OUT/env"
"""

CONF = """user nginx nginx;
env OPENSSL_CONF;
http {
    server {
        listen 443 ssl;
        ssl_certificate "/etc/kmstls/certs/a.crt";
        ssl_certificate_key "engine:pkcs11:pkcs11:token=t;object=a;type=private?pin-source=file:/x.pin";
        location / { return 200 "ok"; }
    }
}
"""


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs an openssl binary")
def test_the_image_check_swaps_in_a_throwaway_pair_and_removes_it(tmp_path):
    prefix, openssl_prefix, out = tmp_path / "nginx", tmp_path / "openssl", tmp_path / "out"
    for directory in (prefix / "sbin", openssl_prefix / "bin", out):
        directory.mkdir(parents=True)
    (prefix / "sbin" / "nginx").write_text(FAKE_NGINX)
    (prefix / "sbin" / "nginx").chmod(0o755)
    (openssl_prefix / "bin" / "openssl").symlink_to(shutil.which("openssl"))
    conf = tmp_path / "new.conf"
    conf.write_text(CONF)
    command = evaluate("nginx", "{{ __nginx_image_test_command }}", nginx_prefix=str(prefix),
                       nginx_openssl_prefix=str(openssl_prefix),
                       pkcs11_service_environment={"OPENSSL_CONF": "/etc/kmstls/o.cnf"})
    # What Ansible's validate does with it: fill in %s, split, run without a shell.
    argv = shlex.split(command % str(conf))
    assert argv[:2] == ["/bin/sh", "-c"]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = subprocess.run(argv, capture_output=True, text=True,
                            env=dict(os.environ, KMSTLS_TEST_OUT=str(out), TMPDIR=str(tmp)))
    assert result.returncode == 0, result.stderr
    checked = (out / "checked.conf").read_text()
    # Only the certificate and key lines differ from the file being written.
    changed = [(a, b) for a, b in zip(CONF.splitlines(), checked.splitlines()) if a != b]
    assert [a.split()[0] for a, _ in changed] == ["ssl_certificate", "ssl_certificate_key"]
    assert all("/cert.pem;" in b or "/key.pem;" in b for _, b in changed)
    assert "OPENSSL_CONF=/etc/kmstls/o.cnf" in (out / "env").read_text()
    assert "-t" in (out / "args").read_text().split()
    # The throwaway directory, key included, is gone.
    assert list(tmp.iterdir()) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs an openssl binary")
def test_the_image_check_fails_when_nginx_refuses_the_file(tmp_path):
    prefix, out = tmp_path / "nginx", tmp_path / "out"
    (prefix / "sbin").mkdir(parents=True)
    out.mkdir()
    (prefix / "sbin" / "nginx").write_text("#!/bin/sh\necho 'nginx: [emerg] unknown directive' >&2\nexit 1\n")
    (prefix / "sbin" / "nginx").chmod(0o755)
    conf = tmp_path / "new.conf"
    conf.write_text(CONF)
    command = evaluate("nginx", "{{ __nginx_image_test_command }}", nginx_prefix=str(prefix),
                       nginx_openssl_prefix="/usr")
    result = subprocess.run(shlex.split(command % str(conf)), capture_output=True, text=True)
    assert result.returncode != 0
    assert "unknown directive" in result.stderr
