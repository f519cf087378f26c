"""A fleet deployed from one bundle: nodes without a compiler serve TLS with the builder's stack.

Runs once per host of the scenario; node tests skip the builder and the
other way round. The controller-side check runs once.
"""

import glob
import hashlib
import json
import os
import shlex

import pytest

NGINX = "/usr/local/nginx/sbin/nginx"
OPENSSL = "/usr/local/openssl/bin/openssl"
RECORD = "/var/lib/kmstls/bundle.json"
BUNDLE_DIR = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"), "bundles")
SERVER = ("fleet.kmstls.test", 443)


def groups(host):
    return host.ansible.get_variables().get("group_names", [])


@pytest.fixture()
def node(host):
    if "kmstls_nginx" not in groups(host):
        pytest.skip("not a node")
    return host


@pytest.fixture()
def builder(host):
    if "kmstls_builder" not in groups(host):
        pytest.skip("not the builder")
    return host


def check(host, script):
    result = host.run("bash -c %s" % shlex.quote(script))
    assert result.rc == 0, "%s\nstdout: %s\nstderr: %s" % (script, result.stdout, result.stderr)
    return result.stdout


def bundles():
    """The good bundles on the controller (the side effect's test bundles live in test/)."""
    return sorted(glob.glob(os.path.join(BUNDLE_DIR, "*.tar.gz")))


def test_the_controller_holds_one_bundle_matching_its_checksum_file():
    found = bundles()
    assert len(found) == 1, found
    bundle = found[0]
    with open(bundle, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    with open(bundle + ".sha256") as handle:
        expected, name = handle.read().split()
    assert (expected, name) == (digest, os.path.basename(bundle))
    assert os.path.basename(bundle).startswith("kmstls-stack-debian-12-x86_64-")


def test_nodes_have_no_compiler_and_no_development_package(node):
    for tool in ("gcc", "cc", "c99", "make"):
        assert not node.exists(tool), tool
    dev = node.run("dpkg-query -W -f '${Package} ${Status}\\n' | grep -E -- '-dev(:[a-z0-9]+)? .*installed$'")
    assert dev.stdout == "", dev.stdout


def test_the_builder_compiled(builder):
    assert builder.exists("gcc")
    assert builder.file("/var/log/kmstls/build-openssl.log").contains("### step compile")


def test_nodes_run_the_builders_nginx_built_with_the_collections_openssl(node):
    out = node.run("%s -V" % NGINX)
    assert out.rc == 0, out.stderr
    assert "built with OpenSSL 1.1.1w" in out.stderr
    assert "running with" not in out.stderr
    assert node.service("nginx").is_running
    master = check(node, "readlink /proc/$(cat /run/nginx.pid)/exe").strip()
    assert master == NGINX


def test_nodes_record_the_installed_bundle_and_carry_the_builders_records(node):
    record = json.loads(node.file(RECORD).content_string)
    names = [os.path.basename(path) for path in glob.glob(os.path.join(BUNDLE_DIR, "**", "*.tar.gz"),
                                                          recursive=True)]
    assert record["bundle"] + ".tar.gz" in names
    assert len(record["sha256"]) == 64
    files = record["metadata"]["files"]
    for name in ("var/lib/kmstls/builds/openssl.json", "var/lib/kmstls/builds/nginx.json",
                 "usr/local/nginx/sbin/nginx"):
        assert name in files
        assert node.file("/" + name).sha256sum == files[name]
    # The host's own configuration is never part of a bundle.
    assert "usr/local/nginx/conf/nginx.conf" not in files
    assert "usr/local/nginx/conf/mime.types" in files
    assert node.file("/usr/local/nginx/conf/nginx.conf").contains("fleet.kmstls.test")


def test_no_staging_or_moved_aside_tree_is_left(node):
    leftovers = node.run("ls -a /usr/local /var/lib/kmstls /var/tmp/kmstls-bundles | grep -E '^[.]kmstls-|tar[.]gz'")
    assert leftovers.stdout == ""


def test_each_node_answers_200_over_tls_with_the_key_in_its_token(node):
    name, port = SERVER
    check(node, "%s s_client -connect 127.0.0.1:%d -servername %s </dev/null 2>/dev/null "
                "| %s x509 > /tmp/fleet-cacert.pem" % (OPENSSL, port, name, OPENSSL))
    status = check(node, "curl -sS -o /dev/null -w '%%{http_code}' --max-time 10 "
                         "--cacert /tmp/fleet-cacert.pem --resolve %s:%d:127.0.0.1 https://%s:%d/"
                   % (name, port, name, port))
    assert status == "200"
    # curl verified the handshake against the certificate issued for the token's key, so the
    # server signed with that key; no private key lies in a file on the node.
    served = check(node, "%s x509 -in /tmp/fleet-cacert.pem -noout -pubkey" % OPENSSL)
    issued = check(node, "%s x509 -in /etc/kmstls/certs/fleet-ec-p256.crt -noout -pubkey" % OPENSSL)
    assert served == issued
    key_files = node.run("grep -rl 'PRIVATE KEY' /etc/kmstls /usr/local/nginx/conf")
    assert key_files.stdout == ""
