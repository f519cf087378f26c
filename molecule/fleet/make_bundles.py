#!/usr/bin/env python3
"""Make the bad and the respun bundles the fleet scenario's side effect feeds the nodes.

    make_bundles.py BUNDLE OUTDIR

From BUNDLE (a good bundle with its .sha256 file) writes, each in a folder
of OUTDIR named after the case, a bundle and (except for 'unchecked') its
checksum file:

    damaged/    one byte changed, with the original checksum file
    truncated/  the first two thirds of the file, with a matching checksum file
    foreign/    the same trees, described as built on CentOS 7 for aarch64
    unchecked/  the original bundle without a checksum file
    respun/     the same trees under another, new name (so another SHA-256)

Prints a JSON object {case: path of its bundle}.
"""

import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

METADATA_NAME = "KMSTLS-BUNDLE.json"


def write_checksum(path):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(str(path) + ".sha256").write_text("%s  %s\n" % (digest, path.name))


def repack(source, dest, change):
    """Copy the bundle at source to dest with its description changed by change(metadata)."""
    with tarfile.open(source, "r:gz") as old, open(dest, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w", format=tarfile.GNU_FORMAT) as new:
        first = old.next()
        assert first.name == METADATA_NAME, first.name
        metadata = json.loads(old.extractfile(first).read())
        change(metadata)
        text = json.dumps(metadata, indent=1, sort_keys=True).encode()
        first.size = len(text)
        new.addfile(first, io.BytesIO(text))
        for member in old.getmembers()[1:]:
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
    return metadata


def main():
    bundle, outdir = Path(sys.argv[1]), Path(sys.argv[2])
    name = bundle.name[:-len(".tar.gz")]
    cases = {}

    def folder(case):
        path = outdir / case
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    damaged = folder("damaged") / bundle.name
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    shutil.copyfile(str(bundle) + ".sha256", str(damaged) + ".sha256")
    cases["damaged"] = damaged

    truncated = folder("truncated") / bundle.name
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size * 2 // 3])
    write_checksum(truncated)
    cases["truncated"] = truncated

    def foreign_platform(metadata):
        metadata.update(distribution="CentOS", distribution_major_version="7", os_family="RedHat",
                        architecture="aarch64", name=metadata["name"].replace("debian-12-x86_64",
                                                                              "centos-7-aarch64"))

    foreign = folder("foreign") / (name.replace("debian-12-x86_64", "centos-7-aarch64") + ".tar.gz")
    repack(bundle, foreign, foreign_platform)
    write_checksum(foreign)
    cases["foreign"] = foreign

    unchecked = folder("unchecked") / bundle.name
    shutil.copyfile(bundle, unchecked)
    cases["unchecked"] = unchecked

    # A new name at every run, so that each run swaps in a bundle the nodes do not have.
    respun_name = "%s-respun-%d" % (name, time.time())
    respun = folder("respun") / (respun_name + ".tar.gz")
    repack(bundle, respun, lambda metadata: metadata.update(name=respun_name))
    write_checksum(respun)
    cases["respun"] = respun

    print(json.dumps({case: str(path) for case, path in cases.items()}))


if __name__ == "__main__":
    main()
