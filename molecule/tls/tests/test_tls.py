"""Behaviour of nginx terminating TLS with keys held in a SoftHSM token.

Every request goes to 127.0.0.1 inside the container under test.
"""

import re
import shlex

import pytest

# (server name, port, key algorithm) of the two server blocks in vars/tls.yml.
SERVERS = [("ec.kmstls.test", 443, "EC"), ("rsa.kmstls.test", 8443, "RSA")]
NGINX = "/usr/local/nginx/sbin/nginx"
OPENSSL = "/usr/local/openssl/bin/openssl"
CONF = "/usr/local/nginx/conf/nginx.conf"
ENV_FILE = "/etc/default/kmstls-nginx"
ACCESS_LOG = "/var/log/nginx/access.log"


def in_service_env(command):
    """Wrap a shell command so it runs with the nginx service's environment."""
    return "set -a; . %s; set +a; %s" % (ENV_FILE, command)


def bash(host, script):
    return host.run("bash -c %s" % shlex.quote(script))


def check(host, script):
    result = bash(host, script)
    assert result.rc == 0, "%s\nstdout: %s\nstderr: %s" % (script, result.stdout, result.stderr)
    return result.stdout


def curl(name, port, *options, write_out="%{http_code}"):
    """curl the server block by name, resolved to 127.0.0.1, trusting its own certificate."""
    return ("curl -sS -o /dev/null -w '%s' --max-time 10 --cacert /tmp/kmstls-test-cacert-%s.pem "
            "--resolve %s:%d:127.0.0.1 %s https://%s:%d/"
            % (write_out, name, name, port, " ".join(options), name, port))


def server_block(host, name):
    """Return (certificate path, key reference) of a server block, as nginx -T shows it."""
    conf = check(host, in_service_env("%s -T -q -c %s" % (NGINX, CONF)))
    block = conf.split("server_name %s;" % name, 1)[1].split("location", 1)[0]
    return (re.search(r'ssl_certificate "([^"]+)";', block).group(1),
            re.search(r'ssl_certificate_key "([^"]+)";', block).group(1))


@pytest.fixture(scope="module", autouse=True)
def trusted_certificates(host):
    """Fetch each server's certificate into a file curl can trust (checked below)."""
    for name, port, _ in SERVERS:
        check(host, "%s s_client -connect 127.0.0.1:%d -servername %s </dev/null 2>/dev/null "
                    "| %s x509 > /tmp/kmstls-test-cacert-%s.pem" % (OPENSSL, port, name, OPENSSL, name))


def test_nginx_runs_as_master_with_two_workers_as_the_nginx_user(host):
    service = host.service("nginx")
    assert service.is_running and service.is_enabled
    workers = check(host, "ps -o user=,args= -C nginx | grep 'worker process'").splitlines()
    assert len(workers) == 2
    assert all(line.split()[0] == "nginx" for line in workers)
    user = host.user("nginx")
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")


@pytest.mark.parametrize("name, port, algorithm", SERVERS)
def test_served_certificate_is_the_configured_one(host, name, port, algorithm):
    cert_path, _ = server_block(host, name)
    fingerprint = "%s x509 -noout -fingerprint -sha256 -in %%s" % OPENSSL
    assert (check(host, fingerprint % cert_path)
            == check(host, fingerprint % ("/tmp/kmstls-test-cacert-%s.pem" % name)))


@pytest.mark.parametrize("version, options", [
    ("TLSv1.2", "--tlsv1.2 --tls-max 1.2"),
    ("TLSv1.3", "--tlsv1.3"),
])
@pytest.mark.parametrize("name, port, algorithm", SERVERS)
def test_each_server_answers_over_tls(host, name, port, algorithm, version, options):
    out = check(host, curl(name, port, options, "-v", write_out="\\nHTTP=%{http_code}\\n") + " 2>&1")
    assert "HTTP=200" in out, out
    assert "SSL connection using %s" % version in out
    assert "SSL certificate verify ok" in out


def test_proxy_pass_server_passes_requests_to_its_backend(host):
    # The backend is the EC block, which answers "ec key" and logs the
    # forwarded protocol; the proxy block signs its own handshake in the token.
    out = check(host, "curl -sS -k --max-time 10 https://127.0.0.1:9443/")
    assert out == "ec key\n"
    conf = check(host, in_service_env("%s -T -q -c %s" % (NGINX, CONF)))
    block = conf.split("server_name proxy.kmstls.test;", 1)[1].split("}", 1)[0]
    assert 'proxy_pass "https://127.0.0.1:443";' in block
    assert "proxy_set_header X-Forwarded-Proto https;" in block


@pytest.mark.parametrize("name, port, algorithm", SERVERS)
def test_served_public_key_is_the_one_in_the_token(host, name, port, algorithm):
    served = check(host, "%s x509 -noout -pubkey -in /tmp/kmstls-test-cacert-%s.pem" % (OPENSSL, name))
    _, key = server_block(host, name)
    # The public half of the very object nginx signs with: same URI, type=public, no PIN.
    uri = key[len("engine:pkcs11:"):].split("?", 1)[0].replace("type=private", "type=public")
    text = check(host, "%s pkey -pubin -noout -text <<'EOF'\n%sEOF" % (OPENSSL, served))
    assert ("ASN1 OID: prime256v1" in text) if algorithm == "EC" else ("RSA Public-Key: (2048 bit)" in text)
    in_token = check(host, in_service_env(
        "%s pkey -engine pkcs11 -inform engine -pubin -in '%s' -pubout 2>/dev/null" % (OPENSSL, uri)))
    assert "BEGIN PUBLIC KEY" in served
    assert served == in_token


def test_keys_are_referenced_through_the_engine_and_no_pin_is_in_the_config(host):
    conf = check(host, in_service_env("%s -T -q -c %s" % (NGINX, CONF)))
    keys = re.findall(r"ssl_certificate_key\s+\"?([^\";]+)", conf)
    assert len(keys) == len(SERVERS) + 1  # and the proxy block
    assert all(key.startswith("engine:pkcs11:pkcs11:") for key in keys)
    assert "pin-value" not in conf
    pin_file = re.search(r"pin-source=file:([^\";]+)", conf).group(1)
    pin = check(host, "cat %s" % pin_file)
    assert pin and pin not in conf


def test_no_private_key_file_on_the_host(host):
    # Everywhere a deployment could leave a key, /usr/local included: the
    # build roles remove the unpacked trees, whose test keys scanners report.
    found = bash(host, "grep -rlE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' /etc /var/lib /usr/local "
                       "/root /home /tmp /srv /opt 2>/dev/null")
    assert found.stdout.strip() == ""


def test_environment_file_is_root_only_and_exported_to_workers(host):
    env_file = host.file(ENV_FILE)
    assert env_file.user == "root" and env_file.mode == 0o600
    assert "OPENSSL_CONF=" in env_file.content_string
    conf = check(host, in_service_env("%s -T -q -c %s" % (NGINX, CONF)))
    assert "env OPENSSL_CONF;" in conf


def test_both_workers_serve_requests(host):
    name, port, _ = SERVERS[0]
    one = curl(name, port, "-H 'Connection: close'")
    pids = set()
    for _ in range(5):  # bounded: at most 5 rounds of 40 requests, 8 at a time
        check(host, "truncate -s 0 %s; seq 40 | xargs -P 8 -I{} sh -c %s >/dev/null"
                    % (ACCESS_LOG, shlex.quote(one)))
        pids |= set(re.findall(r" pid=(\d+) ", check(host, "cat %s" % ACCESS_LOG)))
        if len(pids) >= 2:
            break
    assert len(pids) == 2, pids


def workers(host):
    """Process ids of the master's children, the workers."""
    return set(check(host, "pgrep -P $(cat /run/nginx.pid)").split())


def test_reloads_under_load_lose_no_request(host):
    name, port, _ = SERVERS[1]
    master_before = check(host, "cat /run/nginx.pid").strip()
    workers_before = workers(host)
    errors_before = int(check(host, "wc -l < /var/log/nginx/error.log"))
    # HTTP/1.1: nginx closes an HTTP/2 connection that has not sent its first
    # request yet when its worker exits (GOAWAY; browsers retry, curl does not),
    # which says nothing about the keys. One line per request: HTTP status,
    # curl's exit status and its error, if any.
    script = r"""
        set -u
        results=$(mktemp) errors=$(mktemp)
        ( for i in $(seq 200); do
            code=$(%s 2>"$errors"); echo "$code rc=$? $(tr '\n' ' ' < "$errors")"
          done > "$results" ) &
        client=$!
        for n in 1 2 3; do sleep 0.5; systemctl reload nginx || exit 3; done
        wait "$client"
        cat "$results"
        rm -f "$results" "$errors"
    """ % curl(name, port, "--http1.1")
    lines = check(host, script).splitlines()
    failed = [line for line in lines if not line.startswith("200 rc=0")]
    print("reload under load: %d requests, %d failed" % (len(lines), len(failed)))
    log = check(host, "tail -n +%d /var/log/nginx/error.log | grep -E '\\[(alert|crit|emerg|error)\\]' || true"
                % (errors_before + 1))
    assert len(lines) == 200 and not failed, "failed requests: %s\nnginx errors:\n%s" % (failed, log)
    assert check(host, "cat /run/nginx.pid").strip() == master_before
    # Old workers leave once their last connection is closed.
    check(host, "for i in $(seq 50); do pgrep -P %s -d' ' | grep -qwE '%s' || exit 0; sleep 0.2; done; exit 1"
          % (master_before, "|".join(workers_before)))
    workers_after = workers(host)
    assert len(workers_after) == 2 and not workers_after & workers_before


def test_time_to_first_handshake_after_a_reload(host):
    name, port, _ = SERVERS[0]
    out = check(host, "systemctl reload nginx; sleep 1; "
                + curl(name, port, write_out="%{http_code} %{time_appconnect}"))
    code, seconds = out.split()
    print("first handshake after reload took %s s" % seconds)
    assert code == "200"


def test_the_unit_validates_before_reloading(host):
    unit = check(host, "systemctl cat nginx")
    assert re.search(r"ExecReload=\S+/nginx -t", unit)
    assert re.search(r"ExecStartPre=\S+/nginx -t", unit)
    # The default: the master runs in the foreground, as the process that loaded the keys.
    assert "Type=exec" in unit and "daemon off;" in unit and "ExecStartPost=" in unit


def test_a_restart_returns_once_nginx_serves(host):
    name, port, _ = SERVERS[0]
    out = check(host, "systemctl restart nginx && " + curl(name, port, write_out="%{http_code} %{time_appconnect}"))
    code, seconds = out.split()
    print("first handshake after restart took %s s" % seconds)
    assert code == "200"
