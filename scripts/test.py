#!/usr/bin/env python3
"""Run the project's whole test suite on a fresh machine with Docker.

Sets up .venv, builds the local Debian images, seeds and serves the local
mirror on 127.0.0.1, then runs yamllint, ansible-lint, the unit tests, the
Molecule scenarios and the demo, and prints the time of each stage.

    python3 scripts/test.py                    # everything, as CI does
    python3 scripts/test.py --scenario default # one Molecule scenario
    python3 scripts/test.py --molecule-command converge --scenario default
"""

import argparse
import os
import re
import subprocess
import sys
import time

import build_images
import devtools

# Scenarios run by default, in order. centos7 needs the centos:7 image from a
# registry, which these machines cannot reach; run it by name where you can.
# "demo" is not a Molecule scenario: it runs scripts/demo.py as a user would.
DEFAULT_SCENARIOS = ["default", "libkmsp11", "tls", "pkcs11", "faults", "image", "fleet", "demo"]


def run(cmd, env, **kwargs):
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env, cwd=devtools.ROOT, **kwargs).returncode


def run_tee(cmd, env):
    """Run a command, streaming its output, and return (exit status, output)."""
    print("$ " + " ".join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, env=env, cwd=devtools.ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
    sys.stdout.flush()
    return proc.returncode, "".join(lines)


def demo(env):
    """The README's main command as a user runs it: up, up again, down.

    Uses its own container name and port, so a user's demo is left alone.
    """
    env = dict(env, KMSTLS_DEMO_CONTAINER="kmstls-test-demo", KMSTLS_DEMO_PORT="18443")
    demo_cmd = [sys.executable, "scripts/demo.py"]
    problems = []
    try:
        for attempt in ("first", "second"):
            started = time.monotonic()
            status, output = run_tee(demo_cmd, env)
            elapsed = time.monotonic() - started
            print("demo: %s run took %.0f s (exit %d)" % (attempt, elapsed, status), flush=True)
            if status != 0:
                problems.append("the %s run exited %d" % (attempt, status))
                break
            for needed in ("-> 200 OK", "built with OpenSSL 1.1.1w",
                           "no private key file on the host"):
                if needed not in output:
                    problems.append("the %s run did not print %r" % (attempt, needed))
            recap = re.search(r"playbook recap for \S+: (.*)", output)
            if attempt == "second" and not (recap and re.search(r"\bchanged=0\b", recap.group(1))):
                problems.append("the second run changed something: %s"
                                % (recap.group(1) if recap else "no recap"))
    finally:
        status, _ = run_tee(demo_cmd + ["down"], env)
        if status != 0:
            problems.append("demo.py down exited %d" % status)
    for problem in problems:
        print("demo: " + problem, flush=True)
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", dest="scenarios",
                        help="Molecule scenario to run (repeatable; default: %s)"
                        % ", ".join(DEFAULT_SCENARIOS))
    parser.add_argument("--molecule-command", default="test",
                        help="Molecule command to run per scenario (default: test)")
    parser.add_argument("--skip-lint", action="store_true", help="skip yamllint and ansible-lint")
    parser.add_argument("--skip-molecule", action="store_true", help="skip the Molecule scenarios")
    args = parser.parse_args()
    scenarios = args.scenarios or DEFAULT_SCENARIOS

    stages = devtools.Stages()
    results = []

    def record(name, returncode):
        results.append((name, returncode == 0))
        if returncode != 0:
            print("FAILED: %s (exit %s)" % (name, returncode), flush=True)

    stages.run("set up the virtualenv and link the collection", devtools.bootstrap)
    env = devtools.tool_env()

    if not args.skip_lint:
        record("yamllint", stages.run("yamllint", run, ["yamllint", "--strict", "."], env))
        record("ansible-lint", stages.run("ansible-lint", run, ["ansible-lint"], env))

    record("unit tests", stages.run(
        "unit tests", run, [devtools.venv_bin("python"), "-m", "pytest", "-q", "tests/unit"], env))

    if not args.skip_molecule:
        versions = sorted(build_images.RELEASES)
        stages.run("build the Debian test images", build_images.build_all, versions)
        stages.run("seed the local mirror", devtools.seed_mirror)
        mirror_url = devtools.serve_mirror()
        extra = devtools.libp11_engine()
        env = devtools.tool_env({
            "KMSTLS_MIRROR_URL": mirror_url,
            "KMSTLS_LIBP11_ENGINE_SRC": extra.get("libp11_engine_src", ""),
        })
        for scenario in scenarios:
            if scenario == "demo":
                record("demo: up, up again with no change, down", stages.run("demo", demo, env))
                continue
            name = "molecule %s -s %s" % (args.molecule_command, scenario)
            record(name, stages.run(name, run, ["molecule", args.molecule_command, "-s", scenario], env))

    stages.summary()
    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    for name, ok in results:
        print("    %s  %s" % ("ok    " if ok else "FAILED", name))
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
