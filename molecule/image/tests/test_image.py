"""What an image built by site.yml in image mode holds, and what it must not.

Runs after the image build (converge and idempotence), before any first boot.
"""

import shlex

import pytest

NGINX = "/usr/local/nginx/sbin/nginx"
CONF = "/usr/local/nginx/conf/nginx.conf"
UNIT = "/etc/systemd/system/nginx.service"
TIMER = "/etc/systemd/system/nginx-reload.timer"
PIN_FILE = "/etc/kmstls/pkcs11.pin"
TOKEN_DIR = "/var/lib/kmstls/softhsm/tokens"
CERTIFICATES = ["/etc/kmstls/certs/kmstls-ec-p256.crt", "/etc/kmstls/certs/kmstls-rsa-2048.crt"]
# Where a secret could be left on the image's disk. /usr/local/src/kmstls is
# left out: it holds the unpacked OpenSSL sources, whose test suite ships
# published test keys.
SEARCHED = ["/etc", "/root", "/home", "/tmp", "/var/tmp", "/var/lib", "/usr/local/nginx",
            "/usr/local/openssl", "/usr/local/p11-kit", "/run"]


def check(host, script):
    result = host.run("bash -c %s" % shlex.quote(script))
    assert result.rc == 0, "%s\nstdout: %s\nstderr: %s" % (script, result.stdout, result.stderr)
    return result.stdout


def unit_state(host, unit):
    out = check(host, "systemctl show --property=ActiveState,UnitFileState,ConditionResult,Result %s" % unit)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_the_stack_is_installed(host):
    version = check(host, "%s -V 2>&1" % NGINX)
    assert "nginx version: nginx/1.26.3" in version
    assert "built with OpenSSL 1.1.1w" in version
    assert host.file("/usr/local/openssl/lib/engines-1.1/pkcs11.so").exists
    assert host.package("softhsm2").is_installed


def test_all_configuration_without_secrets_is_written(host):
    for path in [CONF, UNIT, TIMER, "/etc/kmstls/openssl-pkcs11.cnf", "/etc/kmstls/softhsm2.conf",
                 "/etc/default/kmstls-nginx"]:
        assert host.file(path).is_file, path
    conf = host.file(CONF).content_string
    # The key references name the PIN file that the first boot writes.
    assert ("engine:pkcs11:pkcs11:token=kmstls;object=kmstls-ec-p256;type=private"
            "?pin-source=file:%s" % PIN_FILE) in conf
    assert "2468101214" not in conf
    environment = host.file("/etc/default/kmstls-nginx")
    assert environment.mode == 0o600
    assert 'SOFTHSM2_CONF="/etc/kmstls/softhsm2.conf"' in environment.content_string


def test_nginx_is_enabled_but_not_running(host):
    service = host.service("nginx")
    assert service.is_enabled
    assert not service.is_running
    assert not host.process.filter(comm="nginx")
    assert host.service("nginx-reload.timer").is_enabled


@pytest.mark.parametrize("path", [UNIT, TIMER])
def test_the_units_wait_for_the_pin_file_and_certificates(host, path):
    conditions = sorted(line.split("=", 1)[1] for line in host.file(path).content_string.splitlines()
                        if line.startswith("ConditionPathExists="))
    assert conditions == sorted(CERTIFICATES + [PIN_FILE])


@pytest.mark.parametrize("unit", ["nginx.service", "nginx-reload.timer"])
def test_booting_without_the_first_boot_step_skips_the_unit_cleanly(host, unit):
    # What boot does for an enabled unit. A missing PIN file must skip the
    # start, not fail it (a failing nginx would restart every 5 s forever).
    host.run("systemctl start %s" % unit)
    state = unit_state(host, unit)
    assert state["ActiveState"] == "inactive", state
    assert state["ConditionResult"] == "no", state
    assert state["Result"] == "success", state
    assert host.run("systemctl is-failed --quiet %s" % unit).rc != 0


def test_no_pin_file_and_no_token(host):
    assert not host.file(PIN_FILE).exists
    # The token directory exists for the first boot, and is empty.
    assert host.file(TOKEN_DIR).is_directory
    assert host.file(TOKEN_DIR).user == "nginx"
    assert check(host, "ls -A %s" % TOKEN_DIR) == ""
    assert check(host, "find /var/lib/softhsm/tokens -mindepth 1 2>/dev/null | head -1") == ""
    slots = check(host, "SOFTHSM2_CONF=/etc/kmstls/softhsm2.conf runuser -u nginx -- softhsm2-util --show-slots")
    assert "Initialized:      yes" not in slots
    assert "kmstls" not in slots


def test_no_certificates_yet(host):
    # They are signed by the token's keys, which the first boot creates.
    for path in CERTIFICATES:
        assert not host.file(path).exists


def test_no_private_key_anywhere(host):
    found = check(host, "grep -rlsE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' %s || true"
                  % " ".join(SEARCHED))
    assert found == ""


def test_no_throwaway_check_directory_is_left(host):
    # The image build's nginx -t used a throwaway pair in a mktemp directory.
    assert check(host, "find /tmp /var/tmp -name 'key.pem' -o -name 'cert.pem' | head -1") == ""
