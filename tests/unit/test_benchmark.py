"""The pure parts of scripts/benchmark.py: parsing, statistics and the report."""

import subprocess

import pytest

import benchmark

RECAP = """
PLAY RECAP *********************************************************************
kmstls-bench-node          : ok=87   changed=5    unreachable=0    failed=0    skipped=90   rescued=0    ignored=0
kmstls-bench-node2         : ok=80   changed=0    unreachable=0    failed=1    skipped=9    rescued=1    ignored=0

Friday 04 December 2026  19:19:39 +0000 (0:00:01.588)       0:00:56.289 *******
===============================================================================
kmstls.nginx_pkcs11.source_build : Configure, compile and install openssl - 165.57s
kmstls.nginx_pkcs11.source_build : Configure, compile and install p11_kit -- 47.91s
kmstls.nginx_pkcs11.source_build : Install the compilers and libraries needed to build openssl -- 30.01s
kmstls.nginx_pkcs11.pkcs11 : Install SoftHSM and pkcs11-tool, without recommended extras such as pcscd --- 4.04s
Gathering Facts --------------------------------------------------------- 2.44s
"""

# Two workers writing p11-kit's call log to the same error log: their lines
# interleave, but each call starts with its name alone on a line.
CALL_LOG = """2026/12/04 19:22:22 [notice] 32548#32548: reconfiguring
C_SignInit
  IN: hSession = S7
  IN: pMechanism = {
\tmechanism: CKM_ECDSA
      }
C_SignInit = CKR_OK
C_Sign
  IN: hSession = S7
  IN: pData = (32) "\\x8F"
C_Sign
  IN: hSession = S7
 OUT: pSignature = (64) "\\xBC;'"
C_Sign = CKR_OK
 OUT: pSignature = (64) "\\xBF"
C_Sign = CKR_OK
C_SignFinal
C_FindObjectsInit
"""


def test_recap_counts_are_read_per_host():
    assert benchmark.parse_recap(RECAP, "kmstls-bench-node") == {
        "ok": 87, "changed": 5, "unreachable": 0, "failed": 0, "skipped": 90, "rescued": 0, "ignored": 0}
    assert benchmark.parse_recap(RECAP, "kmstls-bench-node2")["changed"] == 0
    assert benchmark.parse_recap(RECAP, "kmstls-bench-node2")["failed"] == 1
    assert benchmark.parse_recap(RECAP, "other-host") is None
    assert benchmark.parse_recap("no recap here", "kmstls-bench-node") is None


def test_profile_tasks_summary_gives_compile_and_package_times():
    times = benchmark.parse_task_times(RECAP)
    assert ("Gathering Facts", 2.44) in times
    assert len(times) == 5
    compiled = benchmark.compile_seconds_in_converge(times)
    assert compiled == {"openssl": 165.57, "p11_kit": 47.91}


def test_c_sign_calls_are_counted_once_each_even_interleaved():
    assert benchmark.count_calls(CALL_LOG) == 2
    assert benchmark.count_calls(CALL_LOG, "C_SignInit") == 1
    assert benchmark.count_calls(CALL_LOG.replace("\n", "\r\n")) == 2
    assert benchmark.count_calls("") == 0


def test_resumed_sessions_are_read_from_the_access_log():
    log = ('1.2.3.4 [x] pid=10 "GET / HTTP/1.1" 200 3 TLSv1.3 TLS_AES_256_GCM_SHA384 reused=r host=a rt=0.0\n'
           '1.2.3.4 [x] pid=11 "GET / HTTP/1.1" 200 3 TLSv1.3 TLS_AES_256_GCM_SHA384 reused=. host=a rt=0.0\n'
           '1.2.3.4 [x] pid=11 "GET / HTTP/1.1" 200 3 TLSv1.2 ECDHE-ECDSA-AES128 reused=r host=a rt=0.0\n')
    assert benchmark.count_reused(log) == (3, 2)


@pytest.mark.parametrize("values, pct, expected", [
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50, 5),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99, 10),
    ([10, 1, 5], 50, 5),
    ([7], 99, 7),
    (list(range(1, 1001)), 99, 990),
    ([3, 1, 2], 100, 3),
    ([3, 1, 2], 0, 1),
])
def test_nearest_rank_percentiles(values, pct, expected):
    assert benchmark.percentile(values, pct) == expected


def test_median_and_ratio_tolerate_missing_values():
    assert benchmark.percentile([], 50) is None
    assert benchmark.median([3.0, None, 1.0, 2.0]) == 2.0
    assert benchmark.median([4, 1, 3, 2]) == 2.5
    assert benchmark.median([None]) is None
    assert benchmark.ratio(3.0, 2.0) == 1.5
    assert benchmark.ratio(None, 2.0) is None and benchmark.ratio(1.0, 0) is None


S_TIME_NEW = """Collecting connection statistics for 3 seconds
*************************

2300 connections in 0.56s; 4107.14 connections/user sec, bytes read 317400
2300 connections in 4 real seconds, 138 bytes read per connection
"""
S_TIME_REUSE = """

Now timing with session id reuse.
starting
rrrrrrrrrr*rrrr

3327 connections in 0.43s; 7737.21 connections/user sec, bytes read 459126
3327 connections in 4 real seconds, 138 bytes read per connection
"""


def test_s_time_output_gives_connections_and_resumed_ones():
    assert benchmark.parse_s_time(S_TIME_NEW) == (2300, 0)
    assert benchmark.parse_s_time(S_TIME_REUSE) == (3327, 14)
    with pytest.raises(ValueError):
        benchmark.parse_s_time("connect: Connection refused\n")


def test_a_parallel_s_time_run_gives_rate_and_worker_cpu_per_handshake():
    output = ("ELAPSED 100.0 104.0\nCPU 1000 1460 100\n=== 1\n" + S_TIME_NEW
              + "=== 2\n" + S_TIME_NEW)
    got = benchmark.parse_s_time_run(output)
    assert got["connections"] == 4600 and got["reused"] == 0
    assert got["rate"] == pytest.approx(1150.0)
    assert got["worker_cpu_ms"] == pytest.approx(4600.0 / 4600)


def test_package_lists_are_read_from_the_role_vars():
    text = (benchmark.devtools.ROOT / "roles/source_build/vars/Debian.yml").read_text()
    common = benchmark.parse_flow_list(text, "common")
    assert "gcc" in common and "make" in common
    assert "perl" in benchmark.parse_flow_list(text, "openssl")
    assert benchmark.parse_flow_list(text, "libp11") == []
    assert benchmark.parse_flow_list(text, "no_such_component") == []


def test_replayed_build_runs_the_recorded_steps_in_order_with_their_environment(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    log = tmp_path / "build.log"
    steps = ["echo configure $PKG_CONFIG_PATH > out", 'echo "jobs=$KMSTLS_JOBS" >> out', "cat out"]
    script = benchmark.raw_build_script(str(tree), steps, {"PKG_CONFIG_PATH": "/opt/x y/pc"}, str(log))
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    lines = (tree / "out").read_text().splitlines()
    assert lines[0] == "configure /opt/x y/pc"
    assert lines[1].startswith("jobs=") and int(lines[1][5:]) >= 1
    assert "configure /opt/x y/pc" in log.read_text()
    times = benchmark.parse_step_times(result.stdout)
    assert sorted(times) == [0, 1, 2] and all(0 <= t < 5 for t in times.values())


def test_replayed_build_stops_at_the_first_failing_step(tmp_path):
    script = benchmark.raw_build_script(str(tmp_path), ["true", "false", "touch never"], {},
                                        str(tmp_path / "log"))
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert list(benchmark.parse_step_times(result.stdout)) == [0]
    assert not (tmp_path / "never").exists()


def test_step_names_come_from_the_build_log():
    log = ("# nginx 1.26.3 fingerprint abc\n### step configure: ./configure --prefix=/x\nchecking\n"
           '### step compile: make -j"$KMSTLS_JOBS"\n### step install: make install\n')
    assert benchmark.step_names(log) == {"./configure --prefix=/x": "configure",
                                         'make -j"$KMSTLS_JOBS"': "compile", "make install": "install"}


CONF = """user nginx nginx;
worker_processes auto;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log notice;
http {
    access_log /var/log/nginx/access.log kmstls;
    ssl_session_cache shared:kmstls_tls:10m;
    ssl_session_tickets on;
    server {
        listen 443 ssl;
        ssl_certificate "/etc/kmstls/certs/ec.crt";
        ssl_certificate_key "engine:pkcs11:pkcs11:token=t;object=ec;type=private?pin-source=file:/p";
    }
    server {
        listen 127.0.0.1:8443 ssl;
        ssl_certificate "/etc/kmstls/certs/rsa.crt";
        ssl_certificate_key "engine:pkcs11:pkcs11:token=t;object=rsa;type=private?pin-source=file:/p";
    }
}
"""


def test_pem_copy_differs_only_in_ports_keys_pid_and_logs():
    pem = {443: ("/b/ec.crt", "/b/ec.key"), 8443: ("/b/rsa.crt", "/b/rsa.key")}
    out = benchmark.pem_variant(CONF, pem, {443: 9443, 8443: 9444}, "/b")
    assert "engine:" not in out
    assert "listen 9443 ssl;" in out and "listen 9444 ssl;" in out
    assert out.index('"/b/ec.key"') < out.index("listen 9444") < out.index('"/b/rsa.key"')
    assert 'ssl_certificate "/b/rsa.crt";' in out
    assert "pid /b/nginx.pid;" in out and "error_log /b/error.log notice;" in out
    assert "access_log /b/access.log kmstls;" in out
    kept = [line for line in CONF.splitlines() if line not in out.splitlines()]
    assert all(any(word in line for word in ("listen", "ssl_certificate", "pid", "_log")) for line in kept)
    with pytest.raises(ValueError):
        benchmark.pem_variant(CONF, pem, {443: 9443}, "/b")


def test_session_cache_and_tickets_are_switched():
    off = benchmark.session_settings(CONF, cache=False, tickets=False)
    assert "ssl_session_cache off;" in off and "ssl_session_tickets off;" in off
    ids_only = benchmark.session_settings(off, cache=True, tickets=False)
    assert "ssl_session_cache shared:kmstls_tls:10m;" in ids_only and "ssl_session_tickets off;" in ids_only
    assert benchmark.session_settings(off, cache=True, tickets=True).count("ssl_session_tickets on;") == 1


def _data(**figures):
    data = {
        "date": "2026-12-04 19:20 UTC", "command": "python3 scripts/benchmark.py", "skipped": {},
        "note": "Machine load during this run: load average 0.10 at the start.",
        "machine": {"cpu_model": "Test CPU", "cpus": 4, "ram": "8.0 GiB", "kernel": "6.1", "docker": "24.0",
                    "load_start": "0.10 0.20 0.30", "load_end": "0.40 0.50 0.60", "debian": "12.8",
                    "openssl": "OpenSSL 1.1.1w", "nginx": "nginx/1.26.3", "p11_kit": "0.26.5",
                    "libp11": "0.4.13", "softhsm": "2.6.1", "ansible": "2.16.1", "workers": "4"},
    }
    data.update(figures)
    return data


FIGURE1 = {
    "converge_s": 150.0, "raw_total_s": 120.0, "ratio": 1.25, "goal_met": True,
    "converge_compile_s": 118.0, "packages_s": 20.0, "slowest": [("Gathering Facts", 2.0)],
    "overhead_s": 32.0, "estimate_ratio": 152.0 / 120.0,
    "components": [
        {"name": "openssl", "total_s": 80.0, "in_converge_s": 79.0, "steps": [
            {"name": "configure", "seconds": 2.0}, {"name": "compile", "seconds": 70.0},
            {"name": "install", "seconds": 8.0}]},
        {"name": "libp11", "not_built": "prebuilt engine copied"},
        {"name": "nginx", "total_s": 40.0, "steps": [{"name": "compile", "seconds": 40.0}]},
    ],
}


def test_report_states_the_machine_the_command_and_whether_goals_are_met():
    data = _data(figure1=FIGURE1, figure2={
        "runs": 3, "site_first_s": 60.0,
        "build": {"times_s": [14.0, 15.0, 16.0], "median_s": 15.0, "changed": [0, 0, 0],
                  "changed_text": "0/0/0", "goal_met": True},
        "site": {"times_s": [40.0, 41.0, 42.0], "median_s": 41.0, "changed": [0, 1, 0],
                 "changed_text": "0/1/0", "goal_met": False}})
    data["skipped"]["3"] = "playbooks/bundle.yml does not exist in this checkout."
    report = benchmark.render_report(data)
    assert report.startswith("# Benchmark\n")
    assert "`python3 scripts/benchmark.py`" in report
    for fact in ("Test CPU, 4 logical CPUs", "8.0 GiB", "| kernel | 6.1 |", "| Docker | 24.0 |",
                 "Debian 12.8", "OpenSSL 1.1.1w", "nginx/1.26.3", "0.26.5", "| libp11 | 0.4.13 |",
                 "2.6.1", "0.10 0.20 0.30", "0.40 0.50 0.60", "2026-12-04 19:20 UTC"):
        assert fact in report, fact
    assert "150.0 s / 120.0 s = 1.25x | at most 1.3x | **met**" in report
    assert "| libp11 | — | — | — | not compiled | prebuilt engine copied |" in report
    assert "| openssl | 2.0 s | 70.0 s | 8.0 s | 80.0 s | 79.0 s |" in report
    assert "15.0 s, 0/0/0 changed | under 20 s, 0 changed | **met**" in report
    assert "Not measured: playbooks/bundle.yml does not exist in this checkout." in report
    assert "| 3. deploy from a bundle / compile on the node | not measured |" in report


def test_overhead_estimate_puts_the_converge_compile_at_the_raw_speed():
    got = benchmark.overhead_estimate(converge_s=700.0, compile_in_converge_s=600.0, raw_total_s=400.0)
    assert got == {"overhead_s": 100.0, "estimate_ratio": 1.25}
    assert benchmark.overhead_estimate(700.0, None, 400.0)["estimate_ratio"] is None
    report = benchmark.render_report(_data(figure1=FIGURE1))
    assert "| everything the converge did besides its compile steps | 32.0 s |" in report
    assert "| (raw compile + that) / raw compile | 1.27x |" in report
    assert "took 118.0 s inside the converge and 120.0 s by hand (0.98x)" in report


def test_report_says_plainly_when_a_goal_is_missed():
    missed = dict(FIGURE1, converge_s=200.0, ratio=200.0 / 120, goal_met=False)
    report = benchmark.render_report(_data(figure1=missed))
    assert "= 1.67x | at most 1.3x | **not met**" in report
    assert "Goal not met" in report


def test_report_renders_the_measured_tls_figures():
    data = _data(
        figure3={"make_s": 20.0, "bundle_s": 30.0, "compile_s": 150.0, "ratio": 0.2,
                 "how": "Packed and deployed."},
        figure4={"runs": 3, "seconds": 10, "clients": 2, "labels": {"ec": "EC P-256", "rsa": "RSA-2048"},
                 "rows": {"ec-new": {"token": 500.0, "pem": 1000.0, "ratio": 0.5, "token_cpu_ms": 2.0,
                                     "pem_cpu_ms": 1.0, "cpu_ratio": 2.0, "reused_text": "0 of 10"},
                          "ec-reuse": {"token": 900.0, "pem": 1000.0, "ratio": 0.9, "token_cpu_ms": 0.5,
                                       "pem_cpu_ms": 0.5, "cpu_ratio": 1.0, "reused_text": "10 of 10"}}},
        figure5={"clients": 10, "per_client": 100, "modes": [
            {"label": "cache on, tickets on", "cache": True, "tickets": True, "requests": 1000,
             "resumed": 990, "c_sign": 10, "per_1000": 10.0},
            {"label": "cache off, tickets off", "cache": False, "tickets": False, "requests": 1000,
             "resumed": 0, "c_sign": 1000, "per_1000": 1000.0}]},
        figure6={"validated": {"count": 5, "median_s": 0.12, "p90_s": 0.15, "max_s": 0.2,
                               "command_median_s": 0.06},
                 "under_load": {"reloads": 20, "interval_s": 1.5, "rate": 50.0, "scheduled": 1650,
                                "errors": 0, "error_kinds": {},
                                "latency_ms": {"p50": 5.0, "p99": 12.0, "max": 30.0}}},
        load={"duration_s": 30, "rate": 50.0, "scheduled": 1500, "ok": 1499, "errors": 1,
              "error_kinds": {"timeout": 1}, "achieved_rate": 49.9,
              "latency_ms": {"p50": 5.0, "p90": 7.0, "p99": 12.0, "max": 40.0},
              "handshake_ms": {"p50": 3.0, "p99": 9.0}})
    report = benchmark.render_report(data)
    assert "| 3. deploy from a bundle / compile on the node | 30.0 s / 150.0 s = 0.20x |" in report
    assert "500 / 1,000 = 0.50x (worker CPU per handshake 2.00x)" in report
    assert "| EC P-256 | full (`-new`) | 500 | 1,000 | **0.50x** | 2.00 ms | 1.00 ms | 2.00x | 0 of 10 |" in report
    assert "| on | on | 1,000 | 990 | 10 | **10.0** |" in report
    assert "| off | off | 1,000 | 0 | 1,000 | **1,000.0** |" in report
    assert "120 ms (median of 5)" in report
    assert "| `systemctl reload nginx` | 5 | 60 ms | **120 ms** | 150 ms | 200 ms |" in report
    assert "0 of 1,650" in report
    assert "| 1,500 | 1,499 | 1 | 49.9/s | 5.0 ms | 7.0 ms | 12.0 ms | 40.0 ms | 3.0 ms | 9.0 ms |" in report
    assert "timeout: 1" in report


def test_load_note_warns_when_the_machine_was_busy():
    quiet = {"load_start": "0.20 0.1 0.1", "load_end": "0.50 0.3 0.2", "cpus": 8}
    busy = {"load_start": "4.20 3.1 2.0", "load_end": "5.00 4.0 3.0", "cpus": 2}
    assert "busy" not in benchmark.load_note(quiet)
    assert "busy" in benchmark.load_note(busy) and "4.20 3.1 2.0" in benchmark.load_note(busy)


def test_only_known_figures_are_accepted():
    assert benchmark.parse_args(["--only", "4,load"]).figures == ["4", "load"]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--only", "7"])
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--runs", "0"])


def test_report_renders_the_same_from_the_saved_results_file(tmp_path):
    data = _data(figure1=FIGURE1)
    data["skipped"]["4"] = "not asked for in this run (`--only 1`)."
    results = tmp_path / "results.json"
    results.write_text(benchmark.json.dumps(data, default=str))
    out = tmp_path / "report.md"
    assert benchmark.main(["--render", str(results), "--output", str(out)]) == 0
    assert out.read_text() == benchmark.render_report(data)
    assert "Not measured: not asked for in this run (`--only 1`)." in out.read_text()
