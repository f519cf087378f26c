"""Shared helpers for the project's command-line scripts (tests and demo).

Everything here works on this checkout only: a virtualenv in .venv, the
collection linked into .collections, a local HTTP mirror of the upstream
archives on 127.0.0.1, and the libp11 stand-in engine.
"""

import functools
import hashlib
import http.server
import io
import lzma
import os
import shutil
import socketserver
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
CACHE = ROOT / ".cache"
MIRROR_DIR = CACHE / "mirror"
COLLECTION_LINK = ROOT / ".collections" / "ansible_collections" / "kmstls" / "nginx_pkcs11"
ARTIFACTS = Path(os.environ.get("KMSTLS_ARTIFACTS", ROOT.parent / "shared" / "artifacts"))
ENGINE_DEB = "debian-bullseye/libengine-pkcs11-openssl_0.4.11-1_amd64.deb"


def say(message):
    print("==> " + message, flush=True)


class Stages:
    """Times the named stages of a run and prints a summary at the end."""

    def __init__(self):
        self.times = []

    def run(self, name, func, *args, **kwargs):
        say(name)
        started = time.monotonic()
        try:
            return func(*args, **kwargs)
        finally:
            self.times.append((name, time.monotonic() - started))

    def summary(self):
        say("stage times")
        for name, seconds in self.times:
            print("    %7.1f s  %s" % (seconds, name))
        print("    %7.1f s  total" % sum(s for _, s in self.times), flush=True)


def venv_bin(name):
    return str(VENV / "bin" / name)


def bootstrap():
    """Create .venv with the pinned requirements and link the collection."""
    requirements = ROOT / "requirements.txt"
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        if not VENV.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [venv_bin("pip"), "install", "--quiet", "--disable-pip-version-check",
             "-r", str(requirements)],
            check=True,
        )
        stamp.write_text(digest)
    else:
        say("virtualenv .venv is up to date")
    COLLECTION_LINK.parent.mkdir(parents=True, exist_ok=True)
    if not COLLECTION_LINK.is_symlink():
        COLLECTION_LINK.symlink_to(os.path.relpath(ROOT, COLLECTION_LINK.parent))


def tool_env(extra=None):
    """Environment for ansible/molecule commands run from the virtualenv."""
    env = dict(os.environ)
    env["PATH"] = str(VENV / "bin") + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(VENV)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = env.get("ANSIBLE_FORCE_COLOR", "0")
    env["PY_COLORS"] = env.get("PY_COLORS", "0")
    env.update(extra or {})
    return env


def read_sums(folder):
    sums = {}
    sums_file = folder / "SHA256SUMS"
    if sums_file.exists():
        for line in sums_file.read_text().splitlines():
            if line.strip():
                digest, name = line.split(None, 1)
                sums[name.strip().lstrip("*")] = digest
    return sums


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seed_mirror():
    """Copy the upstream source archives into the local mirror, checking each sum."""
    if not ARTIFACTS.is_dir():
        raise SystemExit(
            "No artifacts folder at %s: the local mirror is seeded from it "
            "(set KMSTLS_ARTIFACTS to another folder)" % ARTIFACTS
        )
    MIRROR_DIR.mkdir(parents=True, exist_ok=True)
    sums = read_sums(ARTIFACTS)
    copied = 0
    for name, digest in sorted(sums.items()):
        source = ARTIFACTS / name
        if "/" in name or not name.endswith((".tar.gz", ".tar.xz")):
            continue
        if sha256_of(source) != digest:
            raise SystemExit("%s does not match SHA256SUMS (%s)" % (source, digest))
        target = MIRROR_DIR / name
        if not target.exists() or sha256_of(target) != digest:
            shutil.copyfile(source, target)
            copied += 1
    say("mirror %s holds %d archives (%d copied now)"
        % (MIRROR_DIR, len(list(MIRROR_DIR.glob("*.tar.*"))), copied))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):  # keep test output readable
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_mirror(port=0):
    """Serve the mirror on 127.0.0.1 from a background thread; return its URL."""
    handler = functools.partial(_QuietHandler, directory=str(MIRROR_DIR))
    server = _Server(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d" % server.server_address[1]
    say("serving the mirror at " + url)
    return url


def _deb_member(deb_path, prefix):
    """Return the bytes of the first member of a .deb (an ar archive) starting with prefix."""
    data = Path(deb_path).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit("%s is not a Debian package" % deb_path)
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset:offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[offset + 60:offset + 60 + size]
        if name.startswith(prefix):
            return name, body
        offset += 60 + size + (size % 2)
    raise SystemExit("%s has no %s member" % (deb_path, prefix))


def libp11_engine():
    """Decide how the test hosts get the pkcs11 engine.

    Returns a dict of Ansible variables: empty when the mirror holds a libp11
    release (the role builds it), else libp11_engine_src pointing at the
    engine extracted from Debian 11's prebuilt package.
    """
    tarballs = sorted(MIRROR_DIR.glob("libp11-*.tar.gz"))
    if tarballs:
        say("libp11: building from source (%s is in the mirror)" % tarballs[-1].name)
        return {}
    deb = ARTIFACTS / ENGINE_DEB
    expected = read_sums(ARTIFACTS).get(ENGINE_DEB)
    if not deb.exists() or sha256_of(deb) != expected:
        raise SystemExit("libp11: no release tarball in the mirror and %s is missing or "
                         "does not match SHA256SUMS" % deb)
    target = CACHE / "libp11-standin" / "pkcs11.so"
    if not target.exists():
        name, body = _deb_member(deb, "data.tar")
        if name.endswith(".xz"):
            body = lzma.decompress(body)
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            member = next(m for m in tar.getmembers()
                          if m.name.endswith("/engines-1.1/pkcs11.so") and m.isfile())
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    say("libp11: no release tarball in the mirror, so the test hosts get the pkcs11 "
        "engine of Debian 11's %s (stand-in, not a source build)" % deb.name)
    return {"libp11_engine_src": str(target)}
