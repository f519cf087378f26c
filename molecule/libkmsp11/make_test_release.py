#!/usr/bin/env python3
"""Build libkmsp11 test releases shaped like the upstream ones.

Each archive holds one top directory, libkmsp11-<version>-linux-amd64[-fips]/,
with LICENSE, kmsp11.h, libkmsp11.so and libkmsp11.so.sig, the last being an
ECDSA P-384 / SHA-384 signature of the library (what upstream's
"openssl dgst -sha384 -verify" checks). The signing key is made afresh for
every run and only its public half is written out; the private half never
leaves this process.

Releases written into the mirror directory:
  9.9.9-test          good signature
  9.9.9-test (fips)   good signature, the FIPS archive name
  9.9.10-test         the library has one byte flipped after signing
"""

import argparse
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

# (version, fips, tampered)
RELEASES = [
    ("9.9.9-test", False, False),
    ("9.9.9-test", True, False),
    ("9.9.10-test", False, True),
]


def fake_library(name):
    """Bytes standing in for libkmsp11.so; the role only checks their signature."""
    return b"\x7fELF" + ("fake %s for the kmstls libkmsp11 tests\n" % name).encode() * 64


def add_file(tar, path, data, mode):
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def build(mirror, key, version, fips, tampered):
    name = "libkmsp11-%s-linux-amd64%s" % (version, "-fips" if fips else "")
    library = fake_library(name)
    signature = key.sign(library, ec.ECDSA(hashes.SHA384()))
    if tampered:
        library = library[:100] + bytes([library[100] ^ 0x01]) + library[101:]

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        top = tarfile.TarInfo(name)
        top.type = tarfile.DIRTYPE
        top.mode = 0o755
        top.mtime = int(time.time())
        tar.addfile(top)
        add_file(tar, name + "/LICENSE", b"Test release, no licence granted.\n", 0o644)
        add_file(tar, name + "/kmsp11.h", b"/* test header */\n", 0o644)
        add_file(tar, name + "/libkmsp11.so", library, 0o755)
        add_file(tar, name + "/libkmsp11.so.sig", signature, 0o644)
    archive = mirror / (name + ".tar.gz")
    archive.write_bytes(buffer.getvalue())
    return archive.name, hashlib.sha256(buffer.getvalue()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, required=True, help="directory the test mirror serves")
    parser.add_argument("--public-key", type=Path, required=True, help="where to write the PEM public key")
    parser.add_argument("--sums", type=Path, required=True, help="where to write the archives' SHA-256 (JSON)")
    args = parser.parse_args()

    key = ec.generate_private_key(ec.SECP384R1())
    args.public_key.parent.mkdir(parents=True, exist_ok=True)
    args.public_key.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    args.mirror.mkdir(parents=True, exist_ok=True)
    sums = dict(build(args.mirror, key, *release) for release in RELEASES)
    args.sums.write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    for archive, digest in sorted(sums.items()):
        print("%s  %s" % (digest, archive))


if __name__ == "__main__":
    main()
