#!/usr/bin/env python3
"""Build the Debian base images that the Molecule scenarios run on.

No container registry is reachable from the machines this project is tested
on, so the images are made here: debootstrap a minimal Debian into a folder,
then ``docker import`` it.  The Debian mirror is read from this machine's own
apt configuration, so nothing about the network is written into the
repository.  An image whose recipe has not changed is left alone.
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_REPO = "kmstls-molecule/debian"

# Packages every test host gets on top of debootstrap's minbase variant.
# sudo is there because playbooks become root as they would on a VM;
# python3-apt lets Ansible's apt module work without installing it first;
# systemd is there so scenarios can boot it as PID 1 and manage services.
BASE_PACKAGES = [
    "python3",
    "python3-apt",
    "ca-certificates",
    "curl",
    "procps",
    "iproute2",
    "sudo",
    "systemd",
    "systemd-sysv",
]

RELEASES = {
    "11": "bullseye",
    "12": "bookworm",
}

APT_SOURCES = [Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d")]


def log(message):
    print("[build-images] " + message, flush=True)


def debian_mirror():
    """Return the first plain Debian archive URI in this machine's apt setup."""
    if os.environ.get("KMSTLS_DEBIAN_MIRROR"):
        return os.environ["KMSTLS_DEBIAN_MIRROR"]
    files = []
    for source in APT_SOURCES:
        if source.is_dir():
            files.extend(sorted(source.glob("*.list")) + sorted(source.glob("*.sources")))
        elif source.is_file():
            files.append(source)
    candidates = []
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (key.strip().lower(), value.strip())
                    for key, value in re.findall(r"^([A-Za-z-]+):(.*)$", stanza, re.M)
                )
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                suites = fields.get("suites", "").split()
                if any(s.endswith("-security") for s in suites):
                    continue
                candidates.extend(fields.get("uris", "").split())
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "deb":
                    uri_index = 2 if words[1].startswith("[") else 1
                    suite = words[uri_index + 1] if len(words) > uri_index + 1 else ""
                    if not suite.endswith("-security"):
                        candidates.append(words[uri_index])
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    sys.exit(
        "build-images: no Debian archive found in /etc/apt/sources.list(.d); "
        "set KMSTLS_DEBIAN_MIRROR to a Debian mirror URL"
    )


def recipe_digest(version, mirror):
    recipe = {"release": RELEASES[version], "packages": BASE_PACKAGES, "mirror": mirror}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def image_digest(tag):
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", tag],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout or "null") or {}
    return labels.get("org.kmstls.recipe")


def build(version, mirror, workdir):
    tag = "%s:%s" % (IMAGE_REPO, version)
    digest = recipe_digest(version, mirror)
    if image_digest(tag) == digest:
        log("%s is up to date (recipe %s), nothing to do" % (tag, digest))
        return tag, 0.0
    started = time.monotonic()
    rootfs = Path(tempfile.mkdtemp(prefix="debian-%s-" % version, dir=workdir))
    logfile = Path(workdir) / ("debootstrap-%s.log" % version)
    log("%s: debootstrap %s from %s (log: %s)" % (tag, RELEASES[version], mirror, logfile))
    try:
        with open(logfile, "w") as out:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(BASE_PACKAGES),
                    RELEASES[version],
                    str(rootfs),
                    mirror,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
        # Keep the package lists so the apt module can resolve names offline,
        # and make sure no host-specific machine id ends up in the image.
        (rootfs / "etc/machine-id").write_text("")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [
                "docker", "import",
                "--change", "LABEL org.kmstls.recipe=" + digest,
                "--change", 'CMD ["/bin/sleep", "infinity"]',
                "-", tag,
            ],
            stdin=tar.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tar.stdout.close()
        if tar.wait() != 0:
            raise subprocess.CalledProcessError(tar.returncode, "tar")
    except subprocess.CalledProcessError:
        tail = logfile.read_text(errors="replace").splitlines()[-20:] if logfile.exists() else []
        log("%s: build failed; last lines of %s:\n%s" % (tag, logfile, "\n".join(tail)))
        raise
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    elapsed = time.monotonic() - started
    log("%s built in %.0f s" % (tag, elapsed))
    return tag, elapsed


def install_debootstrap(images):
    """Install debootstrap from Debian's packages when running as root on Debian."""
    needed = "build-images: debootstrap is needed to build %s" % ", ".join(images)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(needed + "; install it (apt-get install debootstrap) and run this again")
    log("installing debootstrap from Debian's packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "debootstrap"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit("%s; `%s` failed:\n%s" % (needed, " ".join(cmd), result.stderr.strip()[-2000:]))


def build_all(versions):
    """Build (or keep) the images of the given Debian versions; exit on failure."""
    if shutil.which("docker") is None:
        sys.exit("build-images: docker is not installed or not on PATH")
    missing = [v for v in versions if image_digest("%s:%s" % (IMAGE_REPO, v)) is None]
    if missing and shutil.which("debootstrap") is None:
        install_debootstrap(["%s:%s" % (IMAGE_REPO, v) for v in missing])
    mirror = debian_mirror()
    workdir = Path(os.environ.get("KMSTLS_IMAGE_WORKDIR", "/var/tmp/kmstls-images"))
    workdir.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(versions)) as pool:
        futures = [pool.submit(build, v, mirror, workdir) for v in versions]
        failed = [v for v, f in zip(versions, futures) if _failed(f)]
    if failed:
        sys.exit("build-images: could not build Debian %s" % ", ".join(failed))


def _failed(future):
    try:
        future.result()
    except subprocess.CalledProcessError:
        return True
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "versions", nargs="*", default=sorted(RELEASES), help="Debian versions (default: all)"
    )
    args = parser.parse_args()
    unknown = [v for v in args.versions if v not in RELEASES]
    if unknown:
        parser.error("unknown Debian version(s) %s; known: %s" % (unknown, sorted(RELEASES)))
    build_all(args.versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
