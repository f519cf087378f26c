"""The pinned versions and checksums are the ones the project promises."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

PINNED = {
    "openssl": ("1.1.1w", "cf3098950cb4d853ad95c0841f1f9c6d3dc102dccfcacd521d93925208b76ac8"),
    "nginx": ("1.26.3", "69ee2b237744036e61d24b836668aad3040dda461fe6f570f1787eab570c75aa"),
    "p11_kit": ("0.26.5", "f2cc09111e44bf3fea58f023180b33acea90aa82d042d6fbb623fbc5ba033bb7"),
    "libp11": ("0.4.13", "d25dd9cff1b623e12d51b6d2c100e26063582d25c9a6f57c99d41f2da9567086"),
}


@pytest.mark.parametrize("role", sorted(PINNED))
def test_default_version_is_pinned_with_its_upstream_checksum(role):
    version, digest = PINNED[role]
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    table = yaml.safe_load((ROOT / "roles" / role / "vars" / "main.yml").read_text())
    assert defaults[role + "_version"] == version
    assert table["__%s_checksums" % role][version] == digest


def test_checksum_tables_agree_with_the_shared_artifacts():
    sums_file = ROOT.parent / "shared" / "artifacts" / "SHA256SUMS"
    if not sums_file.exists():
        pytest.skip("no ../shared/artifacts on this machine")
    published = {}
    for line in sums_file.read_text().splitlines():
        digest, name = line.split()
        published[name] = digest
    for role, archive in (("openssl", "openssl-%s.tar.gz"), ("nginx", "nginx-%s.tar.gz"),
                          ("p11_kit", "p11-kit-%s.tar.xz")):
        table = yaml.safe_load((ROOT / "roles" / role / "vars" / "main.yml").read_text())
        for version, digest in table["__%s_checksums" % role].items():
            name = archive % version
            if name in published:
                assert published[name] == digest, name
