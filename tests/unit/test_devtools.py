"""The test bed's own helpers: apt mirror discovery and the libp11 stand-in."""

import io
import tarfile

import build_images
import devtools


def test_mirror_is_read_from_deb822_sources(tmp_path, monkeypatch):
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    monkeypatch.setattr(build_images, "APT_SOURCES", [tmp_path / "missing.list", sources])
    monkeypatch.delenv("KMSTLS_DEBIAN_MIRROR", raising=False)
    assert build_images.debian_mirror() == "http://mirror.example/debian"


def test_mirror_is_read_from_a_one_line_sources_list(tmp_path, monkeypatch):
    listing = tmp_path / "sources.list"
    listing.write_text("# comment\ndeb [arch=amd64] http://m.example/debian bullseye main\n")
    monkeypatch.setattr(build_images, "APT_SOURCES", [listing])
    monkeypatch.delenv("KMSTLS_DEBIAN_MIRROR", raising=False)
    assert build_images.debian_mirror() == "http://m.example/debian"


def test_image_recipe_changes_with_the_package_list(monkeypatch):
    before = build_images.recipe_digest("12", "http://m.example/debian")
    monkeypatch.setattr(build_images, "BASE_PACKAGES", build_images.BASE_PACKAGES + ["vim"])
    assert build_images.recipe_digest("12", "http://m.example/debian") != before


def _ar(members):
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, body in members:
        header = "%-16s%-12s%-6s%-6s%-8s%-10s`\n" % (name + "/", 0, 0, 0, 100644, len(body))
        out.write(header.encode())
        out.write(body)
        if len(body) % 2:
            out.write(b"\n")
    return out.getvalue()


def test_deb_members_are_found_past_odd_sized_ones(tmp_path):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("./usr/lib/x86_64-linux-gnu/engines-1.1/pkcs11.so")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"ELF"))
    deb = tmp_path / "x.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n\n\n"), ("control.tar.xz", b"odd"),
                         ("data.tar", data.getvalue())]))
    name, body = devtools._deb_member(deb, "data.tar")
    assert name == "data.tar" and body == data.getvalue()
