"""Unit tests for the stack bundles (plugins/module_utils/stack_bundle.py and the lookup).

The trees live under pytest's tmp_path, so "absolute" roots are tmp paths;
installs run as a normal user (no chown).
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The collection is linked into .collections by scripts/devtools.py (bootstrap).
sys.path.insert(0, str(ROOT / ".collections"))

from ansible_collections.kmstls.nginx_pkcs11.plugins.module_utils import stack_bundle as sb  # noqa: E402
from ansible_collections.kmstls.nginx_pkcs11.plugins.lookup import bundle_metadata  # noqa: E402

MACHINE = "x86_64"


def make_tree(base):
    """A small installed stack: two prefixes and a records directory."""
    ssl = base / "usr/local/openssl"
    (ssl / "lib/engines-1.1").mkdir(parents=True)
    (ssl / "bin").mkdir()
    (ssl / "bin/openssl").write_bytes(b"\x7fELF openssl")
    (ssl / "bin/openssl").chmod(0o755)
    (ssl / "lib/libcrypto.so.1.1").write_bytes(b"\x7fELF libcrypto")
    (ssl / "lib/libcrypto.so").symlink_to("libcrypto.so.1.1")
    (ssl / "lib/engines-1.1/pkcs11.so").write_bytes(b"\x7fELF engine")
    nginx = base / "usr/local/nginx"
    (nginx / "conf").mkdir(parents=True)
    (nginx / "sbin").mkdir()
    (nginx / "logs").mkdir()
    (nginx / "sbin/nginx").write_bytes(b"\x7fELF nginx v1")
    (nginx / "conf/mime.types").write_text("types {}\n")
    (nginx / "conf/nginx.conf").write_text("# stock configuration\n")
    records = base / "var/lib/kmstls/builds"
    records.mkdir(parents=True)
    (records / "openssl.json").write_text('{"fingerprint": "a"}\n')
    (records / "nginx.json").write_text('{"fingerprint": "b"}\n')
    return [str(ssl), str(nginx), str(records)]


def keep_paths(base):
    return [str(base / "usr/local/nginx/conf/nginx.conf"), str(base / "usr/local/nginx/logs/*"),
            str(base / "usr/local/nginx/*_temp")]


def make_bundle(builder, dest, **overrides):
    roots = make_tree(builder)
    paths, files, links = sb.describe_trees(roots, keep_paths(builder))
    metadata = {"format": sb.FORMAT, "name": "kmstls-stack-debian-12-x86_64-0123456789ab",
                "distribution": "Debian", "distribution_major_version": "12",
                "architecture": MACHINE, "roots": roots, "files": files, "links": links,
                "runtime_packages": ["zlib1g"]}
    metadata.update(overrides)
    digest = sb.write_bundle(str(dest), paths, metadata)
    Path(str(dest) + ".sha256").write_text("%s  %s\n" % (digest, dest.name))
    return digest, metadata


def snapshot(base):
    """Every path under base with its type, mode and content or link target."""
    state = {}
    for current, dirs, files in os.walk(base):
        for name in dirs + files:
            path = os.path.join(current, name)
            info = os.lstat(path)
            if os.path.islink(path):
                state[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[path] = ("dir", info.st_mode)
            else:
                state[path] = ("file", info.st_mode, Path(path).read_bytes())
    return state


@pytest.fixture()
def built(tmp_path):
    """A bundle made from a tree at tmp/host, after which the tree is removed (a fresh host)."""
    host = tmp_path / "host"
    dest = tmp_path / "kmstls-stack-debian-12-x86_64-0123456789ab.tar.gz"
    digest, metadata = make_bundle(host, dest)
    shutil.rmtree(host)
    host.mkdir()
    return dest, digest, metadata, host


def install(built_bundle, **kwargs):
    dest, digest, metadata, host = built_bundle
    record = str(host / "var/lib/kmstls/bundle.json")
    return sb.install(str(dest), digest, record, keep_paths(host), as_root=False, machine=MACHINE,
                      **kwargs), record


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------

def test_exclusion_matches_whole_components_and_everything_below():
    patterns = ["/usr/local/nginx/*_temp", "/usr/local/nginx/conf/nginx.conf"]
    assert sb.is_excluded("/usr/local/nginx/proxy_temp", patterns)
    assert sb.is_excluded("/usr/local/nginx/proxy_temp/1/00", patterns)
    assert sb.is_excluded("/usr/local/nginx/conf/nginx.conf", patterns)
    assert not sb.is_excluded("/usr/local/nginx/conf/nginx.conf.default", patterns)
    assert not sb.is_excluded("/usr/local/nginx/conf/x_temp", patterns)
    assert not sb.is_excluded("/usr/local/nginx", patterns)


@pytest.mark.parametrize("roots, problem", [
    ([], "no tree"),
    (["relative/dir"], "not a normalised absolute"),
    (["/"], "not a normalised absolute"),
    (["/usr/local/../etc"], "not a normalised absolute"),
    (["/usr/local", "/usr/local/nginx"], "lies inside"),
    (["/a", "/a"], "named twice"),
])
def test_unusable_roots_are_named(roots, problem):
    assert any(problem in text for text in sb.root_problems(roots))


def test_good_roots_have_no_problem():
    assert sb.root_problems(["/usr/local/openssl", "/usr/local/openssl-extra"]) == []


def test_ldd_output_is_parsed_into_sonames_and_paths():
    text = """\
\tlinux-vdso.so.1 (0x00007ffc2b5f1000)
\tlibcrypto.so.1.1 => /usr/local/openssl/lib/libcrypto.so.1.1 (0x00007f3a1c000000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f3a1bfe0000)
\tlibmissing.so.2 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f3a1c600000)
"""
    assert sb.parse_ldd(text) == [
        ("libcrypto.so.1.1", "/usr/local/openssl/lib/libcrypto.so.1.1"),
        ("libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
        ("libmissing.so.2", None),
        ("ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"),
    ]


def test_dpkg_search_output_gives_package_names_without_architecture():
    text = ("zlib1g:amd64: /lib/x86_64-linux-gnu/libz.so.1\n"
            "diversion by foo from: /lib/x\n"
            "libc6:amd64, libc6-i386: /lib64/ld-linux-x86-64.so.2\n")
    assert sb.parse_dpkg_search(text) == {"zlib1g", "libc6", "libc6-i386"}


def test_usr_twins_cross_the_usr_merge():
    assert sb.usr_twins("/lib/x86_64-linux-gnu/libz.so.1") == [
        "/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"]
    assert sb.usr_twins("/usr/lib64/libz.so.1") == ["/usr/lib64/libz.so.1", "/lib64/libz.so.1"]


def test_runtime_dependencies_map_outside_libraries_to_packages():
    ldd = {
        "/usr/local/nginx/sbin/nginx": (
            "\tlibcrypto.so.1.1 => /usr/local/openssl/lib/libcrypto.so.1.1 (0x1)\n"
            "\tlibpcre2-8.so.0 => /lib/x86_64-linux-gnu/libpcre2-8.so.0 (0x2)\n"
            "\tlibodd.so.1 => /opt/odd/libodd.so.1 (0x3)\n"),
        # The stand-in engine has no RUNPATH: its libcrypto comes with the bundle.
        "/usr/local/openssl/lib/engines-1.1/pkcs11.so": "\tlibcrypto.so.1.1 => not found\n",
        "/usr/local/p11-kit/lib/p11-kit-proxy.so": "\tlibgone.so.3 => not found\n",
    }
    owners = {"/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0": "libpcre2-8-0:amd64: /usr/lib/x"}
    calls = []

    def run(argv):
        calls.append(argv)
        if argv[0] == "ldd":
            return 0, ldd[argv[1]], ""
        if argv[-1] in owners:
            return 0, owners[argv[-1]], ""
        return 1, "", "dpkg-query: no path found matching pattern %s" % argv[-1]

    files = list(ldd) + ["/usr/local/openssl/lib/libcrypto.so.1.1"]
    ldd["/usr/local/openssl/lib/libcrypto.so.1.1"] = "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x4)\n"
    owners["/lib/x86_64-linux-gnu/libc.so.6"] = "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6"
    result = sb.runtime_dependencies(run, files, ["/usr/local/openssl", "/usr/local/nginx",
                                                  "/usr/local/p11-kit"],
                                     "Debian", realpath=lambda path: path)
    assert result["packages"] == ["libc6", "libpcre2-8-0"]
    assert result["unowned"] == ["/opt/odd/libodd.so.1"]
    assert result["unresolved"] == ["libgone.so.3 (needed by /usr/local/p11-kit/lib/p11-kit-proxy.so)"]
    # Libraries inside the bundle are never looked up.
    assert not any("/usr/local/openssl/lib/libcrypto.so.1.1" == argv[-1] for argv in calls
                   if argv[0] != "ldd")


def test_rpm_is_asked_on_other_families():
    def run(argv):
        if argv[0] == "ldd":
            return 0, "\tlibz.so.1 => /lib64/libz.so.1 (0x1)\n", ""
        assert argv[:2] == ["rpm", "-qf"]
        return 0, "zlib\n", ""

    result = sb.runtime_dependencies(run, ["/usr/local/nginx/sbin/nginx"], ["/usr/local/nginx"],
                                     "RedHat", realpath=lambda path: path)
    assert result["packages"] == ["zlib"]


# ---------------------------------------------------------------------------
# Making and reading bundles
# ---------------------------------------------------------------------------

def test_a_bundle_starts_with_its_description_and_leaves_out_host_paths(built):
    dest, digest, metadata, host = built
    with tarfile.open(str(dest), "r:gz") as tar:
        names = tar.getnames()
        members = tar.getmembers()
    assert names[0] == sb.METADATA_NAME
    assert not any(name.endswith("conf/nginx.conf") for name in names)
    assert any(name.endswith("conf/mime.types") for name in names)
    assert all(member.uid == 0 and member.gid == 0 for member in members)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert sb.read_metadata(str(dest))["files"] == metadata["files"]


def test_the_same_trees_make_the_same_bundle_bytes(tmp_path):
    host = tmp_path / "host"
    roots = make_tree(host)
    paths, files, links = sb.describe_trees(roots, [])
    metadata = {"format": 1, "name": "n", "distribution": "Debian", "distribution_major_version": "12",
                "architecture": MACHINE, "roots": roots, "files": files, "links": links,
                "runtime_packages": []}
    first = sb.write_bundle(str(tmp_path / "one.tar.gz"), paths, metadata)
    second = sb.write_bundle(str(tmp_path / "two.tar.gz"), paths, metadata)
    assert first == second


def test_special_files_are_refused(tmp_path):
    host = tmp_path / "host"
    roots = make_tree(host)
    os.mkfifo(str(Path(roots[0]) / "bin/fifo"))
    with pytest.raises(sb.BundleError, match="neither a file"):
        sb.describe_trees(roots, [])


def test_inspect_reports_a_good_bundle(built):
    dest, digest, metadata, _ = built
    result = sb.inspect_bundle(str(dest))
    assert result["problem"] == ""
    assert result["checksum_ok"] and result["sha256"] == digest
    assert result["metadata"]["distribution"] == "Debian"


def test_inspect_refuses_a_damaged_bundle_naming_both_sums(built):
    dest, digest, _, _ = built
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    result = sb.inspect_bundle(str(dest))
    assert not result["checksum_ok"]
    assert "does not match its checksum file" in result["problem"]
    assert digest in result["problem"] and result["sha256"] in result["problem"]


def test_inspect_refuses_a_missing_bundle_or_checksum_file(built, tmp_path):
    dest, _, _, _ = built
    assert "does not exist" in sb.inspect_bundle(str(tmp_path / "nothing.tar.gz"))["problem"]
    os.unlink(str(dest) + ".sha256")
    assert "has no checksum file" in sb.inspect_bundle(str(dest))["problem"]


def test_inspect_refuses_a_checksum_file_for_another_name(built):
    dest, digest, _, _ = built
    Path(str(dest) + ".sha256").write_text("%s  other.tar.gz\n" % digest)
    assert "lists no SHA-256" in sb.inspect_bundle(str(dest))["problem"]


def test_inspect_refuses_an_archive_without_description(tmp_path):
    dest = tmp_path / "plain.tar.gz"
    with tarfile.open(str(dest), "w:gz") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    Path(str(dest) + ".sha256").write_text("%s  plain.tar.gz\n" % digest)
    result = sb.inspect_bundle(str(dest))
    assert result["checksum_ok"]
    assert "is not a kmstls stack bundle" in result["problem"]


def test_inspect_refuses_a_description_of_another_format(tmp_path):
    dest = tmp_path / "future.tar.gz"
    text = json.dumps({"format": 99}).encode()
    with open(str(dest), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as packed, \
            tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo(sb.METADATA_NAME)
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    Path(str(dest) + ".sha256").write_text(
        "%s  future.tar.gz\n" % hashlib.sha256(dest.read_bytes()).hexdigest())
    assert "unusable description" in sb.inspect_bundle(str(dest))["problem"]


def test_the_lookup_returns_the_inspection(built):
    dest, digest, _, _ = built
    (result,) = bundle_metadata.LookupModule().run([str(dest)])
    assert result["sha256"] == digest and result["problem"] == ""


def test_the_lookup_takes_exactly_one_path():
    from ansible.errors import AnsibleLookupError
    with pytest.raises(AnsibleLookupError):
        bundle_metadata.LookupModule().run(["a", "b"])


# ---------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------

def test_a_fresh_host_gets_every_tree_and_a_record(built):
    dest, digest, metadata, host = built
    done, record = install(built)
    assert sorted(done["roots"]) == sorted(metadata["roots"])
    assert done["replaced"] == []
    assert (host / "usr/local/nginx/sbin/nginx").read_bytes() == b"\x7fELF nginx v1"
    assert os.readlink(str(host / "usr/local/openssl/lib/libcrypto.so")) == "libcrypto.so.1.1"
    assert os.stat(str(host / "usr/local/openssl/bin/openssl")).st_mode & 0o777 == 0o755
    assert not (host / "usr/local/nginx/conf/nginx.conf").exists()
    assert sb.installed_state(record, digest) == (True, "bundle %s is installed and intact"
                                                  % metadata["name"])
    assert not [name for name in os.listdir(str(host / "usr/local")) if name.startswith(".kmstls-")]


def test_a_changed_file_makes_the_installed_bundle_not_current(built):
    dest, digest, _, host = built
    _, record = install(built)
    (host / "usr/local/nginx/sbin/nginx").write_bytes(b"patched")
    current, reason = sb.installed_state(record, digest)
    assert not current and "differs from the bundle" in reason
    assert sb.installed_state(record, "0" * 64)[0] is False
    assert "no bundle was installed" in sb.installed_state(record + ".none", digest)[1]


def test_a_new_bundle_replaces_the_trees_and_keeps_the_host_paths(built, tmp_path):
    dest, digest, metadata, host = built
    install(built)
    nginx = host / "usr/local/nginx"
    (nginx / "conf/nginx.conf").write_text("# written by the nginx role\n")
    (nginx / "client_body_temp").mkdir()
    (nginx / "client_body_temp/0001").write_text("body")
    (nginx / "logs/error.log").write_text("old errors\n")
    (nginx / "sbin/stale-from-the-old-build").write_text("x")
    # A second build of the stack, with another nginx binary.
    other = tmp_path / "other"
    new_dest = tmp_path / "new.tar.gz"
    roots = make_tree(other)
    (other / "usr/local/nginx/sbin/nginx").write_bytes(b"\x7fELF nginx v2")
    paths, files, links = sb.describe_trees(roots, keep_paths(other))
    # Rename the trees to the host's paths inside the description and members.
    new_metadata = dict(metadata, files={}, links={})
    prefix_old, prefix_new = sb.member_name(str(other)), sb.member_name(str(host))
    for name, value in files.items():
        new_metadata["files"][name.replace(prefix_old, prefix_new, 1)] = value
    for name, value in links.items():
        new_metadata["links"][name.replace(prefix_old, prefix_new, 1)] = value
    text = json.dumps(new_metadata).encode()
    with open(str(new_dest), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as packed, \
            tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo(sb.METADATA_NAME)
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        for path in paths:
            member = sb._tarinfo(path, sb.member_name(path).replace(prefix_old, prefix_new, 1))
            with open(path, "rb") if member.isreg() else io.BytesIO() as content:
                tar.addfile(member, content if member.isreg() else None)
    new_digest = hashlib.sha256(new_dest.read_bytes()).hexdigest()
    record = str(host / "var/lib/kmstls/bundle.json")
    done = sb.install(str(new_dest), new_digest, record, keep_paths(host), as_root=False,
                      machine=MACHINE)
    assert sorted(done["replaced"]) == sorted(metadata["roots"])
    assert (nginx / "sbin/nginx").read_bytes() == b"\x7fELF nginx v2"
    assert not (nginx / "sbin/stale-from-the-old-build").exists()
    assert (nginx / "conf/nginx.conf").read_text() == "# written by the nginx role\n"
    assert (nginx / "client_body_temp/0001").read_text() == "body"
    assert (nginx / "logs/error.log").read_text() == "old errors\n"
    assert sb.installed_state(record, new_digest)[0]
    assert not [name for name in os.listdir(str(host / "usr/local")) if name.startswith(".kmstls-")]


def test_a_damaged_copy_on_the_host_is_refused_before_unpacking(built):
    dest, digest, _, host = built
    with pytest.raises(sb.BundleError, match="damaged on the way"):
        sb.install(str(dest), "f" * 64, str(host / "record.json"), [], as_root=False, machine=MACHINE)
    assert list(host.iterdir()) == []


def test_a_bundle_for_another_architecture_is_refused_on_the_host(built):
    dest, digest, _, host = built
    with pytest.raises(sb.BundleError, match="built for x86_64, this host is aarch64"):
        sb.install(str(dest), digest, str(host / "record.json"), [], as_root=False, machine="aarch64")


def test_a_truncated_bundle_leaves_the_installed_trees_as_they_were(built, tmp_path):
    dest, digest, _, host = built
    install(built)
    before = snapshot(str(host))
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(dest.read_bytes()[: dest.stat().st_size * 2 // 3])
    truncated_digest = hashlib.sha256(truncated.read_bytes()).hexdigest()
    with pytest.raises(sb.BundleError, match="could not be unpacked"):
        sb.install(str(truncated), truncated_digest, str(host / "var/lib/kmstls/bundle.json"),
                   keep_paths(host), as_root=False, machine=MACHINE)
    assert snapshot(str(host)) == before


def test_a_member_outside_the_trees_is_refused(built, tmp_path):
    dest, _, metadata, host = built
    evil = tmp_path / "evil.tar.gz"
    text = json.dumps(metadata).encode()
    with open(str(evil), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as packed, \
            tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo(sb.METADATA_NAME)
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        info = tarfile.TarInfo(sb.member_name(str(host)) + "/etc/passwd")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    with pytest.raises(sb.BundleError, match="outside its trees"):
        sb.install(str(evil), digest, str(host / "record.json"), [], as_root=False, machine=MACHINE)
    assert not (host / "etc/passwd").exists()
    assert not [name for name in os.listdir(str(host / "usr/local")) if name.startswith(".kmstls-")] \
        if (host / "usr/local").exists() else True


def test_a_failed_swap_puts_every_tree_back(built, monkeypatch):
    dest, digest, metadata, host = built
    install(built)
    (host / "usr/local/nginx/conf/nginx.conf").write_text("# mine\n")
    # Install the same bundle again after forgetting it, failing at the third tree's rename.
    os.unlink(str(host / "var/lib/kmstls/bundle.json"))
    before = snapshot(str(host))
    real_rename = os.rename
    staged = []

    def flaky_rename(source, target):
        if os.path.basename(str(source)).startswith(sb.STAGING_PREFIX):
            staged.append(source)
            if len(staged) == 3:
                raise OSError(28, "No space left on device")
        return real_rename(source, target)

    monkeypatch.setattr(sb.os, "rename", flaky_rename)
    with pytest.raises(OSError):
        install(built)
    monkeypatch.setattr(sb.os, "rename", real_rename)
    assert snapshot(str(host)) == before


def test_a_failed_record_write_puts_every_tree_back(built, monkeypatch):
    dest, digest, metadata, host = built
    install(built)
    os.unlink(str(host / "var/lib/kmstls/bundle.json"))
    before = snapshot(str(host))

    def no_record(record, data):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(sb, "write_record", no_record)
    with pytest.raises(OSError):
        install(built)
    assert snapshot(str(host)) == before


def test_an_interrupted_install_is_cleaned_up_by_the_next(built):
    dest, digest, metadata, host = built
    install(built)
    os.unlink(str(host / "var/lib/kmstls/bundle.json"))
    nginx = metadata["roots"][1]
    # Killed between the two renames of the nginx tree: the tree is aside, staging is half full.
    os.rename(nginx, sb.old_dir(nginx))
    os.makedirs(sb.staging_dir(metadata["roots"][0]) + "/half")
    done, record = install(built)
    assert (host / "usr/local/nginx/sbin/nginx").exists()
    assert sb.installed_state(record, digest)[0]
    assert not [name for name in os.listdir(str(host / "usr/local")) if name.startswith(".kmstls-")]


# ---------------------------------------------------------------------------
# The module, run as Ansible runs it (a JSON argument file)
# ---------------------------------------------------------------------------

def run_module(tmp_path, check_mode=False, **args):
    args_file = tmp_path / "args.json"
    module_args = dict(args, _ansible_check_mode=check_mode, _ansible_remote_tmp=str(tmp_path),
                       _ansible_keep_remote_files=False)
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / ".collections"))
    result = subprocess.run([sys.executable, str(ROOT / "plugins/modules/stack_bundle.py"),
                             str(args_file)], capture_output=True, text=True, env=env)
    return json.loads(result.stdout)


def test_the_module_packs_then_installs_and_then_changes_nothing(tmp_path):
    builder = tmp_path / "builder"
    roots = make_tree(builder)
    dest = tmp_path / "b.tar.gz"
    metadata = {"name": "b", "distribution": "Debian", "distribution_major_version": "12",
                "architecture": os.uname().machine}
    made = run_module(tmp_path, state="archived", roots=roots, dest=str(dest), metadata=metadata,
                      exclude=keep_paths(builder))
    assert made["changed"] and len(made["sha256"]) == 64, made
    assert made["metadata"]["runtime_packages"] == []  # the fake programs are not real ELF objects
    again = run_module(tmp_path, state="archived", roots=roots, dest=str(dest), metadata=metadata,
                       exclude=keep_paths(builder))
    assert not again["changed"] and again["sha256"] == made["sha256"], again

    # Install over the builder's own trees after removing them: a fresh host at the same paths.
    for root in roots:
        shutil.rmtree(root)
    record = str(tmp_path / "record.json")
    probe = run_module(tmp_path, check_mode=True, state="present", sha256=made["sha256"], record=record)
    assert probe["changed"] and not probe["current"], probe
    assert not os.path.exists(roots[0])
    done = run_module(tmp_path, state="present", src=str(dest), sha256=made["sha256"], record=record,
                      keep=keep_paths(builder))
    assert done["changed"], done
    assert (builder / "usr/local/nginx/sbin/nginx").read_bytes() == b"\x7fELF nginx v1"
    rerun = run_module(tmp_path, state="present", sha256=made["sha256"], record=record)
    assert not rerun["changed"] and rerun["current"], rerun


def test_the_module_names_a_missing_source_when_it_must_install(tmp_path):
    result = run_module(tmp_path, state="present", sha256="a" * 64, record=str(tmp_path / "r.json"),
                        src=str(tmp_path / "absent.tar.gz"))
    assert result["failed"] and "is not a file on this host" in result["msg"]
