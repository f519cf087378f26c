"""scripts/loadgen.py against a small TLS server on 127.0.0.1 started by each test."""

import asyncio
import datetime
import json
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import loadgen


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed P-256 certificate for localhost: (certificate path, key path)."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loadgen.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("loadgen.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class Server:
    """An HTTPS server in a thread. behaviour(request number) says how to answer:
    "ok", "chunked", "500", "drop" (close without answering) or "slow"."""

    def __init__(self, certificate, behaviour=lambda n: "ok"):
        self.behaviour = behaviour
        self.connections = 0
        self.requests = 0
        self.server_names = set()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*certificate)
        self.context.sni_callback = lambda sock, name, ctx: self.server_names.add(name)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None
        self.port = None

    async def _handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                how = self.behaviour(self.requests)
                close = b"connection: close" in head.lower()
                if how == "drop":
                    break
                if how == "slow":
                    await asyncio.sleep(2)
                if how == "chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                else:
                    status = b"500 Oops" if how == "500" else b"200 OK"
                    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 3\r\n"
                                 + (b"Connection: close\r\n" if close else b"") + b"\r\nok\n")
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def __enter__(self):
        self.thread.start()

        async def start():
            return await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self):
        return "https://127.0.0.1:%d/" % self.port


def test_percentiles_use_the_nearest_rank():
    values = list(range(1, 101))
    assert [loadgen.percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert loadgen.percentile([7.0], 99) == 7.0
    assert loadgen.percentile([], 50) is None
    summary = loadgen.summarize([3.0, 1.0, 2.0, 10.0])
    assert summary == {"min": 1.0, "mean": 4.0, "p50": 2.0, "p90": 10.0, "p99": 10.0, "max": 10.0}
    assert loadgen.summarize([])["p99"] is None


@pytest.mark.parametrize("url, expected", [
    ("https://example.test/", ("example.test", 443, "/")),
    ("https://127.0.0.1:8443", ("127.0.0.1", 8443, "/")),
    ("https://[::1]:4443/a?b=c", ("::1", 4443, "/a?b=c")),
])
def test_targets_are_parsed_from_urls(url, expected):
    assert loadgen.parse_target(url) == expected


def test_plain_http_and_missing_targets_are_refused():
    with pytest.raises(ValueError):
        loadgen.parse_target("http://example.test/")
    with pytest.raises(ValueError):
        loadgen.parse_target()
    with pytest.raises(ValueError):
        loadgen.run("https://127.0.0.1:1/", rate=0, duration=1)


def test_new_connection_per_request_at_a_constant_rate(certificate):
    with Server(certificate) as server:
        started = time.monotonic()
        result = loadgen.run(server.url, rate=40, duration=1.0, sni="loadgen.test")
        elapsed = time.monotonic() - started
    assert result["scheduled"] == 40 and result["ok"] == 40 and result["errors"] == 0
    assert result["statuses"] == {"200": 40}
    assert server.connections == 40 and server.requests == 40 and result["connections"] == 40
    assert server.server_names == {"loadgen.test"}
    # The schedule, not the server, sets the pace: the last request starts at 39/40 s.
    assert 0.95 <= elapsed < 3.0
    latency = result["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert result["handshake_ms"]["p50"] > 0


def test_keep_alive_reuses_connections(certificate):
    with Server(certificate) as server:
        result = loadgen.run(server.url, rate=20, duration=1.0, new_connection_per_request=False)
    assert result["ok"] == 20 and result["errors"] == 0
    # Requests 50 ms apart on a local server rarely overlap: a few connections serve all
    # (one per request without keep-alive).
    assert server.requests == 20 and 1 <= server.connections <= 10
    assert result["connections"] == server.connections


def test_chunked_responses_are_read_to_the_end(certificate):
    with Server(certificate, behaviour=lambda n: "chunked") as server:
        result = loadgen.run(server.url, rate=10, duration=1.0, new_connection_per_request=False)
    assert result["ok"] == 10 and result["errors"] == 0
    assert server.connections < 10


def test_failures_are_counted_by_kind_and_never_stop_the_run(certificate):
    def behaviour(n):
        return {3: "500", 5: "drop", 7: "slow"}.get(n, "ok")

    with Server(certificate, behaviour=behaviour) as server:
        result = loadgen.run(server.url, rate=20, duration=0.5, timeout=0.5)
    assert result["scheduled"] == 10
    assert result["ok"] == 7 and result["errors"] == 3
    assert result["error_kinds"]["HTTP 500"] == 1
    assert result["error_kinds"]["timeout"] == 1
    assert sum(result["error_kinds"].values()) == 3
    assert result["statuses"]["500"] == 1 and result["statuses"]["200"] == 7


def closed_port():
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_refused_connection_is_an_error():
    result = loadgen.run("https://127.0.0.1:%d/" % closed_port(), rate=10, duration=0.3, timeout=2)
    assert result["scheduled"] == 3 and result["ok"] == 0 and result["errors"] == 3
    assert result["latency_ms"]["p50"] is None
    assert "ConnectionRefusedError" in result["error_kinds"]


def test_the_certificate_is_checked_when_a_ca_file_is_given(certificate):
    with Server(certificate) as server:
        trusted = loadgen.run(server.url, rate=5, duration=0.4, sni="loadgen.test", cafile=certificate[0])
        wrong_name = loadgen.run(server.url, rate=5, duration=0.4, sni="other.test", cafile=certificate[0])
    assert trusted["ok"] == 2 and trusted["errors"] == 0
    assert wrong_name["ok"] == 0 and wrong_name["errors"] == 2
    assert "SSLCertVerificationError" in wrong_name["error_kinds"]


def test_a_stop_file_ends_the_schedule_early(certificate, tmp_path):
    stop = tmp_path / "stop"
    with Server(certificate) as server:
        timer = threading.Timer(0.5, stop.touch)
        timer.start()
        started = time.monotonic()
        result = loadgen.run(server.url, rate=20, duration=30, stop_file=str(stop))
        timer.join()
    assert time.monotonic() - started < 5
    assert result["stopped_early"] and result["errors"] == 0
    assert 5 <= result["scheduled"] <= 20


def test_the_command_line_prints_and_writes_json(certificate, tmp_path, capsys):
    out = tmp_path / "result.json"
    with Server(certificate) as server:
        assert loadgen.main([server.url, "--rate", "10", "--duration", "0.5", "--keep-alive",
                             "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["ok"] == 5 and printed["new_connection_per_request"] is False
