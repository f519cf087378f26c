#!/usr/bin/env python3
"""Measure the collection on this machine and write the report docs/benchmark.md.

    python3 scripts/benchmark.py                  # every figure, as the report shows them
    python3 scripts/benchmark.py --runs 5         # median of 5 where a figure is cheap
    python3 scripts/benchmark.py --only 4,6 --keep
    python3 scripts/benchmark.py --render .cache/benchmark/results.json  # report again, no measuring

Everything runs in one go on this machine, in Debian 12 containers started
here from the local test image (systemd as PID 1, as in the Molecule
scenarios), with the real playbooks run by the virtualenv's ansible-playbook
and the upstream archives served from the local mirror on 127.0.0.1:

1. a fresh converge of playbooks/build.yml on one host, against the sum of
   the raw configure/make/make install steps of each component, replayed by
   hand (docker exec) on another fresh container from the build records the
   converge left on its host;
2. second converges of playbooks/build.yml and playbooks/site.yml;
3. deploying one host from a prebuilt bundle (playbooks/bundle.yml) against
   compiling on it, when the collection has that playbook;
4. full TLS handshakes per second with the key in the SoftHSM token against
   the same key type from a PEM file, with the same nginx (EC P-256 and
   RSA-2048), and resumed handshakes;
5. signing calls (C_Sign) in the token per 1,000 requests from clients that
   reconnect, with the session cache and tickets on and off;
6. time from a reload to the first handshake served by a new worker, and
   failed requests while nginx reloads under load;
plus a constant-rate load against the token-backed key (scripts/loadgen.py).

The benchmark is not a test and scripts/test.py does not run it. Every
container it starts is named kmstls-bench-* and removed at the end, also
after a failure or Ctrl-C (unless --keep).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import build_images
import devtools

PREFIX = "kmstls-bench-"
NODE = PREFIX + "node"          # converged with build.yml, then site.yml
RAW = PREFIX + "raw"            # compiles by hand, without Ansible
BUNDLE_NODE = PREFIX + "bundle-node"
IMAGE = build_images.IMAGE_REPO + ":12"
WORK = devtools.CACHE / "benchmark"
REPORT = devtools.ROOT / "docs" / "benchmark.md"
FIGURES = ("1", "2", "3", "4", "5", "6", "load")

# What the benchmark host serves: one token key of each type, and a server block each.
TOKEN = "kmstls-bench"
EC_PORT, RSA_PORT = 443, 8443
PEM_PORTS = {EC_PORT: 9443, RSA_PORT: 9444}  # the PEM-key copy of nginx, same container
BENCH_DIR = "/root/kmstls-bench"             # PEM keys and the copy's files (container only)
OPENSSL = "/usr/local/openssl/bin/openssl"
NGINX = "/usr/local/nginx/sbin/nginx"
NGINX_CONF = "/usr/local/nginx/conf/nginx.conf"
ERROR_LOG = "/var/log/nginx/error.log"
ACCESS_LOG = "/var/log/nginx/access.log"
BUILD_COMPONENTS = ("openssl", "p11_kit", "libp11", "nginx")  # the order of playbooks/build.yml
GOAL_CONVERGE_RATIO = 1.3
GOAL_SECOND_CONVERGE_S = 20.0


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and where its log is."""


def say(message):
    devtools.say(message)


# ---------------------------------------------------------------------------
# Pure helpers: parsing, statistics and the report (unit-tested)
# ---------------------------------------------------------------------------

_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<fields>(?:[a-z]+=\d+\s*)+)$", re.M)


def parse_recap(output, host):
    """Counts of the PLAY RECAP line of `host` ({'ok': .., 'changed': .., ...}), or None."""
    found = None
    for match in _RECAP_LINE.finditer(output):
        if match.group("host") == host:
            pairs = re.findall(r"([a-z]+)=(\d+)", match.group("fields"))
            found = {key: int(value) for key, value in pairs}
    return found


_TASK_TIME = re.compile(r"^(?P<name>\S.*?) -+ (?P<seconds>\d+(?:\.\d+)?)s\s*$", re.M)


def parse_task_times(output):
    """[(task name, seconds)] from the summary that the profile_tasks callback prints."""
    return [(m.group("name").strip(), float(m.group("seconds"))) for m in _TASK_TIME.finditer(output)]


def compile_seconds_in_converge(task_times):
    """Seconds a converge spent in source_build's configure/compile/install task, per component."""
    found = {}
    for name, seconds in task_times:
        match = re.search(r"Configure, compile and install (\S+)$", name)
        if match:
            found[match.group(1)] = found.get(match.group(1), 0.0) + seconds
    return found


def count_calls(log_text, call="C_Sign"):
    """How many times p11-kit's log-calls proxy logged the PKCS#11 function `call`.

    The proxy writes the function's name alone on a line when the call starts
    (then its arguments, then "C_Sign = CKR_OK"), so C_SignInit, C_SignFinal
    and the result lines are not counted.
    """
    return len(re.findall(r"^%s\r?$" % re.escape(call), log_text, re.M))


def count_reused(access_log_text):
    """(requests, resumed sessions) in lines of the role's access log format (reused=r or .)."""
    marks = re.findall(r" reused=([r.]) ", access_log_text)
    return len(marks), sum(1 for mark in marks if mark == "r")


def percentile(values, pct):
    """Nearest-rank percentile (the smallest value with pct % of the values at or below it)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats
    return ordered[min(int(rank), len(ordered)) - 1]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(numerator, denominator):
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def parse_s_time(output):
    """(connections, reused) that one `openssl s_time` run reports.

    s_time prints one mark per connection while it runs: '*' for a new
    session and 'r' for a resumed one, then "N connections in S real seconds".
    """
    match = re.search(r"^(\d+) connections in \d+ real seconds", output, re.M)
    if not match:
        raise ValueError("no 'connections in N real seconds' line in s_time output: %r" % output[-400:])
    marks = "".join(re.findall(r"^[*r]+$", output, re.M))
    return int(match.group(1)), marks.count("r")


def parse_flow_list(text, key):
    """The items of a one-line YAML flow sequence `key: [a, b]` (used for the package lists)."""
    match = re.search(r"^\s*%s:\s*\[(.*)\]\s*$" % re.escape(key), text, re.M)
    if not match:
        return []
    return [item.strip().strip("'\"") for item in match.group(1).split(",") if item.strip()]


def step_names(build_log):
    """{command: step name} from the '### step NAME: CMD' lines of a source_build log."""
    names = {}
    for match in re.finditer(r"^### step ([^:]+): (.*)$", build_log, re.M):
        names[match.group(2).strip()] = match.group(1).strip()
    return names


def raw_build_script(tree, steps, environment, log):
    """The shell script that replays one component's build steps, timing each one.

    Mirrors roles/source_build/tasks/build.yml: the same commands in the same
    order, in the unpacked tree, with the role's environment and KMSTLS_JOBS
    set to one job per CPU. Prints "STEP <index> <start> <end>" per step.
    """
    lines = ["set -e", "cd %s" % shlex.quote(tree)]
    for name, value in sorted(environment.items()):
        lines.append("export %s=%s" % (name, shlex.quote(str(value))))
    lines += ["KMSTLS_JOBS=$(nproc)", "export KMSTLS_JOBS"]
    for index, cmd in enumerate(steps):
        lines += [
            "start=$(date +%s.%N)",
            "( %s ) >> %s 2>&1" % (cmd, shlex.quote(log)),
            'echo "STEP %d $start $(date +%%s.%%N)"' % index,
        ]
    return "\n".join(lines) + "\n"


def parse_step_times(output):
    """{step index: seconds} from the STEP lines of raw_build_script's output."""
    return {int(i): float(end) - float(start)
            for i, start, end in re.findall(r"^STEP (\d+) (\d+\.\d+) (\d+\.\d+)$", output, re.M)}


def pem_variant(conf, pem_files, ports, workdir):
    """nginx.conf of the PEM-key copy: the same file with other ports, keys, PID and logs.

    pem_files maps a listen port to (certificate, key) paths; ports maps it to
    the copy's port. Everything else (workers, TLS settings, session cache,
    tickets, responses) stays as the role wrote it.
    """
    out = []
    port = None
    for line in conf.splitlines():
        stripped = line.strip()
        listen = re.match(r"listen\s+(?:\S+:)?(\d+)(\s.*)?;$", stripped)
        if listen:
            port = int(listen.group(1))
            if port not in ports:
                raise ValueError("no PEM copy port for listen %s" % port)
            line = line.replace(listen.group(0), "listen %d%s;" % (ports[port], listen.group(2) or ""))
        elif stripped.startswith("ssl_certificate_key "):
            line = re.sub(r"ssl_certificate_key .*;",
                          'ssl_certificate_key "%s";' % pem_files[port][1], line)
        elif stripped.startswith("ssl_certificate "):
            line = re.sub(r"ssl_certificate .*;", 'ssl_certificate "%s";' % pem_files[port][0], line)
        elif stripped.startswith("pid "):
            line = re.sub(r"pid .*;", "pid %s/nginx.pid;" % workdir, line)
        elif stripped.startswith("error_log "):
            line = re.sub(r"error_log \S+", "error_log %s/error.log" % workdir, line)
        elif stripped.startswith("access_log "):
            line = re.sub(r"access_log \S+", "access_log %s/access.log" % workdir, line)
        out.append(line)
    text = "\n".join(out) + "\n"
    if "engine:" in text:
        raise ValueError("the PEM copy of nginx.conf still references an engine key")
    return text


def session_settings(conf, cache, tickets):
    """nginx.conf with the session cache and tickets switched on or off."""
    if cache:
        conf = re.sub(r"ssl_session_cache off;", "ssl_session_cache shared:kmstls_tls:10m;", conf)
    else:
        conf = re.sub(r"ssl_session_cache [^;]+;", "ssl_session_cache off;", conf)
    return re.sub(r"ssl_session_tickets \w+;",
                  "ssl_session_tickets %s;" % ("on" if tickets else "off"), conf)


# --- the report ------------------------------------------------------------

def _s(seconds):
    if seconds is None:
        return "—"
    return "%.1f s" % seconds if seconds >= 1 else "%.0f ms" % (seconds * 1000)


def _x(value):
    return "—" if value is None else "%.2fx" % value


def _n(value, digits=0):
    return "—" if value is None else ("{:,.%df}" % digits).format(value)


def _yes(flag):
    return {True: "**met**", False: "**not met**", None: "not measured"}[flag]


def _skipped(figure, data):
    reason = data.get("skipped", {}).get(figure)
    return "Not measured: %s\n" % reason if reason else None


def render_report(data):
    """The Markdown report of one benchmark run (data: what main() collected)."""
    m = data["machine"]
    out = ["# Benchmark", ""]
    out += ["Produced by `%s` on %s; rerun that command to reproduce it. Every figure comes "
            "from this one run on one machine, described below. Ratios matter more than "
            "absolute numbers, which depend on the machine and on what else ran on it."
            % (data["command"], data["date"]), ""]
    if data.get("note"):
        out += ["> " + data["note"], ""]
    out += ["## Machine", "", "| | |", "|---|---|"]
    rows = [
        ("CPU", "%s, %s logical CPUs" % (m.get("cpu_model", "?"), m.get("cpus", "?"))),
        ("RAM", m.get("ram", "?")),
        ("kernel", m.get("kernel", "?")),
        ("Docker", m.get("docker", "?")),
        ("load average (1, 5, 15 min) at start", m.get("load_start", "?")),
        ("load average at end", m.get("load_end", "?")),
        ("container", "Debian %s (image %s), systemd as PID 1" % (m.get("debian", "?"), IMAGE)),
        ("OpenSSL", m.get("openssl", "?")),
        ("nginx", m.get("nginx", "?")),
        ("p11-kit", m.get("p11_kit", "?")),
        ("libp11", m.get("libp11", "?")),
        ("SoftHSM", m.get("softhsm", "?")),
        ("ansible-core", m.get("ansible", "?")),
        ("nginx workers", m.get("workers", "?")),
    ]
    out += ["| %s | %s |" % row for row in rows]
    out += ["", "## Summary", "", "| figure | measured | goal | |", "|---|---|---|---|"]
    for row in summary_rows(data):
        out.append("| %s | %s | %s | %s |" % row)
    out += [""]
    out += _figure1(data) + _figure2(data) + _figure3(data) + _figure4(data)
    out += _figure5(data) + _figure6(data) + _figure_load(data)
    return "\n".join(out).rstrip() + "\n"


def summary_rows(data):
    rows = []
    f1 = data.get("figure1")
    if f1:
        rows.append(("1. fresh converge of `playbooks/build.yml` / raw compile",
                     "%s / %s = %s" % (_s(f1["converge_s"]), _s(f1["raw_total_s"]), _x(f1["ratio"])),
                     "at most %.1fx" % GOAL_CONVERGE_RATIO, _yes(f1["goal_met"])))
    else:
        rows.append(("1. fresh converge / raw compile", "not measured", "at most 1.3x", ""))
    f2 = data.get("figure2")
    if f2:
        for name in ("build", "site"):
            part = f2.get(name)
            if part:
                rows.append(("2. second converge of `playbooks/%s.yml`" % name,
                             "%s, %s changed" % (_s(part["median_s"]), part["changed_text"]),
                             "under %d s, 0 changed" % GOAL_SECOND_CONVERGE_S if name == "build" else "",
                             _yes(part["goal_met"]) if name == "build" else ""))
    f3 = data.get("figure3")
    rows.append(("3. deploy from a bundle / compile on the node",
                 "%s / %s = %s" % (_s(f3["bundle_s"]), _s(f3["compile_s"]), _x(f3["ratio"]))
                 if f3 else "not measured", "", ""))
    f4 = data.get("figure4")
    if f4:
        for key in ("ec", "rsa"):
            row = f4["rows"].get("%s-new" % key)
            if row:
                rows.append(("4. full handshakes/s, %s: token / PEM" % f4["labels"][key],
                             "%s / %s = %s (worker CPU per handshake %s)" % (
                                 _n(row["token"]), _n(row["pem"]), _x(row["ratio"]), _x(row["cpu_ratio"])),
                             "", ""))
    f5 = data.get("figure5")
    if f5:
        for mode in f5["modes"]:
            rows.append(("5. C_Sign per 1,000 reconnecting requests, %s" % mode["label"],
                         _n(mode["per_1000"], 1), "", ""))
    f6 = data.get("figure6")
    if f6:
        rows.append(("6. validated reload to first handshake by a new worker",
                     "%s (median of %d)" % (_s(f6["validated"]["median_s"]),
                                            f6["validated"]["count"]), "", ""))
        rows.append(("6. failed requests over %d reloads under load" % f6["under_load"]["reloads"],
                     "%d of %s" % (f6["under_load"]["errors"], _n(f6["under_load"]["scheduled"])), "0", ""))
    load = data.get("load")
    if load:
        lat = load["latency_ms"]
        rows.append(("%d s at %s req/s, new TLS connection each, EC key in the token"
                     % (load["duration_s"], _n(load["rate"])),
                     "p50 %s ms, p99 %s ms, %d errors" % (lat["p50"], lat["p99"], load["errors"]), "", ""))
    return rows


def _section(data, key, title):
    """Start a report section: its heading, and the results under data[key].

    A figure that was not measured gets the reason instead (see _skipped).
    """
    out = ["## " + title, ""]
    results = data.get(key)
    if not results:
        out += [_skipped(key.replace("figure", ""), data) or "Not measured.", ""]
    return out, results


def _figure1(data):
    out, f1 = _section(data, "figure1", "1. Fresh converge against raw compile")
    if not f1:
        return out
    skipped = _skipped("1", data)
    out += [
        "`ansible-playbook playbooks/build.yml` on a fresh Debian %s container (one host), "
        "against the same configure, compile and install commands run by hand with `docker exec` "
        "on another fresh container with the same packages installed and the same archives "
        "unpacked beforehand (not timed). The commands and their environment are read from the "
        "build records that the converge left in `/var/lib/kmstls/builds/` on its host, so they "
        "are exactly what `roles/source_build` ran." % data["machine"].get("debian", "12"), "",
        "| component | configure | compile | install | raw total | same step inside the converge |",
        "|---|---|---|---|---|---|",
    ]
    for comp in f1["components"]:
        if comp.get("not_built"):
            out.append("| %s | — | — | — | not compiled | %s |" % (comp["name"], comp["not_built"]))
            continue
        steps = comp["steps"]

        def by_name(*names):
            total = [s["seconds"] for s in steps if s["name"] in names]
            return _s(sum(total)) if total else "—"
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            comp["name"], by_name("configure"), by_name("compile"),
            by_name("install", "remove the previous install"), _s(comp["total_s"]),
            _s(comp.get("in_converge_s"))))
    out += [
        "", "| | |", "|---|---|",
        "| raw compile, sum of the components | %s |" % _s(f1["raw_total_s"]),
        "| fresh converge of `playbooks/build.yml` (wall time of `ansible-playbook`) | %s |"
        % _s(f1["converge_s"]),
        "| compile steps inside that converge (profile_tasks) | %s |"
        % _s(f1.get("converge_compile_s")),
        "| converge / raw compile | **%s** (goal: at most %.1fx) |"
        % (_x(f1["ratio"]), GOAL_CONVERGE_RATIO),
        "| everything the converge did besides its compile steps | %s |" % _s(f1.get("overhead_s")),
        "| (raw compile + that) / raw compile | %s |" % _x(f1.get("estimate_ratio")),
        "", "Goal %s: the converge takes %s the raw compile time. Besides compiling, it installs "
        "the compilers and `-dev` packages (%s with the apt index refresh), gathers facts, copies "
        "and unpacks the archives and runs the roles' checks."
        % ("met" if f1["goal_met"] else "not met", _x(f1["ratio"]), _s(f1.get("packages_s"))), "",
    ]
    if f1.get("converge_compile_s") and f1["raw_total_s"]:
        speed = f1["converge_compile_s"] / f1["raw_total_s"]
        out += ["The compile steps took %s inside the converge and %s by hand (%s). They are the "
                "same commands on the same kind of container, so a difference far from 1.00x comes "
                "from what else the machine was doing at the time, not from Ansible; the last line "
                "of the table above is the ratio with the converge's compile steps at the raw "
                "speed (an estimate that removes that noise, not the measured goal)."
                % (_s(f1["converge_compile_s"]), _s(f1["raw_total_s"]), _x(speed)), ""]
    if f1.get("slowest"):
        out += ["Slowest tasks of the converge besides compiling:", ""]
        out += ["- %s: %s" % (name, _s(seconds)) for name, seconds in f1["slowest"]]
        out.append("")
    return out


def _figure2(data):
    out, f2 = _section(data, "figure2", "2. Second converge")
    if not f2:
        return out
    out += ["The same host again, nothing to do. Wall time of `ansible-playbook` and the "
            "`changed` count of its recap, median of %d runs." % f2["runs"], "",
            "| playbook | runs (s) | median | changed per run | goal |", "|---|---|---|---|---|"]
    for name in ("build", "site"):
        part = f2.get(name)
        if part:
            out.append("| `playbooks/%s.yml` | %s | %s | %s | %s |" % (
                name, ", ".join("%.1f" % s for s in part["times_s"]), _s(part["median_s"]),
                ", ".join(str(c) for c in part["changed"]),
                ("under %d s and 0 changed: %s" % (GOAL_SECOND_CONVERGE_S, _yes(part["goal_met"])))
                if name == "build" else "none set"))
    if f2.get("site_first_s") is not None:
        out += ["", "For reference, the first run of `playbooks/site.yml` on the built host "
                "(SoftHSM token, keys, certificates, nginx service) took %s." % _s(f2["site_first_s"])]
    return out + [""]


def _figure3(data):
    out, f3 = _section(data, "figure3", "3. Deploy from a prebuilt bundle against compiling on the node")
    if not f3:
        return out
    out += [f3["how"], "",
            "| | |", "|---|---|",
            "| pack the bundle on the built host (`playbooks/bundle.yml`, once per platform) | %s |"
            % _s(f3.get("make_s")),
            "| deploy one fresh node from the bundle | %s |" % _s(f3["bundle_s"]),
            "| compile on one fresh node (figure 1's converge) | %s |" % _s(f3["compile_s"]),
            "| bundle / compile | **%s** |" % _x(f3["ratio"]), ""]
    return out


def _figure4(data):
    out, f4 = _section(data, "figure4", "4. TLS handshakes per second: key in the token against a PEM file")
    if not f4:
        return out
    out += [
        "The same nginx binary and configuration (as the role wrote it: %s workers, TLS 1.2 and "
        "1.3, session cache and tickets on) serves each key type twice in the same container: from "
        "the SoftHSM token through the pkcs11 engine, and from a PEM key generated for the "
        "benchmark only (a second nginx master on other ports, whose nginx.conf differs only in "
        "ports, key, certificate, PID file and logs). The client is the collection's "
        "`openssl s_time -www /` (TLS 1.3), %d in parallel for %d s inside the container against "
        "127.0.0.1; median of %d runs, token and PEM runs interleaved. Client and server share "
        "the machine's CPUs."
        % (data["machine"].get("workers", "?"), f4["clients"], f4["seconds"], f4["runs"]), "",
        "| key | handshakes | token (per s) | PEM file (per s) | token / PEM "
        "| worker CPU per handshake, token | PEM | token / PEM | resumed in the runs |",
        "|---|---|---|---|---|---|---|---|---|"]
    for name, row in sorted(f4["rows"].items()):
        key, mode = name.split("-")
        out.append("| %s | %s | %s | %s | **%s** | %s ms | %s ms | %s | %s |" % (
            f4["labels"][key], "full (`-new`)" if mode == "new" else "resumed (`-reuse`)",
            _n(row["token"]), _n(row["pem"]), _x(row["ratio"]), _n(row.get("token_cpu_ms"), 2),
            _n(row.get("pem_cpu_ms"), 2), _x(row.get("cpu_ratio")), row.get("reused_text", "")))
    out += ["", "Worker CPU per handshake is the CPU time (user and system) of the serving nginx's "
            "workers during the runs divided by the connections made: it does not depend on the "
            "client's share of the CPUs. With SoftHSM the signature is computed in the worker "
            "process itself; with a network key store the worker waits for a round trip instead."]
    return out + [""]


def _figure5(data):
    out, f5 = _section(data, "figure5", "5. Signing calls in the token per 1,000 requests")
    if not f5:
        return out
    out += [
        "%d clients make %d HTTPS requests each to the EC server block, each on a new TCP "
        "connection (`Connection: close`), offering the TLS session of their previous "
        "connection as a browser does. `C_Sign` calls are counted in nginx's error log with "
        "`pkcs11_log_calls: true` (p11-kit's log-calls proxy; applied with "
        "`playbooks/serve.yml -e pkcs11_log_calls=true`, then nginx restarted). The session "
        "cache and tickets are switched by editing `ssl_session_cache` and `ssl_session_tickets` "
        "in the benchmark host's nginx.conf and a validated reload. With a cloud key store every "
        "`C_Sign` is a network round trip." % (f5["clients"], f5["per_client"]), "",
        "| session cache | tickets | requests | resumed | C_Sign calls | per 1,000 requests |",
        "|---|---|---|---|---|---|"]
    for mode in f5["modes"]:
        out.append("| %s | %s | %s | %s | %s | **%s** |" % (
            "on" if mode["cache"] else "off", "on" if mode["tickets"] else "off",
            _n(mode["requests"]), _n(mode["resumed"]), _n(mode["c_sign"]), _n(mode["per_1000"], 1)))
    return out + [""]


def _figure6(data):
    out, f6 = _section(data, "figure6", "6. Reload")
    if not f6:
        return out
    out += [
        "From the reload command to the first successful full handshake served by a new "
        "worker, recognised by `pid=` in the access log (the role's log format); a probe "
        "client inside the container makes new connections to 127.0.0.1 until one is served "
        "by a worker that did not exist before the reload. `systemctl reload nginx` is the "
        "role's validated reload (`nginx -t`, which loads the keys from the token, then "
        "SIGHUP); `kill -HUP` is the signal alone.", "",
        "| reload | reloads | command returned (median) "
        "| first handshake by a new worker: median | p90 | max |",
        "|---|---|---|---|---|---|"]
    for key, label in (("validated", "`systemctl reload nginx`"), ("hup", "`kill -HUP` of the master")):
        part = f6.get(key)
        if part:
            out.append("| %s | %d | %s | **%s** | %s | %s |" % (
                label, part["count"], _s(part["command_median_s"]), _s(part["median_s"]),
                _s(part.get("p90_s")), _s(part["max_s"])))
    load = f6["under_load"]
    out += ["", "Under load: %d validated reloads %.1f s apart while `scripts/loadgen.py` sent "
            "%s requests a second (a new TLS connection each) to the EC server block: "
            "**%d failed** of %s requests%s; latency p50 %s ms, p99 %s ms, max %s ms." % (
                load["reloads"], load["interval_s"], _n(load["rate"]), load["errors"],
                _n(load["scheduled"]),
                (" (%s)" % ", ".join("%s: %d" % kv for kv in sorted(load["error_kinds"].items())))
                if load["error_kinds"] else "",
                load["latency_ms"]["p50"], load["latency_ms"]["p99"], load["latency_ms"]["max"]), ""]
    return out


def _figure_load(data):
    out, load = _section(data, "load", "Constant-rate load")
    if not load:
        return out
    lat, hs = load["latency_ms"], load.get("handshake_ms") or {}
    out += [
        "`scripts/loadgen.py` from the machine to the container for %d s at %s requests a "
        "second (open loop: latency counts from the moment a request was due), each request on "
        "a new TLS connection without resumption, so each one is a full handshake signed in the "
        "token (EC P-256)." % (load["duration_s"], _n(load["rate"])), "",
        "| requests | ok | errors | achieved rate | latency p50 | p90 | p99 | max "
        "| handshake p50 | p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| %s | %s | %d | %s/s | %s ms | %s ms | %s ms | %s ms | %s ms | %s ms |" % (
            _n(load["scheduled"]), _n(load["ok"]), load["errors"], load["achieved_rate"],
            lat["p50"], lat["p90"], lat["p99"], lat["max"], hs.get("p50", "—"), hs.get("p99", "—")), ""]
    if load.get("error_kinds"):
        out += ["Errors: %s." % ", ".join("%s: %d" % kv for kv in sorted(load["error_kinds"].items())), ""]
    return out


# ---------------------------------------------------------------------------
# Docker and Ansible
# ---------------------------------------------------------------------------

def docker(*args, check=True, input_text=None, timeout=None):
    result = subprocess.run(["docker"] + list(args), capture_output=True, text=True,
                            input=input_text, timeout=timeout)
    if check and result.returncode != 0:
        raise BenchError("docker %s failed (exit %d): %s" % (
            " ".join(args[:3]), result.returncode, (result.stderr or result.stdout).strip()[-1500:]))
    return result


def sh(container, script, check=True, timeout=None):
    """Run a shell script in a container as root; return the completed process."""
    result = docker("exec", "-i", container, "sh", "-c", script, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise BenchError("in %s, `%s` failed (exit %d):\n%s" % (
            container, script.strip().splitlines()[0][:120] if script.strip() else "", result.returncode,
            (result.stdout + result.stderr).strip()[-2000:]))
    return result


def put_file(container, path, text):
    docker("exec", "-i", container, "sh", "-c", "cat > %s" % shlex.quote(path), input_text=text)


class Containers:
    """The containers of this run, removed at the end unless kept."""

    def __init__(self, keep):
        self.keep = keep
        self.names = []

    def exists(self, name):
        state = docker("inspect", "--format", "{{.State.Running}}", name, check=False)
        return state.stdout.strip() == "true"

    def start(self, name):
        assert name.startswith(PREFIX)
        docker("rm", "--force", name, check=False)  # a leftover of an earlier --keep run
        docker("run", "--detach", "--name", name, "--hostname", name,
               "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
               "--tmpfs", "/run", "--tmpfs", "/run/lock", IMAGE, "/lib/systemd/systemd")
        self.names.append(name)
        for _ in range(120):
            state = sh(name, "systemctl is-system-running 2>/dev/null || true",
                       check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise BenchError("systemd in %s did not finish booting (state: %s)" % (name, state))

    def adopt(self, name):
        self.names.append(name)

    def remove(self, name):
        if name in self.names:
            self.names.remove(name)
        docker("rm", "--force", name, check=False)

    def cleanup(self):
        if self.keep:
            if self.names:
                say("kept the containers %s (--keep); remove them with: docker rm -f %s"
                    % (", ".join(self.names), " ".join(self.names)))
            return
        for name in list(self.names):
            self.remove(name)
        say("removed the benchmark containers")


def group_vars():
    """Inventory settings of the benchmark host: one EC and one RSA key in SoftHSM."""
    names = ["DNS:localhost", "IP:127.0.0.1"]
    settings = {
        "pkcs11_backend": "softhsm",
        "pkcs11_token_label": TOKEN,
        # Values for a throwaway token in a throwaway container, not secrets.
        "pkcs11_user_pin": "bench-user-pin-1234",
        "pkcs11_so_pin": "bench-so-pin-5678",
        "pkcs11_softhsm_keys": [
            {"label": "bench-ec-p256", "id": "01", "type": "ec", "common_name": "localhost",
             "subject_alt_names": names},
            {"label": "bench-rsa-2048", "id": "02", "type": "rsa", "common_name": "localhost",
             "subject_alt_names": names},
        ],
        "nginx_servers": [
            {"server_names": ["localhost"], "listen": [str(EC_PORT)],
             "certificate": "/etc/kmstls/certs/bench-ec-p256.crt",
             "key": {"token": TOKEN, "object": "bench-ec-p256"}, "body": "ec key in the token\n"},
            {"server_names": ["localhost"], "listen": [str(RSA_PORT)],
             "certificate": "/etc/kmstls/certs/bench-rsa-2048.crt",
             "key": {"token": TOKEN, "object": "bench-rsa-2048"}, "body": "rsa key in the token\n"},
        ],
    }
    return settings


def write_inventory(name, groups, settings):
    """An inventory folder under .cache/benchmark (JSON is YAML, so no YAML writer is needed).

    groups maps a group name to its hosts; settings apply to all of them.
    """
    folder = WORK / "inventory" / name
    (folder / "group_vars").mkdir(parents=True, exist_ok=True)
    hosts_doc = {group: {"hosts": {host: {"ansible_connection": "community.docker.docker"}
                                   for host in hosts}}
                 for group, hosts in groups.items()}
    (folder / "hosts.yml").write_text(json.dumps(hosts_doc, indent=2) + "\n")
    (folder / "group_vars" / "all.yml").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


class Ansible:
    """Runs the collection's playbooks from the virtualenv and keeps their output."""

    def __init__(self, mirror_url, extra_vars):
        self.mirror_url = mirror_url
        self.extra_vars = extra_vars
        self.count = 0

    def play(self, playbook, inventory, label, extra=None):
        """Run a playbook; return (wall seconds, its output, the file the output was saved to)."""
        variables = dict(self.extra_vars, kmstls_mirror_url=self.mirror_url)
        variables.update(extra or {})
        cmd = [devtools.venv_bin("ansible-playbook"), "-i", str(inventory),
               str(devtools.ROOT / playbook), "-e", json.dumps(variables)]
        self.count += 1
        log = WORK / "logs" / ("%02d-%s.log" % (self.count, re.sub(r"[^\w.-]+", "-", label)))
        log.parent.mkdir(parents=True, exist_ok=True)
        print("    $ ansible-playbook -i %s %s%s" % (
            os.path.relpath(inventory, devtools.ROOT), playbook,
            "".join(" -e %s=%s" % kv for kv in (extra or {}).items())), flush=True)
        started = time.monotonic()
        # A session of its own, so that an interrupted benchmark stops the
        # playbook and every worker it forked before removing the containers.
        process = subprocess.Popen(cmd, env=devtools.tool_env({"ANSIBLE_NOCOLOR": "1"}),
                                   cwd=devtools.ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = process.communicate()
        except BaseException:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
        elapsed = time.monotonic() - started
        log.write_text(output)
        if process.returncode != 0:
            raise BenchError("%s failed (exit %d) after %.0f s; its output is in %s:\n%s" % (
                playbook, process.returncode, elapsed, log, output[-3000:]))
        return elapsed, output, log


# ---------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------

def machine_facts():
    facts = {"load_start": Path("/proc/loadavg").read_text().split()[:3]}
    facts["load_start"] = " ".join(facts["load_start"])
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    facts["cpu_model"] = model.group(1).strip() if model else platform.processor() or "?"
    facts["cpus"] = os.cpu_count()
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    facts["ram"] = "%.1f GiB" % (int(mem.group(1)) / 1048576.0) if mem else "?"
    facts["kernel"] = platform.release()
    server = docker("version", "--format", "{{.Server.Version}}", check=False)
    facts["docker"] = server.stdout.strip() or "?"
    ansible = subprocess.run([devtools.venv_bin("ansible"), "--version"],
                             capture_output=True, text=True)
    found = re.search(r"core ([\d.]+)", ansible.stdout)
    facts["ansible"] = found.group(1) if found else "?"
    return facts


def node_versions(container, libp11_stand_in):
    """Versions of what the converged host runs, read on the host itself."""
    script = r"""
        echo "debian=$(cat /etc/debian_version)"
        echo "openssl=$(%(openssl)s version)"
        echo "nginx=$(%(nginx)s -v 2>&1 | sed 's/^nginx version: //')"
        echo "p11_kit=$(sed -n 's/^Version: //p' /usr/local/p11-kit/lib/pkgconfig/p11-kit-1.pc)"
        echo "libp11=$(sed -n 's/^Version: //p' /usr/local/libp11/lib/pkgconfig/libp11.pc 2>/dev/null)"
        echo "softhsm=$(dpkg-query -W -f '${Version}' softhsm2 2>/dev/null)"
        echo "workers=$(pgrep -P "$(cat /run/nginx.pid 2>/dev/null || echo 0)" 2>/dev/null | wc -l)"
    """ % {"openssl": OPENSSL, "nginx": NGINX}
    found = dict(line.split("=", 1) for line in sh(container, script).stdout.splitlines() if "=" in line)
    if libp11_stand_in:
        found["libp11"] = ("0.4.11 engine from Debian 11's libengine-pkcs11-openssl package "
                           "(the test bed's stand-in: no libp11 release archive in the mirror)")
    if found.get("softhsm"):
        found["softhsm"] = "%s (Debian package softhsm2)" % found["softhsm"]
    else:
        found.pop("softhsm", None)
    if found.get("workers") in (None, "0"):
        found.pop("workers", None)
    return found


def read_build_records(container):
    """The source_build records left on a converged host: {component: inputs}."""
    records = {}
    for name in BUILD_COMPONENTS:
        result = sh(container, "cat /var/lib/kmstls/builds/%s.json" % name, check=False)
        if result.returncode == 0:
            inputs = json.loads(result.stdout)["inputs"]
            log = sh(container, "cat /var/log/kmstls/build-%s.log" % name, check=False).stdout
            inputs["step_names"] = step_names(log)
            records[name] = inputs
    return records


def mirror_archive(sha256):
    for path in sorted(devtools.MIRROR_DIR.glob("*.tar.*")):
        if devtools.sha256_of(path) == sha256:
            return path
    raise BenchError("no archive with SHA-256 %s in %s" % (sha256, devtools.MIRROR_DIR))


def raw_compile(containers, records):
    """Replay each recorded build by hand on a fresh container; return per-component timings."""
    containers.start(RAW)
    packages_text = (devtools.ROOT / "roles/source_build/vars/Debian.yml").read_text()
    packages = parse_flow_list(packages_text, "common")
    for name in records:
        packages += parse_flow_list(packages_text, name)
    say("installing the build packages in %s (not timed): %s" % (RAW, " ".join(packages)))
    sh(RAW, "export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && "
            "apt-get install -y -qq %s >/dev/null" % " ".join(shlex.quote(p) for p in packages))
    src = "/usr/local/src/kmstls"
    sh(RAW, "mkdir -p %s /var/log/kmstls" % src)
    timings = []
    for name, inputs in records.items():
        archive = mirror_archive(inputs["sha256"])
        docker("cp", str(archive), "%s:%s/%s" % (RAW, src, archive.name))
        tree = "%s/%s" % (src, re.sub(r"\.(tar\.gz|tgz|tar\.xz|tar\.bz2)$", "", archive.name))
        sh(RAW, "cd %s && tar -xf %s" % (src, shlex.quote(archive.name)))
        script = raw_build_script(tree, inputs["steps"], inputs.get("environment") or {},
                                  "/var/log/kmstls/raw-%s.log" % name)
        say("compiling %s by hand (%d steps)" % (name, len(inputs["steps"])))
        result = sh(RAW, script, check=False)
        if result.returncode != 0:
            log = sh(RAW, "tail -n 30 /var/log/kmstls/raw-%s.log" % name, check=False).stdout
            raise BenchError("the raw build of %s failed in %s:\n%s" % (name, RAW, log))
        seconds = parse_step_times(result.stdout)
        steps = [{"name": inputs["step_names"].get(cmd.strip(), "step %d" % (i + 1)), "cmd": cmd,
                  "seconds": seconds[i]} for i, cmd in enumerate(inputs["steps"])]
        total = sum(s["seconds"] for s in steps)
        print("    %-8s %s  total %.1f s" % (name, "  ".join("%s %.1f s" % (s["name"], s["seconds"])
                                                          for s in steps), total), flush=True)
        timings.append({"name": name, "steps": steps, "total_s": total})
    containers.remove(RAW)
    return timings


def figure1(ctx):
    say("figure 1: fresh converge of playbooks/build.yml on %s" % NODE)
    ctx.containers.start(NODE)
    elapsed, output, _ = ctx.ansible.play("playbooks/build.yml", ctx.inventory, "fresh-build")
    recap = parse_recap(output, NODE)
    tasks = parse_task_times(output)
    in_converge = compile_seconds_in_converge(tasks)
    print("    fresh converge %.1f s, recap %s" % (elapsed, recap), flush=True)
    ctx.fresh_build_s = elapsed
    records = read_build_records(NODE)
    say("figure 1: the same build commands by hand on a fresh container")
    components = raw_compile(ctx.containers, records)
    for comp in components:
        comp["in_converge_s"] = in_converge.get(comp["name"])
    if "libp11" not in records:
        components.insert(2, {"name": "libp11",
                              "not_built": "prebuilt engine copied (`libp11_engine_src`)"})
    raw_total = sum(c.get("total_s", 0.0) for c in components)
    packages = sum(s for n, s in tasks if "Install the compilers" in n or "Refresh the apt" in n)
    slowest = [(n, s) for n, s in tasks if "Configure, compile and install" not in n][:5]
    result = {
        "converge_s": elapsed, "recap": recap, "raw_total_s": raw_total,
        "ratio": ratio(elapsed, raw_total), "components": components,
        "converge_compile_s": sum(in_converge.values()) if in_converge else None,
        "packages_s": packages or None, "slowest": slowest,
    }
    result["goal_met"] = result["ratio"] is not None and result["ratio"] <= GOAL_CONVERGE_RATIO
    result.update(overhead_estimate(elapsed, result["converge_compile_s"], raw_total))
    return result


def overhead_estimate(converge_s, compile_in_converge_s, raw_total_s):
    """What the converge spent besides its compile steps, and the ratio it would have had
    if its compile steps had run as fast as the raw ones (a check on machine noise)."""
    if compile_in_converge_s is None or not raw_total_s:
        return {"overhead_s": None, "estimate_ratio": None}
    overhead = converge_s - compile_in_converge_s
    return {"overhead_s": overhead, "estimate_ratio": (raw_total_s + overhead) / raw_total_s}


def second_converges(ctx, playbook, runs):
    times, changed = [], []
    for index in range(runs):
        elapsed, output, _ = ctx.ansible.play(playbook, ctx.inventory, "second-%s-%d"
                                              % (Path(playbook).stem, index + 1))
        recap = parse_recap(output, NODE) or {}
        times.append(elapsed)
        changed.append(recap.get("changed"))
        print("    %s run %d: %.1f s, changed=%s" % (playbook, index + 1, elapsed, recap.get("changed")),
              flush=True)
    part = {"times_s": times, "median_s": median(times), "changed": changed,
            "changed_text": "/".join(str(c) for c in changed)}
    part["goal_met"] = part["median_s"] < GOAL_SECOND_CONVERGE_S and all(c == 0 for c in changed)
    return part


def bundle_playbook():
    return devtools.ROOT / "playbooks" / "bundle.yml"


def figure3(ctx):
    """Deploy a fresh node from a bundle against compiling on it (figure 1's converge).

    The bundle is packed by playbooks/bundle.yml on the benchmark host, which
    is built already (so it compiles nothing and only packs), then installed
    by playbooks/build.yml with kmstls_bundle on another fresh container.
    """
    if not bundle_playbook().exists():
        raise Skip("playbooks/bundle.yml does not exist in this checkout, so there is no bundle "
                   "to deploy from")
    say("figure 3: pack a bundle on %s with playbooks/bundle.yml" % NODE)
    bundles = WORK / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    for old in bundles.glob("kmstls-stack-*"):
        old.unlink()
    builder = write_inventory("builder", {"kmstls_builder": [NODE]}, group_vars())
    make_s, _, _ = ctx.ansible.play("playbooks/bundle.yml", builder, "bundle-make",
                                    {"bundle_dir": str(bundles)})
    made = sorted(bundles.glob("kmstls-stack-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    if not made:
        raise BenchError("playbooks/bundle.yml left no kmstls-stack-*.tar.gz in %s" % bundles)
    bundle = made[-1]
    say("figure 3: deploy %s on a fresh container from %s" % (BUNDLE_NODE, bundle.name))
    ctx.containers.start(BUNDLE_NODE)
    target = write_inventory("bundle-node", {"kmstls_nginx": [BUNDLE_NODE]}, group_vars())
    bundle_s, output, _ = ctx.ansible.play("playbooks/build.yml", target, "bundle-deploy",
                                           {"kmstls_bundle": str(bundle)})
    recap = parse_recap(output, BUNDLE_NODE)
    version = sh(BUNDLE_NODE, "%s -v 2>&1 && %s version" % (NGINX, OPENSSL)).stdout.split("\n")[0]
    compilers = sh(BUNDLE_NODE, "command -v gcc cc make || true", check=False).stdout.split()
    print("    packed in %.1f s (%.1f MB); deployed in %.1f s, recap %s; %s; compilers on the node: %s"
          % (make_s, bundle.stat().st_size / 1e6, bundle_s, recap, version, compilers or "none"),
          flush=True)
    ctx.containers.remove(BUNDLE_NODE)
    compile_s = ctx.fresh_build_s
    return {"make_s": make_s, "bundle_s": bundle_s, "compile_s": compile_s,
            "ratio": ratio(bundle_s, compile_s), "recap": recap, "bundle": bundle.name,
            "size_mb": bundle.stat().st_size / 1e6, "compilers": compilers,
            "how": "`playbooks/bundle.yml` packs the stack on the host that figure 1 built (it "
                   "compiles nothing there, since the builds match their records) into a %.1f MB "
                   "bundle on the controller. `playbooks/build.yml -e kmstls_bundle=<bundle>` then "
                   "deploys it to a fresh Debian 12 container, which compiles nothing (compilers "
                   "found on it afterwards: %s). Compared with figure 1's fresh converge of "
                   "`playbooks/build.yml`, which compiles on the node; both are wall times of "
                   "`ansible-playbook` for one host."
                   % (bundle.stat().st_size / 1e6, ", ".join(compilers) or "none")}


class Skip(Exception):
    """A figure that cannot be measured here; the message says why."""


def setup_pem_copy(container):
    """Start a second nginx master serving PEM keys of the same types on PEM_PORTS."""
    keys = {EC_PORT: "ec", RSA_PORT: "rsa"}
    script = r"""
        set -e
        mkdir -p %(dir)s && chmod 700 %(dir)s && cd %(dir)s
        O=%(openssl)s
        if [ ! -s ec.key ]; then
          env -u OPENSSL_CONF $O genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key
          env -u OPENSSL_CONF $O genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
            -out rsa.key 2>/dev/null
          for k in ec rsa; do
            env -u OPENSSL_CONF $O req -x509 -new -key $k.key -subj /CN=localhost -days 2 -out $k.crt
          done
        fi
    """ % {"dir": BENCH_DIR, "openssl": OPENSSL}
    sh(container, script)
    conf = sh(container, "cat %s" % NGINX_CONF).stdout
    pem = {port: ("%s/%s.crt" % (BENCH_DIR, kind), "%s/%s.key" % (BENCH_DIR, kind))
           for port, kind in keys.items()}
    put_file(container, "%s/nginx-pem.conf" % BENCH_DIR, pem_variant(conf, pem, PEM_PORTS, BENCH_DIR))
    sh(container, "cd %(d)s && if [ -s nginx.pid ] && kill -0 $(cat nginx.pid) 2>/dev/null; then "
                  "%(n)s -c %(d)s/nginx-pem.conf -s reload; else %(n)s -c %(d)s/nginx-pem.conf; fi"
       % {"d": BENCH_DIR, "n": NGINX})
    wait_for_port(container, PEM_PORTS[EC_PORT])
    wait_for_port(container, PEM_PORTS[RSA_PORT])


def wait_for_port(container, port):
    sh(container, "for i in $(seq 100); do echo | %s s_client -connect 127.0.0.1:%d >/dev/null 2>&1 "
                  "&& exit 0; sleep 0.2; done; exit 1" % (OPENSSL, port))


def s_time(container, port, mode, seconds, clients, pid_file):
    """One handshake run: `clients` parallel `openssl s_time` against 127.0.0.1:port.

    Returns {rate, connections, reused, worker_cpu_ms}: handshakes per second
    of wall time, and the CPU time the nginx workers (children of the master
    in pid_file) spent per connection, which does not depend on the client.
    """
    script = r"""
        cd %(dir)s && rm -f stime.*
        cpu() { awk '{ t += $14 + $15 } END { print t + 0 }' \
                  $(for p in $(pgrep -P "$(cat %(pid)s)"); do echo /proc/$p/stat; done); }
        before=$(cpu)
        start=$(date +%%s.%%N)
        for i in $(seq %(clients)d); do
          %(openssl)s s_time -connect 127.0.0.1:%(port)d -%(mode)s -time %(seconds)d -www / \
            > stime.$i 2>&1 &
        done
        wait
        echo "ELAPSED $start $(date +%%s.%%N)"
        echo "CPU $before $(cpu) $(getconf CLK_TCK)"
        for i in $(seq %(clients)d); do echo "=== $i"; cat stime.$i; done
    """ % {"dir": BENCH_DIR, "clients": clients, "openssl": OPENSSL, "port": port, "mode": mode,
           "seconds": seconds, "pid": pid_file}
    output = sh(container, "env -u OPENSSL_CONF sh -c %s" % shlex.quote(script)).stdout
    return parse_s_time_run(output)


def parse_s_time_run(output):
    """What s_time() measured, from its script's output (see s_time)."""
    start, end = re.search(r"^ELAPSED (\S+) (\S+)$", output, re.M).groups()
    before, after, ticks = re.search(r"^CPU (\d+) (\d+) (\d+)$", output, re.M).groups()
    total = reused = 0
    for part in output.split("=== ")[1:]:
        connections, resumed = parse_s_time(part)
        total += connections
        reused += resumed
    cpu_ms = (int(after) - int(before)) * 1000.0 / int(ticks)
    return {"rate": total / (float(end) - float(start)), "connections": total, "reused": reused,
            "worker_cpu_ms": cpu_ms / total if total else None}


def figure4(ctx):
    say("figure 4: handshakes per second, token against PEM file")
    setup_pem_copy(NODE)
    labels = {"ec": "EC P-256", "rsa": "RSA-2048"}
    pid_files = {"token": "/run/nginx.pid", "pem": BENCH_DIR + "/nginx.pid"}
    samples = {}
    for run in range(ctx.args.runs):
        for key, port in (("ec", EC_PORT), ("rsa", RSA_PORT)):
            for mode in ("new", "reuse"):
                for source, target in (("token", port), ("pem", PEM_PORTS[port])):
                    got = s_time(NODE, target, mode, ctx.args.handshake_seconds, ctx.args.clients,
                                 pid_files[source])
                    samples.setdefault((key, mode, source), []).append(got)
                    print("    run %d %-3s %-5s %-5s %8.1f/s  %5.2f ms worker CPU each  "
                          "(%d connections, %d resumed)" % (
                              run + 1, key, mode, source, got["rate"], got["worker_cpu_ms"] or 0,
                              got["connections"], got["reused"]), flush=True)
    rows = {}
    for key in labels:
        for mode in ("new", "reuse"):
            row = {}
            for source in ("token", "pem"):
                runs = samples[(key, mode, source)]
                row[source] = median([r["rate"] for r in runs])
                row[source + "_cpu_ms"] = median([r["worker_cpu_ms"] for r in runs])
            both = samples[(key, mode, "token")] + samples[(key, mode, "pem")]
            row["ratio"] = ratio(row["token"], row["pem"])
            row["cpu_ratio"] = ratio(row["token_cpu_ms"], row["pem_cpu_ms"])
            row["reused_text"] = "%s of %s" % (_n(sum(r["reused"] for r in both)),
                                               _n(sum(r["connections"] for r in both)))
            rows["%s-%s" % (key, mode)] = row
    return {"rows": rows, "labels": labels, "runs": ctx.args.runs,
            "seconds": ctx.args.handshake_seconds, "clients": ctx.args.clients}


def node_address(container):
    """Where this machine reaches the container's nginx: its bridge address."""
    address = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                     container).stdout.split()
    for candidate in address:
        try:
            with socket.create_connection((candidate, EC_PORT), timeout=3):
                return candidate
        except OSError:
            continue
    raise BenchError("cannot reach %s's port %d at %s from this machine" % (container, EC_PORT, address))


def reconnecting_clients(address, port, clients, per_client):
    """Clients that each make `per_client` requests, one TCP connection each, resuming their session."""
    results = {"ok": 0, "errors": 0, "resumed": 0}
    lock = threading.Lock()

    def client():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        session = None
        for _ in range(per_client):
            try:
                with socket.create_connection((address, port), timeout=10) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                        data = b""
                        while True:
                            chunk = tls.recv(65536)
                            if not chunk:
                                break
                            data += chunk
                        resumed = tls.session_reused
                        session = tls.session
                ok = data.startswith(b"HTTP/1.1 200")
            except (OSError, ssl.SSLError):
                ok, resumed = False, False
            with lock:
                results["ok" if ok else "errors"] += 1
                results["resumed"] += 1 if ok and resumed else 0

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def log_size(container, path):
    return int(sh(container, "stat -c %%s %s" % path).stdout.strip())


def log_since(container, path, offset):
    return sh(container, "tail -c +%d %s" % (offset + 1, path)).stdout


def figure5(ctx):
    say("figure 5: C_Sign calls per 1,000 reconnecting requests")
    ctx.ansible.play("playbooks/serve.yml", ctx.inventory, "log-calls-on", {"pkcs11_log_calls": True})
    sh(NODE, "systemctl restart nginx")
    wait_for_port(NODE, EC_PORT)
    address = node_address(NODE)
    original = sh(NODE, "cat %s" % NGINX_CONF).stdout
    modes = []
    try:
        for cache, tickets in ((True, True), (True, False), (False, False)):
            put_file(NODE, NGINX_CONF, session_settings(original, cache, tickets))
            sh(NODE, "systemctl reload nginx")
            time.sleep(1.5)  # let the old workers leave and the new ones open the token
            errors_at, access_at = log_size(NODE, ERROR_LOG), log_size(NODE, ACCESS_LOG)
            result = reconnecting_clients(address, EC_PORT, ctx.args.sign_clients,
                                          ctx.args.sign_requests)
            time.sleep(0.5)
            calls = count_calls(log_since(NODE, ERROR_LOG, errors_at))
            requests, resumed = count_reused(log_since(NODE, ACCESS_LOG, access_at))
            mode = {"cache": cache, "tickets": tickets, "requests": requests, "resumed": resumed,
                    "c_sign": calls, "client": result,
                    "per_1000": 1000.0 * calls / requests if requests else None,
                    "label": "cache %s, tickets %s" % ("on" if cache else "off",
                                                        "on" if tickets else "off")}
            print("    %s: %d requests (%d client errors), %d resumed, %d C_Sign"
                  % (mode["label"], requests, result["errors"], resumed, calls), flush=True)
            modes.append(mode)
    finally:
        put_file(NODE, NGINX_CONF, original)
        sh(NODE, "systemctl reload nginx", check=False)
    ctx.ansible.play("playbooks/serve.yml", ctx.inventory, "log-calls-off", {"pkcs11_log_calls": False})
    sh(NODE, "systemctl restart nginx")
    wait_for_port(NODE, EC_PORT)
    return {"modes": modes, "clients": ctx.args.sign_clients, "per_client": ctx.args.sign_requests}


# Runs inside the container (python3 of the image): reloads nginx and probes
# with new TLS connections until one is served by a worker born after the reload.
RELOAD_PROBE = r"""
import json, os, re, signal, socket, ssl, subprocess, sys, time
port, how, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
LOG = "/var/log/nginx/access.log"
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE

def probe(tag):
    request = "GET /?kmstls-bench-probe=%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % tag
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(request.encode())
                data = b""
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        return data.startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError):
        return False

def served_by(tag, offset):
    pattern = re.compile(r' pid=(\d+) "GET /\?kmstls-bench-probe=%s ' % re.escape(tag))
    for _ in range(200):
        with open(LOG, "rb") as handle:
            handle.seek(offset)
            found = pattern.search(handle.read().decode(errors="replace"))
        if found:
            return int(found.group(1))
        time.sleep(0.005)
    return None

def workers(master):
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}

results = []
for index in range(count):
    master = int(open("/run/nginx.pid").read())
    old = workers(master)
    offset = os.path.getsize(LOG)
    started = time.monotonic()
    if how == "validated":
        subprocess.run(["systemctl", "reload", "nginx"], check=True)
    else:
        os.kill(master, signal.SIGHUP)
    returned = time.monotonic() - started
    first = None
    probes = failed = 0
    while time.monotonic() - started < 60:
        probes += 1
        tag = "%d-%d" % (index, probes)
        if not probe(tag):
            failed += 1
            continue
        pid = served_by(tag, offset)
        if pid is not None and pid not in old:
            first = time.monotonic() - started
            break
    results.append({"command_s": returned, "first_new_worker_s": first, "probes": probes,
                    "failed_probes": failed})
    for _ in range(100):  # let the old workers leave before the next reload
        if not workers(master) & old:
            break
        time.sleep(0.1)
    time.sleep(0.5)
print(json.dumps(results))
"""


def reload_times(how, count):
    output = docker("exec", "-i", NODE, "python3", "-", str(EC_PORT), how, str(count),
                    input_text=RELOAD_PROBE, timeout=600).stdout
    results = json.loads(output.strip().splitlines()[-1])
    firsts = [r["first_new_worker_s"] for r in results if r["first_new_worker_s"] is not None]
    for r in results:
        print("    %-9s command %.3f s, first handshake by a new worker %s after %d probes (%d failed)"
              % (how, r["command_s"], "%.3f s" % r["first_new_worker_s"] if r["first_new_worker_s"]
                 else "never", r["probes"], r["failed_probes"]), flush=True)
    return {"count": len(results), "median_s": median(firsts), "p90_s": percentile(firsts, 90),
            "max_s": max(firsts) if firsts else None, "missing": len(results) - len(firsts),
            "command_median_s": median([r["command_s"] for r in results]),
            "failed_probes": sum(r["failed_probes"] for r in results), "raw": results}


def load_module():
    try:
        import loadgen
    except ImportError:
        raise Skip("scripts/loadgen.py is missing")
    return loadgen


def figure6(ctx):
    say("figure 6: reload to first handshake by a new worker")
    count = ctx.args.reload_samples
    result = {"validated": reload_times("validated", count), "hup": reload_times("hup", count)}
    say("figure 6: %d validated reloads under load" % ctx.args.reloads)
    loadgen = load_module()
    address = node_address(NODE)
    interval = ctx.args.reload_interval
    duration = ctx.args.reloads * interval + 3.0
    box = {}

    def run_load():
        box["result"] = loadgen.run(host=address, port=EC_PORT, path="/", sni="localhost",
                                    rate=ctx.args.rate, duration=duration)
    thread = threading.Thread(target=run_load)
    thread.start()
    reload_failures = 0
    try:
        time.sleep(1.5)
        for _ in range(ctx.args.reloads):
            began = time.monotonic()
            if sh(NODE, "systemctl reload nginx", check=False).returncode != 0:
                reload_failures += 1
            time.sleep(max(0.0, interval - (time.monotonic() - began)))
    finally:
        thread.join()
    load = box["result"]
    print("    %d requests, %d failed %s, %d reloads failed" % (
        load["scheduled"], load["errors"], load["error_kinds"], reload_failures), flush=True)
    result["under_load"] = {"reloads": ctx.args.reloads, "interval_s": interval, "rate": ctx.args.rate,
                            "scheduled": load["scheduled"], "errors": load["errors"],
                            "error_kinds": load["error_kinds"], "latency_ms": load["latency_ms"],
                            "reload_failures": reload_failures}
    return result


def figure_load(ctx):
    say("constant-rate load: %d s at %s requests a second" % (ctx.args.load_seconds, ctx.args.rate))
    loadgen = load_module()
    address = node_address(NODE)
    load = loadgen.run(host=address, port=EC_PORT, path="/", sni="localhost", rate=ctx.args.rate,
                       duration=ctx.args.load_seconds)
    print("    %d requests, %d errors, latency %s"
          % (load["scheduled"], load["errors"], load["latency_ms"]), flush=True)
    return load


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

class Context:
    def __init__(self, args, containers, ansible, inventory):
        self.args = args
        self.containers = containers
        self.ansible = ansible
        self.inventory = inventory
        self.fresh_build_s = None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per cheap figure, of which the median is reported (default 3)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help="comma-separated figures to measure, of %s (default: all)"
                        % ",".join(FIGURES))
    parser.add_argument("--keep", action="store_true",
                        help="keep the containers (and reuse a kept, converged %s with --only)" % NODE)
    parser.add_argument("--output", default=str(REPORT), help="report file (default docs/benchmark.md)")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="measure nothing: write the report again from the results file of "
                             "an earlier run (.cache/benchmark/results.json)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="requests a second of the load runs (default 50)")
    parser.add_argument("--load-seconds", type=int, default=30, help="length of the load run (default 30)")
    parser.add_argument("--handshake-seconds", type=int, default=10,
                        help="length of each openssl s_time run (default 10)")
    parser.add_argument("--clients", type=int, default=2,
                        help="parallel openssl s_time clients (default 2)")
    parser.add_argument("--sign-clients", type=int, default=10,
                        help="reconnecting clients of figure 5 (default 10)")
    parser.add_argument("--sign-requests", type=int, default=100,
                        help="requests per reconnecting client of figure 5 (default 100)")
    parser.add_argument("--reload-samples", type=int, default=10,
                        help="timed reloads of each kind, without load (default 10)")
    parser.add_argument("--reloads", type=int, default=20, help="reloads under load (default 20)")
    parser.add_argument("--reload-interval", type=float, default=1.5,
                        help="seconds between reloads under load (default 1.5)")
    args = parser.parse_args(argv)
    args.figures = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        parser.error("unknown figures %s; choose from %s"
                     % (", ".join(sorted(unknown)), ", ".join(FIGURES)))
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def load_note(machine):
    """A sentence on how busy the machine was, from the load averages at start and end."""
    note = ("Machine load during this run: load average %s at the start and %s at the end, on %s "
            "logical CPUs." % (machine["load_start"], machine["load_end"], machine["cpus"]))
    busiest = max(float(machine[key].split()[0]) for key in ("load_start", "load_end"))
    if busiest > 0.5 * (machine["cpus"] or 1):
        note += (" The machine was busy with other work, so the times are inflated and noisy, "
                 "and so are ratios between figures measured minutes apart (figure 1): rerun it "
                 "on a quiet machine before quoting them.")
    return note


def command_line(argv):
    return " ".join(["python3 scripts/benchmark.py"] + [shlex.quote(a) for a in argv])


def measure(ctx, data, figure, func):
    """Run one figure, recording a Skip (or, after a failure, the error) as its reason."""
    if figure not in ctx.args.figures:
        return None
    try:
        return func(ctx)
    except Skip as reason:
        say("figure %s not measured: %s" % (figure, reason))
        data["skipped"][figure] = "%s." % reason
        return None


def run(args, argv):
    data = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command_line(argv), "skipped": {}}
    stages = devtools.Stages()
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise BenchError("Docker does not answer (docker info failed); start it and run this again")
    stages.run("set up the virtualenv and link the collection", devtools.bootstrap)
    data["machine"] = machine_facts()
    say("load average at start: %s" % data["machine"]["load_start"])
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        stages.run("build the Debian 12 image", build_images.build_all, ["12"])
    stages.run("seed the local mirror", devtools.seed_mirror)
    mirror_url = devtools.serve_mirror()
    extra = devtools.libp11_engine()
    for figure in FIGURES:
        if figure not in args.figures:
            data["skipped"][figure] = "not asked for in this run (`--only %s`)." % args.only
    containers = Containers(args.keep)
    inventory = write_inventory("node", {"kmstls_nginx": [NODE]}, group_vars())
    ctx = Context(args, containers, Ansible(mirror_url, extra), inventory)
    try:
        reuse = "1" not in args.figures and containers.exists(NODE)
        if reuse:
            say("reusing the kept container %s" % NODE)
            containers.adopt(NODE)
        if "1" in args.figures:
            data["figure1"] = stages.run("figure 1", measure, ctx, data, "1", figure1)
        elif not reuse:
            containers.start(NODE)
            ctx.fresh_build_s, _, _ = ctx.ansible.play("playbooks/build.yml", inventory, "fresh-build")
        data["figure3"] = stages.run("figure 3", measure, ctx, data, "3", figure3)
        if "2" in args.figures:
            data["figure2"] = stages.run("figure 2", measure, ctx, data, "2", lambda c: {
                "runs": args.runs, "build": second_converges(c, "playbooks/build.yml", args.runs)})
        data["machine"].update(node_versions(NODE, bool(extra.get("libp11_engine_src"))))
        if not set(args.figures) & {"2", "4", "5", "6", "load"}:
            return finish(data, stages)
        say("converging playbooks/site.yml on %s (token, keys, nginx)" % NODE)
        site_first, _, _ = ctx.ansible.play("playbooks/site.yml", inventory, "site")
        if data.get("figure2"):
            data["figure2"]["site_first_s"] = None if reuse else site_first
            data["figure2"]["site"] = stages.run("figure 2 (site)", second_converges, ctx,
                                                 "playbooks/site.yml", args.runs)
        data["machine"].update(node_versions(NODE, bool(extra.get("libp11_engine_src"))))
        data["figure4"] = stages.run("figure 4", measure, ctx, data, "4", figure4)
        data["load"] = stages.run("constant-rate load", measure, ctx, data, "load", figure_load)
        data["figure6"] = stages.run("figure 6", measure, ctx, data, "6", figure6)
        data["figure5"] = stages.run("figure 5", measure, ctx, data, "5", figure5)
    finally:
        containers.cleanup()
    return finish(data, stages)


def finish(data, stages):
    data["machine"]["load_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    data["note"] = load_note(data["machine"])
    stages.summary()
    return data


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        Path(args.output).write_text(render_report(data))
        say("wrote %s from %s" % (args.output, args.render))
        return 0
    signal.signal(signal.SIGTERM, interrupted)
    try:
        data = run(args, argv)
    except BenchError as error:
        print("benchmark: %s" % error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark: interrupted%s" % ("" if args.keep else "; its containers were removed"),
              file=sys.stderr)
        return 130
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.json").write_text(json.dumps(data, indent=2, default=str, sort_keys=True) + "\n")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_report(data))
    say("wrote %s (raw results in %s)" % (os.path.relpath(output, devtools.ROOT) if output.is_absolute()
                                         else output, WORK / "results.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
