#!/usr/bin/env python3
"""Constant-rate HTTPS load client (standard library only).

Requests start on a fixed schedule, one every 1/rate seconds, whether or not
earlier ones have finished (an open loop), so a slow server does not slow the
client down and hide its own latency. Each request's latency is measured from
the moment it was scheduled to start until its response was read completely.

    from loadgen import run
    result = run("https://127.0.0.1:443/", rate=50, duration=30)
    result["errors"], result["latency_ms"]["p99"]

    python3 loadgen.py https://127.0.0.1:443/ --rate 50 --duration 30 --sni ec.kmstls.test

By default every request opens a new connection and so costs a full TLS
handshake (no session is resumed); with new_connection_per_request=False,
requests share keep-alive connections, opening one more whenever none is idle.
Certificates are not verified unless cafile is given. The result is a dict
(printed as JSON by the command line) with the counts, the kinds of errors
and the latency percentiles in milliseconds.
"""

import argparse
import asyncio
import json
import math
import os
import ssl
import sys
import time
from urllib.parse import urlsplit

PERCENTILES = (50, 90, 99)


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an ascending list (None when it is empty)."""
    if not sorted_values:
        return None
    rank = max(1, int(math.ceil(pct / 100.0 * len(sorted_values))))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values_ms):
    """min, mean, p50, p90, p99 and max of a list of milliseconds, rounded to 0.01 ms."""
    values = sorted(values_ms)
    summary = {"min": None, "mean": None, "max": None}
    summary.update({"p%d" % pct: None for pct in PERCENTILES})
    if values:
        summary["min"] = values[0]
        summary["max"] = values[-1]
        summary["mean"] = sum(values) / len(values)
        for pct in PERCENTILES:
            summary["p%d" % pct] = percentile(values, pct)
    return {key: None if value is None else round(value, 2) for key, value in summary.items()}


def parse_target(url=None, host=None, port=None, path=None):
    """Return (host, port, path) from an https URL or from the parts given."""
    if url:
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise ValueError("only https URLs are supported, got %r" % url)
        host = host or parts.hostname
        port = port or parts.port or 443
        path = path or (parts.path or "/") + ("?" + parts.query if parts.query else "")
    if not host:
        raise ValueError("give a url or a host")
    return host, int(port or 443), path or "/"


class HTTPError(Exception):
    """A response that is not a complete HTTP/1.1 answer."""


async def read_response(reader):
    """Read one HTTP/1.x response; return (status, body length, server keeps the connection)."""
    status_line = await reader.readline()
    if not status_line:
        raise HTTPError("connection closed before the status line")
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or not fields[1].isdigit():
        raise HTTPError("bad status line %r" % status_line[:80])
    status = int(fields[1])
    headers = {}
    while True:
        line = await reader.readline()
        if not line:
            raise HTTPError("connection closed inside the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    keep = headers.get(b"connection", b"").lower() != b"close" and fields[0] == b"HTTP/1.1"
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        length = 0
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            length += len(await reader.readexactly(size))
            await reader.readexactly(2)
    elif b"content-length" in headers:
        length = len(await reader.readexactly(int(headers[b"content-length"])))
    else:
        length = len(await reader.read())
        keep = False
    return status, length, keep


def _error_kind(exc):
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "IncompleteRead"
    return type(exc).__name__


def _close(writer):
    try:
        writer.close()
    except Exception:  # closing a broken connection may fail; it is gone either way
        pass


class _Load:
    """The state of one run: the schedule, the idle connections and the results."""

    def __init__(self, host, port, path, sni, context, keep_alive, timeout):
        self.host, self.port, self.path = host, port, path
        self.sni = sni
        self.context = context
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.idle = []
        self.latencies = []
        self.handshakes = []
        self.statuses = {}
        self.errors = {}
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.request = (
            "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kmstls-loadgen\r\nConnection: %s\r\n\r\n"
            % (path, sni or host, "keep-alive" if keep_alive else "close")).encode()

    async def _connect(self):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname=self.sni or self.host)
        self.connections += 1
        self.handshakes.append((time.monotonic() - started) * 1000.0)
        return reader, writer

    async def _exchange(self):
        connection = self.idle.pop() if self.idle else await self._connect()
        reader, writer = connection
        try:
            writer.write(self.request)
            await writer.drain()
            status, _, keep = await read_response(reader)
        except BaseException:
            _close(writer)
            raise
        if self.keep_alive and keep:
            self.idle.append(connection)
        else:
            _close(writer)
        return status

    async def one(self, due):
        """One request scheduled at the monotonic time `due`."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status = await asyncio.wait_for(self._exchange(), self.timeout)
        except Exception as exc:  # every failure is counted by kind, none stops the run
            kind = _error_kind(exc)
            self.errors[kind] = self.errors.get(kind, 0) + 1
            return
        finally:
            self.in_flight -= 1
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if 200 <= status < 400:
            self.latencies.append((time.monotonic() - due) * 1000.0)
        else:
            kind = "HTTP %d" % status
            self.errors[kind] = self.errors.get(kind, 0) + 1


async def _run(load, rate, duration, stop_file):
    interval = 1.0 / rate
    total = int(round(rate * duration))
    started = time.monotonic()
    tasks = []
    stopped_early = False
    late = 0.0
    for index in range(total):
        due = started + index * interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = max(late, -delay)
        if stop_file and index % max(1, int(rate / 10)) == 0 and os.path.exists(stop_file):
            stopped_early = True
            break
        tasks.append(asyncio.ensure_future(load.one(due)))
    if tasks:
        await asyncio.wait(tasks)
    for _, writer in load.idle:
        _close(writer)
    return len(tasks), time.monotonic() - started, stopped_early, late


def run(url=None, rate=10.0, duration=10.0, new_connection_per_request=True, sni=None,
        host=None, port=None, path=None, timeout=10.0, cafile=None, stop_file=None):
    """Send `rate` requests a second for `duration` seconds; return what happened.

    url is an https URL, or give host, port and path. sni is the TLS server
    name and Host header (default: the host). Each request fails after
    `timeout` seconds. With cafile the server certificate is verified against
    it (and against sni); without, it is not. stop_file, when it appears,
    ends the schedule early. Returns a dict: scheduled, completed, ok, errors,
    error_kinds, statuses, connections, elapsed_s, achieved_rate,
    latency_ms and, for new connections, handshake_ms (min, mean, p50, p90,
    p99, max), plus the settings.
    """
    host, port, path = parse_target(url, host, port, path)
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    if cafile:
        context = ssl.create_default_context(cafile=cafile)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    load = _Load(host, port, path, sni, context, not new_connection_per_request, timeout)
    scheduled, elapsed, stopped_early, late = asyncio.run(_run(load, rate, duration, stop_file))
    ok = len(load.latencies)
    return {
        "target": "https://%s:%d%s" % (host, port, path),
        "sni": sni or host,
        "rate": rate,
        "duration_s": duration,
        "new_connection_per_request": bool(new_connection_per_request),
        "scheduled": scheduled,
        "completed": ok + sum(n for kind, n in load.errors.items() if kind.startswith("HTTP ")),
        "ok": ok,
        "errors": scheduled - ok,
        "error_kinds": load.errors,
        "statuses": load.statuses,
        "connections": load.connections,
        "max_in_flight": load.max_in_flight,
        "stopped_early": stopped_early,
        "max_schedule_lag_ms": round(late * 1000.0, 2),
        "elapsed_s": round(elapsed, 3),
        "achieved_rate": round(ok / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": summarize(load.latencies),
        "handshake_ms": summarize(load.handshakes),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="https://host[:port][/path]")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second (default 10)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--keep-alive", action="store_true",
                        help="reuse connections instead of one new connection per request")
    parser.add_argument("--sni", help="TLS server name and Host header (default: the URL's host)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--cafile", help="verify the server certificate against this file")
    parser.add_argument("--stop-file", help="end the schedule early once this file exists")
    parser.add_argument("--out", help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    result = run(args.url, rate=args.rate, duration=args.duration,
                 new_connection_per_request=not args.keep_alive, sni=args.sni,
                 timeout=args.timeout, cafile=args.cafile, stop_file=args.stop_file)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        with open(args.out + ".tmp", "w") as handle:
            handle.write(text + "\n")
        os.replace(args.out + ".tmp", args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
