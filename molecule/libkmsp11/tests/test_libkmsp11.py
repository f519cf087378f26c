"""What a user of the libkmsp11 role relies on, checked on every test host."""

import os
import shlex
import stat
from pathlib import Path

import yaml

PREFIX = "/usr/local/libkmsp11"
RELEASE = PREFIX + "/9.9.9-test"
LIBRARY = PREFIX + "/libkmsp11.so"
CONFIG = "/etc/libkmsp11/libkmsp11.yaml"
LOG_DIR = "/var/log/kmsp11"
SCENARIO = Path(__file__).resolve().parent.parent
TEST_KEY = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "libkmsp11-test-key.pem"


def test_stable_path_leads_to_the_requested_release(host):
    link = host.file(LIBRARY)
    assert link.is_symlink
    assert link.linked_to == RELEASE + "/libkmsp11.so"


def test_installed_library_verifies_against_the_signing_key(host):
    # The key is handed over on standard input, as the role does.
    cmd = "printf '%%s\\n' %s | openssl dgst -sha384 -verify /dev/stdin -signature %s %s" % (
        shlex.quote(TEST_KEY.read_text()), RELEASE + "/libkmsp11.so.sig", LIBRARY)
    out = host.run(cmd)
    assert out.rc == 0 and "Verified OK" in out.stdout, out.stdout + out.stderr


def test_release_files_belong_to_root_and_only_root_may_write(host):
    for name in ("libkmsp11.so", "libkmsp11.so.sig", "kmsp11.h", "LICENSE"):
        f = host.file(RELEASE + "/" + name)
        assert f.user == "root" and f.group == "root", name
        assert f.mode & (stat.S_IWGRP | stat.S_IWOTH) == 0, "%s is %o" % (name, f.mode)


def test_staging_directory_is_removed(host):
    assert not host.file("/usr/local/src/kmstls/libkmsp11-9.9.9-test-staging").exists


def test_configuration_holds_exactly_the_options_given(host):
    given = yaml.safe_load((SCENARIO / "vars" / "libkmsp11.yml").read_text())["__test_config"]
    expected = {name: value for name, value in given.items() if value is not None}
    written = yaml.safe_load(host.file(CONFIG).content_string)
    assert written == expected
    assert "user_project_override" not in host.file(CONFIG).content_string


def test_configuration_is_writable_by_root_only(host):
    # The library refuses to start with a group- or world-writable file.
    f = host.file(CONFIG)
    assert f.user == "root" and f.group == "root"
    assert f.mode == 0o644


def test_log_directory_belongs_to_the_worker_user(host):
    d = host.file(LOG_DIR)
    assert d.is_directory
    assert d.user == "nginx" and d.group == "nginx"
    assert d.mode == 0o750
