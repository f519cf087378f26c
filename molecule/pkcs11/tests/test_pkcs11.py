"""What the pkcs11 role promises on a SoftHSM host, checked from the outside.

The keys live in the token and cannot leave it, each certificate carries its
token key's public half, OpenSSL signs through the engine with the PIN from
the root-only PIN file, nginx serves TLS with those keys, and neither a key
nor the PIN is lying around in a readable file.
"""

import re
import shlex
import urllib.parse

import pytest

OPENSSL = "/usr/local/openssl/bin/openssl"
NGINX = "/usr/local/nginx/sbin/nginx"
OPENSSL_CONF = "/etc/kmstls/openssl-pkcs11.cnf"
SOFTHSM2_CONF = "/etc/kmstls/softhsm2.conf"
PIN_FILE = "/etc/kmstls/pkcs11.pin"
TOKEN_DIR = "/var/lib/kmstls/softhsm/tokens"
CERT_DIR = "/etc/kmstls/certs"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
P11_KIT_MODULE_CONFIG = "/usr/local/p11-kit/etc/pkcs11/modules/kmstls-pkcs11.module"
ENGINE = "/usr/local/openssl/lib/engines-1.1/pkcs11.so"
# Upstream source trees unpacked by the build roles: OpenSSL's ships sample
# and test keys (test/, apps/, demos/), which are not ours.
SOURCE_DIR = "/usr/local/src/kmstls"

# The role's default keys: label -> (object ID, type).
KEYS = {"kmstls-ec-p256": ("01", "ec"), "kmstls-rsa-2048": ("02", "rsa")}
ENV = "OPENSSL_CONF=%s SOFTHSM2_CONF=%s" % (OPENSSL_CONF, SOFTHSM2_CONF)


@pytest.fixture(scope="module")
def token(host):
    """The token label and user PIN the scenario gave the role."""
    variables = host.ansible.get_variables()
    return {"label": variables["pkcs11_token_label"], "pin": variables["pkcs11_user_pin"]}


@pytest.fixture()
def workdir(host):
    """A scratch directory on the host, removed after the test."""
    path = host.check_output("mktemp -d /tmp/kmstls-verify.XXXXXX")
    yield path
    host.run("rm -rf %s" % shlex.quote(path))


def key_uri(token, label, kind="private", pin=True):
    """The PKCS#11 URI of a token key, as the role hands it to nginx."""
    uri = "pkcs11:token=%s;object=%s;id=%%%s;type=%s" % (
        urllib.parse.quote(token["label"], safe=""), label, KEYS[label][0], kind)
    if pin:
        uri += "?pin-source=file:" + PIN_FILE
    return uri


def pkcs11_tool(host, token, *args):
    """Run pkcs11-tool against the SoftHSM token as its owner, logged in."""
    command = "%s P=%s runuser -u nginx -- pkcs11-tool --module %s --token-label %s " \
              "--login --pin env:P %s" % (
                  ENV, shlex.quote(token["pin"]), SOFTHSM_MODULE,
                  shlex.quote(token["label"]), " ".join(shlex.quote(a) for a in args))
    return host.run(command)


def test_the_token_is_initialised_with_a_user_pin(host, token):
    slots = host.check_output("%s softhsm2-util --show-slots" % ENV)
    block = re.search(
        r"Initialized:\s+yes\s*\n\s*User PIN init\.:\s+yes\s*\n\s*Label:\s+%s\s*$"
        % re.escape(token["label"]), slots, re.MULTILINE)
    assert block, slots


def test_the_token_files_belong_to_the_nginx_worker_user_only(host):
    listing = host.check_output(
        "find %s -printf '%%u:%%g %%m %%y %%p\\n'" % shlex.quote(TOKEN_DIR))
    lines = listing.splitlines()
    assert len(lines) > 3, listing
    for line in lines:
        owner, mode, kind, path = line.split(" ", 3)
        assert owner == "nginx:nginx", line
        assert mode == ("700" if kind == "d" else "600"), line


@pytest.mark.parametrize("label", sorted(KEYS))
def test_each_private_key_is_in_the_token_and_cannot_leave_it(host, token, label):
    listing = pkcs11_tool(host, token, "--list-objects", "--type", "privkey")
    assert listing.rc == 0, listing.stderr
    objects = re.split(r"^(?=Private Key Object)", listing.stdout, flags=re.MULTILINE)
    mine = [o for o in objects if re.search(r"^\s+label:\s+%s\s*$" % re.escape(label), o, re.M)]
    assert len(mine) == 1, listing.stdout
    assert re.search(r"^\s+ID:\s+%s\s*$" % KEYS[label][0], mine[0], re.M), mine[0]
    assert ("; EC" if KEYS[label][1] == "ec" else "; RSA") in mine[0]
    access = re.search(r"^\s+Access:\s+(.*)$", mine[0], re.M).group(1)
    flags = {flag.strip() for flag in access.split(",")}
    # CKA_SENSITIVE and CKA_NEVER_EXTRACTABLE set, CKA_EXTRACTABLE not set.
    assert {"sensitive", "always sensitive", "never extractable"} <= flags, access
    assert "extractable" not in flags, access


@pytest.mark.parametrize("label", sorted(KEYS))
def test_each_certificate_carries_its_token_key(host, token, label, workdir):
    # Read the public key object with pkcs11-tool, not the engine the role used.
    der = "%s/%s.der" % (workdir, label)
    result = host.run(
        "%s pkcs11-tool --module %s --token-label %s --read-object --type pubkey --id %s -o %s"
        % (ENV, SOFTHSM_MODULE, shlex.quote(token["label"]), KEYS[label][0], der))
    assert result.rc == 0, result.stderr
    token_key = host.check_output("%s pkey -pubin -inform DER -in %s -pubout" % (OPENSSL, der))
    certificate = "%s/%s.crt" % (CERT_DIR, label)
    certificate_key = host.check_output("%s x509 -in %s -noout -pubkey" % (OPENSSL, certificate))
    assert certificate_key == token_key
    text = host.check_output("%s x509 -in %s -noout -text" % (OPENSSL, certificate))
    assert "DNS:localhost, IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    assert host.file(certificate).mode == 0o644


@pytest.mark.parametrize("label", sorted(KEYS))
def test_openssl_dgst_signs_through_the_engine_and_the_certificate_verifies(
        host, token, label, workdir):
    host.check_output("head -c 4096 /dev/urandom > %s/message" % workdir)
    sign = host.run(
        "%s %s dgst -sha256 -engine pkcs11 -keyform engine -sign %s -out %s/sig %s/message"
        % (ENV, OPENSSL, shlex.quote(key_uri(token, label)), workdir, workdir))
    assert sign.rc == 0, sign.stderr
    host.check_output("%s x509 -in %s/%s.crt -noout -pubkey > %s/pub.pem"
                      % (OPENSSL, CERT_DIR, label, workdir))
    verify = host.run("%s dgst -sha256 -verify %s/pub.pem -signature %s/sig %s/message"
                      % (OPENSSL, workdir, workdir, workdir))
    assert verify.rc == 0 and "Verified OK" in verify.stdout, verify.stdout + verify.stderr


@pytest.mark.parametrize("label", sorted(KEYS))
def test_openssl_pkeyutl_signs_through_the_engine_and_the_certificate_verifies(
        host, token, label, workdir):
    options = "-pkeyopt digest:sha256" if KEYS[label][1] == "rsa" else ""
    host.check_output("head -c 4096 /dev/urandom | %s dgst -sha256 -binary > %s/digest"
                      % (OPENSSL, workdir))
    sign = host.run(
        "%s %s pkeyutl -sign -engine pkcs11 -keyform engine -inkey %s %s -in %s/digest -out %s/sig"
        % (ENV, OPENSSL, shlex.quote(key_uri(token, label)), options, workdir, workdir))
    assert sign.rc == 0, sign.stderr
    verify = host.run(
        "%s pkeyutl -verify -certin -inkey %s/%s.crt %s -in %s/digest -sigfile %s/sig"
        % (OPENSSL, CERT_DIR, label, options, workdir, workdir))
    assert "Signature Verified Successfully" in verify.stdout, verify.stdout + verify.stderr


def test_signing_without_the_pin_file_fails_loudly(host, token, workdir):
    # The same URI without pin-source: the token refuses to sign, and says so.
    result = host.run(
        "%s %s dgst -sha256 -engine pkcs11 -keyform engine -sign %s -out %s/sig /etc/hostname"
        " </dev/null" % (ENV, OPENSSL, shlex.quote(key_uri(token, "kmstls-ec-p256", pin=False)),
                         workdir))
    # (libp11 0.4.11 may also crash on its way out here; the exit code is non-zero either way.)
    assert result.rc != 0
    assert "No PIN code was entered" in result.stderr, result.stderr
    assert "unable to load key" in result.stderr, result.stderr


def test_the_pin_file_is_root_only_and_holds_exactly_the_pin(host, token):
    pin_file = host.file(PIN_FILE)
    assert pin_file.user == "root" and pin_file.group == "root"
    assert pin_file.mode == 0o400
    # libp11 takes the first line as it is: a trailing newline would be part of the PIN.
    assert pin_file.content_string == token["pin"]


def test_the_openssl_configuration_names_the_engine_and_module_and_no_pin(host, token):
    text = host.file(OPENSSL_CONF).content_string
    settings = dict(re.findall(r"^\s*([A-Za-z_.]+)\s*=\s*(.*?)\s*$", text, re.M))
    assert settings["openssl_conf"] == "kmstls_openssl_init"
    assert settings["dynamic_path"] == ENGINE
    assert settings["MODULE_PATH"] == SOFTHSM_MODULE
    assert settings["init"] == "1"
    assert not re.search(r"^\s*\.include", text, re.M)
    assert token["pin"] not in text
    assert "PIN" not in settings
    assert host.file(OPENSSL_CONF).mode == 0o644
    # Call logging is off: p11-kit has no module configuration from the role.
    assert not host.file(P11_KIT_MODULE_CONFIG).exists


SCAN = r'''
import os, re, subprocess, sys
with open(sys.argv[1], "rb") as handle:
    pin = handle.read()
skip = {"/proc", "/sys", "/dev", "/run", sys.argv[2]}
pem = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----\s+[A-Za-z0-9+/=:,\-\s]{64,}?-----END \1-----")
der = re.compile(rb"^\x30(?:[\x00-\x7f]|\x81.|\x82..)\x02\x01[\x00\x01]", re.S)
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
    for name in files:
        path = os.path.join(root, name)
        try:
            if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) > 1 << 20:
                continue
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if pin in data:
            print("PIN %o %s" % (os.stat(path).st_mode & 0o777, path))
        if data.startswith(b"\x7fELF"):
            continue  # programs may embed sample keys; a key file is not a program
        if pem.search(data):
            print("PEM %s" % path)
        elif len(data) < 8192 and der.match(data) and subprocess.run(
                [sys.argv[3], "pkey", "-inform", "DER", "-noout", "-passin", "pass:", "-in", path],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            print("DER %s" % path)
'''


@pytest.fixture(scope="module")
def scan(host, token):
    """Walk the host's file system once for private keys and for the PIN."""
    # The token directory is left out: SoftHSM keeps its objects there, the
    # private ones encrypted under a token key that only the PIN unwraps, so
    # it never holds a key in PEM or DER form (its ownership is checked above).
    # The PIN is read from the PIN file on the host, so that it is not on the
    # command line of the scan (or in a file of the tool that starts it).
    output = host.check_output("python3 -c %s %s %s %s" % (
        shlex.quote(SCAN), PIN_FILE, TOKEN_DIR, OPENSSL))
    return [line.split(" ") for line in output.splitlines()]


def test_no_private_key_file_exists_outside_the_token(host, scan):
    keys = [entry[-1] for entry in scan if entry[0] in ("PEM", "DER")]
    ours = [path for path in keys if not path.startswith(SOURCE_DIR + "/")]
    assert ours == []


def test_no_upstream_sample_key_is_one_of_the_token_keys(host, token, scan):
    samples = [entry[-1] for entry in scan if entry[0] in ("PEM", "DER")]
    if not samples:
        return
    # One pass on the host: the public half of every key file found.
    publics = host.run("for f in %s; do %s pkey -in \"$f\" -passin pass: -pubout 2>/dev/null;"
                       " %s pkey -inform DER -in \"$f\" -passin pass: -pubout 2>/dev/null; done"
                       % (" ".join(shlex.quote(path) for path in samples), OPENSSL, OPENSSL))
    for label in KEYS:
        token_key = host.check_output(
            "%s %s pkey -engine pkcs11 -inform engine -pubin -in %s -pubout"
            % (ENV, OPENSSL, shlex.quote(key_uri(token, label, "public", pin=False))))
        assert token_key.strip() not in publics.stdout


def test_the_pin_is_in_no_file_others_may_read(scan):
    readable = [entry for entry in scan if entry[0] == "PIN" and int(entry[1], 8) & 0o044]
    assert readable == []
    holders = [entry[-1] for entry in scan if entry[0] == "PIN"]
    assert PIN_FILE in holders


NGINX_CONF = """\
user nginx;
worker_processes 2;
daemon on;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
env OPENSSL_CONF;
env SOFTHSM2_CONF;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:18443 ssl;
        ssl_protocols TLSv1.2;
        ssl_certificate {certs}/kmstls-ec-p256.crt;
        ssl_certificate_key "engine:pkcs11:{ec}";
        ssl_certificate {certs}/kmstls-rsa-2048.crt;
        ssl_certificate_key "engine:pkcs11:{rsa}";
        location / {{ return 200 "served with a token key\\n"; }}
    }}
}}
"""


def test_nginx_serves_tls_with_both_token_keys(host, token, workdir):
    host.run("chmod 0755 %s" % workdir)
    conf = NGINX_CONF.format(dir=workdir, certs=CERT_DIR,
                             ec=key_uri(token, "kmstls-ec-p256"),
                             rsa=key_uri(token, "kmstls-rsa-2048"))
    host.check_output("printf '%%s' %s > %s/nginx.conf" % (shlex.quote(conf), workdir))
    dump = host.run("%s %s -T -c %s/nginx.conf" % (ENV, NGINX, workdir))
    assert dump.rc == 0, dump.stderr
    assert token["pin"] not in dump.stdout + dump.stderr
    started = host.run("%s %s -c %s/nginx.conf" % (ENV, NGINX, workdir))
    assert started.rc == 0, started.stderr
    try:
        for label, cipher in (("kmstls-ec-p256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
                              ("kmstls-rsa-2048", "ECDHE-RSA-AES128-GCM-SHA256")):
            # Several handshakes, so that both workers (forked after the key was
            # loaded in the master) sign with the token.
            for _ in range(4):
                served = host.check_output(
                    "%s s_client -connect 127.0.0.1:18443 -tls1_2 -cipher %s </dev/null "
                    "2>/dev/null | %s x509 -noout -pubkey" % (OPENSSL, cipher, OPENSSL))
                expected = host.check_output(
                    "%s x509 -in %s/%s.crt -noout -pubkey" % (OPENSSL, CERT_DIR, label))
                assert served == expected
    finally:
        # "nginx -s stop" would load the keys again; the pid file is enough.
        host.run("kill -TERM $(cat %s/nginx.pid); for i in 1 2 3 4 5 6 7 8 9 10; do"
                 " test -e %s/nginx.pid || break; sleep 0.5; done" % (workdir, workdir))
    errors = host.file("%s/error.log" % workdir).content_string
    assert "[emerg]" not in errors and "[alert]" not in errors, errors
