#!/usr/bin/env python3
"""Run the collection end to end on a local test host: nginx serving HTTPS
with its private key inside a SoftHSM token.

    python3 scripts/demo.py        # set up (or update) the demo and show it
    python3 scripts/demo.py down   # remove the demo host

Sets up .venv, builds the local Debian 12 image, serves the local mirror of
the upstream archives on 127.0.0.1, starts the container `kmstls-demo`
(systemd inside, port 443 published on 127.0.0.1:8443) and runs the real
playbooks/site.yml against it with inventory/demo. A second run changes
nothing and is quick.

Environment: KMSTLS_DEMO_CONTAINER and KMSTLS_DEMO_PORT name another
container and port (default kmstls-demo, 8443); KMSTLS_ARTIFACTS points at
the upstream archives (default ../shared/artifacts).
"""

import argparse
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request

import build_images
import devtools

# The inventory names the host kmstls-demo; the container may be named
# otherwise (the test suite runs its own demo beside a user's).
INVENTORY_HOST = "kmstls-demo"
CONTAINER = os.environ.get("KMSTLS_DEMO_CONTAINER", INVENTORY_HOST)
PORT = os.environ.get("KMSTLS_DEMO_PORT", "8443")
IMAGE = build_images.IMAGE_REPO + ":12"
INVENTORY = devtools.ROOT / "inventory" / "demo"


def fail(message):
    print("demo: " + message, file=sys.stderr)
    sys.exit(2)


def docker(*args, check=True):
    return subprocess.run(["docker"] + list(args), capture_output=True, text=True, check=check)


def require_docker():
    if shutil.which("docker") is None:
        fail("the docker command is not installed. The demo runs its host as a Docker "
             "container; install Docker and run this again. Nothing was changed.")
    info = docker("info", "--format", "{{.ServerVersion}}", check=False)
    if info.returncode != 0:
        fail("Docker is installed but its daemon does not answer (%s). Start it "
             "(e.g. systemctl start docker) and run this again. Nothing was changed."
             % (info.stderr.strip().splitlines() or ["no error text"])[-1])


def container_state():
    inspect = docker("inspect", "--format", "{{.State.Running}}", CONTAINER, check=False)
    if inspect.returncode != 0:
        return None
    return inspect.stdout.strip() == "true"


def start_container():
    state = container_state()
    if state:
        devtools.say("container %s is running" % CONTAINER)
        return
    if state is False:
        docker("start", CONTAINER)
        devtools.say("started the existing container %s" % CONTAINER)
        return
    docker("run", "--detach", "--name", CONTAINER, "--hostname", INVENTORY_HOST,
           "--publish", "127.0.0.1:%d:443" % PORT,
           "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
           "--tmpfs", "/run", "--tmpfs", "/run/lock",
           IMAGE, "/lib/systemd/systemd")
    devtools.say("created container %s from %s (HTTPS on 127.0.0.1:%d)" % (CONTAINER, IMAGE, PORT))


def run_site(mirror_url, extra_vars):
    cmd = [devtools.venv_bin("ansible-playbook"), "-i", str(INVENTORY),
           str(devtools.ROOT / "playbooks" / "site.yml"),
           "-e", "kmstls_mirror_url=" + mirror_url, "-e", "ansible_host=" + CONTAINER]
    for key, value in extra_vars.items():
        cmd += ["-e", "%s=%s" % (key, value)]
    print("$ " + " ".join(cmd), flush=True)
    # Stream the play as it runs (a first run compiles for a few minutes),
    # keeping a copy to read the recap from.
    lines = []
    with subprocess.Popen(cmd, env=devtools.tool_env(), cwd=devtools.ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as play:
        for line in play.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    if play.returncode != 0:
        fail("playbooks/site.yml failed (exit %d); see its output above. The container "
             "stays for inspection: docker exec -it %s bash" % (play.returncode, CONTAINER))
    recap = re.search(r"^%s\s*:\s*(.*)$" % INVENTORY_HOST, "".join(lines), re.M)
    return recap.group(1).strip() if recap else "?"


def in_container(command):
    return docker("exec", CONTAINER, "sh", "-c", command, check=False)


def show():
    devtools.say("what the demo serves")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the demo certificate is self-signed
    url = "https://127.0.0.1:%d/" % PORT
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        body = response.read().decode(errors="replace").strip()
        print("    GET %s -> %d %s\n    body: %s" % (url, response.status, response.reason, body))

    openssl = "/usr/local/openssl/bin/openssl"
    cert = in_container("echo | %s s_client -connect 127.0.0.1:443 -servername localhost "
                        "2>/dev/null | %s x509 -noout -subject -enddate" % (openssl, openssl))
    for line in cert.stdout.split("\n"):
        if line.strip():
            print("    certificate " + line.strip())

    version = in_container("/usr/local/nginx/sbin/nginx -V 2>&1 | grep -E '^(nginx version|built with|running with)'")
    print("    " + "; ".join(line.strip() for line in version.stdout.strip().splitlines()))
    # The master loaded the key (workers inherit it); its maps show from where.
    maps = in_container("grep -oE '/[^ ]*(libssl|libcrypto|pkcs11|softhsm)[^ ]*[.]so[^ ]*' "
                        "/proc/$(cat /run/nginx.pid)/maps | sort -u")
    print("    the nginx master has loaded: " + (", ".join(maps.stdout.split()) or "(not found)"))

    keys = in_container(
        "grep -rlIE -e '-----BEGIN (RSA |EC |ENCRYPTED )?PRIVATE KEY-----' / "
        "--exclude-dir=proc --exclude-dir=sys --exclude-dir=dev --exclude-dir=run "
        "2>/dev/null | grep -v '^/usr/share/doc/' || true")
    found = keys.stdout.split()
    if found:
        print("    PRIVATE KEY FILES FOUND on the host: %s" % ", ".join(found))
        return 1
    print("    no private key file on the host: the keys live in the SoftHSM token")
    token = in_container("pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --list-objects "
                         "--type privkey 2>/dev/null | grep -E 'label|Usage' | head -n 4")
    if token.stdout.strip():
        print("    token objects:\n        " + "\n        ".join(token.stdout.strip().splitlines()))
    return 0


def up():
    stages = devtools.Stages()
    require_docker()
    stages.run("set up the virtualenv and link the collection", devtools.bootstrap)
    stages.run("build the Debian 12 image", build_images.build_all, ["12"])
    stages.run("seed the local mirror", devtools.seed_mirror)
    mirror_url = devtools.serve_mirror()
    extra = devtools.libp11_engine()
    stages.run("start the demo host", start_container)
    recap = stages.run("run playbooks/site.yml against it", run_site, mirror_url, extra)
    status = stages.run("check the result", show)
    stages.summary()
    devtools.say("playbook recap for %s: %s" % (CONTAINER, recap))
    if status != 0:
        print("demo: FAILED: the check above found a problem (see its output); the container "
              "stays for inspection: docker exec -it %s bash" % CONTAINER, file=sys.stderr)
        return status
    devtools.say("try it: curl -k https://127.0.0.1:%d/   remove it: python3 scripts/demo.py down"
                 % PORT)
    return status


def down():
    require_docker()
    if container_state() is None:
        devtools.say("no demo container to remove")
        return 0
    docker("rm", "--force", CONTAINER)
    devtools.say("removed the container %s" % CONTAINER)
    return 0


def check_port():
    """Turn KMSTLS_DEMO_PORT into a port number, or stop before anything is set up."""
    global PORT
    if not (str(PORT).isdigit() and 1 <= int(PORT) <= 65535):
        fail("KMSTLS_DEMO_PORT is %r; give a TCP port number from 1 to 65535. Nothing was "
             "changed." % PORT)
    PORT = int(PORT)


def main():
    check_port()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=["up", "down"], default="up")
    args = parser.parse_args()
    return up() if args.action == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
