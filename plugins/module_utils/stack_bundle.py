# Copyright: kmstls maintainers
# Apache License 2.0 (see galaxy.yml)
"""Make and install bundles of the collection's prebuilt TLS stack.

A bundle is a gzip-compressed tar archive of installed directory trees (the
build prefixes and the build records) whose first member, KMSTLS-BUNDLE.json,
describes it: the platform it was built on, the trees it holds, the SHA-256
of every file and the target of every symbolic link, and the packages whose
libraries its programs load.

Installing one unpacks every tree into a staging directory next to the tree
it replaces, checks each file against the description, and only then swaps
the trees in with renames, undoing the renames already done if one fails.

This code also runs on the managed hosts, so it stays compatible with
Python 2.7 (CentOS 7).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fnmatch
import glob
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import tarfile
import time
import zlib

METADATA_NAME = "KMSTLS-BUNDLE.json"
FORMAT = 1
STAGING_PREFIX = ".kmstls-new-"
OLD_PREFIX = ".kmstls-old-"
# Keys every description must carry, with the type each must have.
METADATA_KEYS = {
    "format": int,
    "name": str,
    "distribution": str,
    "distribution_major_version": str,
    "architecture": str,
    "roots": list,
    "files": dict,
    "links": dict,
    "runtime_packages": list,
}

try:
    _STRING_TYPES = (str, unicode)  # noqa: F821 (Python 2)
except NameError:
    _STRING_TYPES = (str,)


class BundleError(Exception):
    """A problem the user can act on; its text is shown as it is."""


def sha256_file(path):
    """Return the hex SHA-256 of the file at path."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def member_name(path):
    """Name of an absolute path inside a bundle: the path without its leading slash."""
    return path.lstrip("/")


def _components(path):
    return [part for part in path.split("/") if part]


def is_excluded(path, patterns):
    """Tell whether path, or a directory above it, matches one of the absolute glob patterns.

    Patterns match component by component, so a '*' never reaches across a '/'.
    """
    parts = _components(path)
    for pattern in patterns:
        wanted = _components(pattern)
        if wanted and len(wanted) <= len(parts) and all(
                fnmatch.fnmatchcase(part, want) for part, want in zip(parts, wanted)):
            return True
    return False


def root_problems(roots):
    """Return the reasons why roots cannot be the trees of a bundle (empty when they can)."""
    problems = []
    if not roots:
        problems.append("no tree is given")
    for root in roots:
        if not isinstance(root, _STRING_TYPES) or not root.startswith("/") or root == "/" \
                or os.path.normpath(root) != root:
            problems.append("%r is not a normalised absolute directory other than /" % (root,))
    for root in roots:
        for other in roots:
            if root != other and isinstance(root, _STRING_TYPES) and isinstance(other, _STRING_TYPES) \
                    and other.startswith(root.rstrip("/") + "/"):
                problems.append("%s lies inside %s" % (other, root))
    if len(set(roots)) != len(roots):
        problems.append("a tree is named twice")
    return problems


def metadata_problems(metadata):
    """Return what is wrong with a bundle description (empty when it is usable)."""
    if not isinstance(metadata, dict):
        return ["the description is not a JSON object"]
    problems = []
    for key, kind in sorted(METADATA_KEYS.items()):
        value = metadata.get(key)
        if kind is str:
            ok = isinstance(value, _STRING_TYPES) and value != ""
        else:
            ok = isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            problems.append("%s is missing or not a %s" % (key, kind.__name__))
    if not problems:
        if metadata["format"] != FORMAT:
            problems.append("format %s is not the one this collection reads (%d)"
                            % (metadata["format"], FORMAT))
        problems.extend(root_problems(metadata["roots"]))
    return problems


# ---------------------------------------------------------------------------
# Reading the installed trees
# ---------------------------------------------------------------------------

def walk_tree(root, exclude):
    """Return the absolute paths under root (root first, then sorted), without excluded ones.

    Symbolic links to directories are listed, not followed.
    """
    paths = []
    for current, dirs, files in os.walk(root):
        followed = []
        for name in sorted(dirs):
            path = os.path.join(current, name)
            if is_excluded(path, exclude):
                continue
            paths.append(path)
            if not os.path.islink(path):
                followed.append(name)
        dirs[:] = followed
        for name in files:
            path = os.path.join(current, name)
            if not is_excluded(path, exclude):
                paths.append(path)
    return [root] + sorted(paths)


def describe_trees(roots, exclude):
    """Return (paths, files, links) of the trees: every path to archive, in order,

    {member name: SHA-256} of the regular files and {member name: target} of the links.
    """
    paths, files, links = [], {}, {}
    for root in roots:
        if not os.path.isdir(root) or os.path.islink(root):
            raise BundleError("%s is not a directory on this host" % root)
        for path in walk_tree(root, exclude):
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                links[member_name(path)] = os.readlink(path)
            elif stat.S_ISREG(mode):
                files[member_name(path)] = sha256_file(path)
            elif not stat.S_ISDIR(mode):
                raise BundleError("%s is neither a file, a directory nor a symbolic link" % path)
            paths.append(path)
    return paths, files, links


def is_elf(path):
    """Tell whether path is a regular file starting with the ELF magic number."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"\x7fELF"


def parse_ldd(text):
    """Return [(soname, resolved path or None)] from the output of ldd."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if "=>" in line:
            name, _, rest = line.partition("=>")
            rest = rest.strip()
            if rest.startswith("not found"):
                found.append((name.strip(), None))
            elif rest.startswith("/"):
                found.append((name.strip(), rest.split(" (")[0].strip()))
        elif line.startswith("/"):
            # The dynamic loader: "/lib64/ld-linux-x86-64.so.2 (0x...)".
            path = line.split(" (")[0].strip()
            found.append((os.path.basename(path), path))
    return found


def usr_twins(path):
    """Return path and its twin across the /usr merge (/lib/x <-> /usr/lib/x)."""
    if path.startswith("/usr/"):
        return [path, path[len("/usr"):]]
    return [path, "/usr" + path]


def parse_dpkg_search(text):
    """Return the package names of 'dpkg-query -S' output, without architecture qualifiers."""
    packages = set()
    for line in text.splitlines():
        if not line.strip() or line.startswith("diversion by"):
            continue
        owners = line.split(": ", 1)[0]
        for owner in owners.split(","):
            owner = owner.strip().split(":")[0]
            if owner:
                packages.add(owner)
    return packages


def _package_query(os_family, path):
    if os_family == "Debian":
        return ["dpkg-query", "-S", path], parse_dpkg_search
    return ["rpm", "-qf", "--queryformat", "%{NAME}\n", path], (
        lambda text: set(line.strip() for line in text.splitlines() if line.strip()))


def runtime_dependencies(run, files, roots, os_family, realpath=os.path.realpath):
    """Work out which installed packages provide the libraries the bundle's programs load.

    run(argv) returns (rc, stdout, stderr); files are the absolute paths of the
    bundle's ELF files. Libraries inside roots come with the bundle. Returns
    {"packages": [...], "unresolved": [...], "unowned": [...]}.
    """
    inside = set(os.path.basename(path) for path in files)
    libraries, unresolved = {}, set()
    for path in files:
        rc, out, _ = run(["ldd", path])
        if rc != 0:
            continue  # not a dynamic object (a static library, say)
        for soname, resolved in parse_ldd(out):
            if resolved is None:
                if soname not in inside:
                    unresolved.add("%s (needed by %s)" % (soname, path))
            elif not any(resolved == root or resolved.startswith(root + "/") for root in roots):
                libraries.setdefault(resolved, soname)
    packages, unowned = set(), []
    for library in sorted(libraries):
        owners = set()
        candidates = []
        for candidate in usr_twins(library) + usr_twins(realpath(library)):
            if candidate not in candidates:
                candidates.append(candidate)
        for candidate in candidates:
            argv, parse = _package_query(os_family, candidate)
            rc, out, _ = run(argv)
            if rc == 0:
                owners = parse(out)
                if owners:
                    break
        if owners:
            packages.update(owners)
        else:
            unowned.append(library)
    return {"packages": sorted(packages), "unresolved": sorted(unresolved), "unowned": unowned}


# ---------------------------------------------------------------------------
# Writing and reading bundles
# ---------------------------------------------------------------------------

def _tarinfo(path, name):
    """A tar header for path, owned by root, without hard links (each file is stored whole)."""
    info = os.lstat(path)
    member = tarfile.TarInfo(name)
    member.mode = stat.S_IMODE(info.st_mode)
    member.mtime = int(info.st_mtime)
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    if stat.S_ISLNK(info.st_mode):
        member.type = tarfile.SYMTYPE
        member.linkname = os.readlink(path)
    elif stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
    else:
        member.type = tarfile.REGTYPE
        member.size = info.st_size
    return member


def write_bundle(dest, paths, metadata):
    """Write the bundle to dest (through a temporary file): the description, then every path."""
    text = json.dumps(metadata, indent=1, sort_keys=True).encode("utf-8")
    temporary = dest + ".part"
    try:
        with open(temporary, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed:
                tar = tarfile.open(fileobj=packed, mode="w", format=tarfile.GNU_FORMAT)
                try:
                    header = tarfile.TarInfo(METADATA_NAME)
                    header.size = len(text)
                    header.mode = 0o644
                    header.mtime = 0
                    header.uname = header.gname = "root"
                    tar.addfile(header, io.BytesIO(text))
                    for path in paths:
                        member = _tarinfo(path, member_name(path))
                        if member.isreg():
                            with open(path, "rb") as content:
                                tar.addfile(member, content)
                        else:
                            tar.addfile(member)
                finally:
                    tar.close()
        os.rename(temporary, dest)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return sha256_file(dest)


def read_metadata(path):
    """Return the description stored as the first member of the bundle at path."""
    try:
        tar = tarfile.open(path, "r:gz")
        try:
            first = tar.next()
            if first is None or first.name != METADATA_NAME or not first.isfile():
                raise BundleError("%s is not a kmstls stack bundle: its first member is not %s"
                                  % (path, METADATA_NAME))
            metadata = json.loads(tar.extractfile(first).read().decode("utf-8"))
        finally:
            tar.close()
    except BundleError:
        raise
    except (tarfile.TarError, IOError, OSError, EOFError, ValueError, zlib.error) as error:
        raise BundleError("%s cannot be read as a kmstls stack bundle: %s" % (path, error))
    problems = metadata_problems(metadata)
    if problems:
        raise BundleError("%s has an unusable description: %s" % (path, "; ".join(problems)))
    return metadata


def read_checksum_file(path, name):
    """Return the SHA-256 a sha256sum-style file lists for the file name ('' if none)."""
    with open(path) as handle:
        for line in handle:
            fields = line.strip().split(None, 1)
            if len(fields) == 2 and fields[1].lstrip("*") == name \
                    and len(fields[0]) == 64 and all(c in "0123456789abcdefABCDEF" for c in fields[0]):
                return fields[0].lower()
    return ""


def inspect_bundle(path):
    """Check a bundle on the controller against its .sha256 file and read its description.

    Never raises for a bad bundle: returns a dict whose 'problem' says what is
    wrong ('' when nothing is), next to what could be read.
    """
    result = {"path": path, "name": os.path.basename(path), "sha256": "", "expected_sha256": "",
              "checksum_file": path + ".sha256", "checksum_ok": False, "metadata": {},
              "problem": ""}
    if not os.path.isfile(path):
        result["problem"] = "The bundle %s does not exist on the controller." % path
        return result
    result["sha256"] = sha256_file(path)
    if not os.path.isfile(result["checksum_file"]):
        result["problem"] = ("The bundle %s has no checksum file %s next to it, so its integrity "
                             "cannot be checked." % (path, result["checksum_file"]))
        return result
    result["expected_sha256"] = read_checksum_file(result["checksum_file"], result["name"])
    if not result["expected_sha256"]:
        result["problem"] = ("The checksum file %s lists no SHA-256 for %s."
                             % (result["checksum_file"], result["name"]))
        return result
    if result["expected_sha256"] != result["sha256"]:
        result["problem"] = (
            "The bundle %s does not match its checksum file %s: the file's SHA-256 is %s, the "
            "checksum file expects %s. The bundle was damaged or changed after it was made."
            % (path, result["checksum_file"], result["sha256"], result["expected_sha256"]))
        return result
    result["checksum_ok"] = True
    try:
        result["metadata"] = read_metadata(path)
    except BundleError as error:
        result["problem"] = str(error)
    return result


# ---------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------

def staging_dir(root):
    parent, base = os.path.split(root)
    return os.path.join(parent, STAGING_PREFIX + base)


def old_dir(root):
    parent, base = os.path.split(root)
    return os.path.join(parent, OLD_PREFIX + base)


def remove_path(path):
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def _makedirs(path, mode=0o755):
    try:
        os.makedirs(path, mode)
    except OSError as error:
        if error.errno != errno.EEXIST:
            raise


def recover(roots):
    """Clean up after an install that was killed: put back a tree moved aside, drop staging."""
    for root in roots:
        old = old_dir(root)
        if os.path.lexists(old):
            if os.path.lexists(root):
                remove_path(old)
            else:
                os.rename(old, root)
        if os.path.lexists(staging_dir(root)):
            remove_path(staging_dir(root))


def tree_problems(metadata, limit=5):
    """Return how the installed trees differ from the bundle's description (at most limit)."""
    problems = []
    for name, digest in sorted(metadata.get("files", {}).items()):
        path = "/" + name
        if os.path.islink(path) or not os.path.isfile(path):
            problems.append("%s is missing" % path)
        elif sha256_file(path) != digest:
            problems.append("%s differs from the bundle" % path)
        if len(problems) >= limit:
            return problems
    for name, target in sorted(metadata.get("links", {}).items()):
        path = "/" + name
        if not os.path.islink(path) or os.readlink(path) != target:
            problems.append("the link %s is not the bundle's (-> %s)" % (path, target))
        if len(problems) >= limit:
            break
    return problems


def read_record(record):
    try:
        with open(record) as handle:
            return json.load(handle)
    except (IOError, OSError, ValueError):
        return None


def installed_state(record, sha256):
    """Return (current, reason): whether the bundle with sha256 is installed and intact."""
    data = read_record(record)
    if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
        return False, "no bundle was installed on this host before (no record at %s)" % record
    if data.get("sha256") != sha256:
        return False, "the host has bundle %s installed" % data.get("bundle", "?")
    problems = tree_problems(data["metadata"])
    if problems:
        return False, "the installed trees changed since: " + "; ".join(problems)
    return True, "bundle %s is installed and intact" % data.get("bundle", "?")


def _owning_root(name, roots):
    for root in roots:
        base = member_name(root)
        if name == base or name.startswith(base + "/"):
            return root
    return None


def unpack(tar, metadata, as_root):
    """Unpack the members after the description into the staging directory of each tree."""
    roots = metadata["roots"]
    seen = set()
    directories = []
    for index, member in enumerate(tar):
        name = member.name
        if index == 0 and name == METADATA_NAME:
            continue  # the description, read before
        root = _owning_root(name, roots)
        if root is None or name.startswith("/") or ".." in name.split("/"):
            raise BundleError("the bundle holds %s, which lies outside its trees %s"
                              % (name, ", ".join(roots)))
        target = staging_dir(root) + name[len(member_name(root)):]
        if member.isdir():
            if name == member_name(root):
                _makedirs(os.path.dirname(target))
            _makedirs(target, 0o700)
            directories.append((target, member))
        elif member.isfile():
            expected = metadata["files"].get(name)
            digest = hashlib.sha256()
            with open(target, "wb") as out:
                source = tar.extractfile(member)
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            if expected is None or digest.hexdigest() != expected:
                raise BundleError("%s in the bundle does not match the bundle's description" % name)
            os.chmod(target, member.mode)
            os.utime(target, (member.mtime, member.mtime))
            seen.add(name)
        elif member.issym():
            if metadata["links"].get(name) != member.linkname:
                raise BundleError("the link %s in the bundle does not match the bundle's description"
                                  % name)
            os.symlink(member.linkname, target)
            seen.add(name)
        else:
            raise BundleError("%s in the bundle is neither a file, a directory nor a link" % name)
        if as_root:
            os.lchown(target, 0, 0)
    missing = (set(metadata["files"]) | set(metadata["links"])) - seen
    if missing:
        raise BundleError("the bundle lacks %d of the files its description lists, such as /%s"
                          % (len(missing), sorted(missing)[0]))
    for root in roots:
        if not os.path.isdir(staging_dir(root)):
            raise BundleError("the bundle holds no tree %s although its description lists it" % root)
    # Modes last, deepest first, so that a read-only directory does not stop its own unpacking.
    for target, member in reversed(directories):
        os.chmod(target, member.mode)
        os.utime(target, (member.mtime, member.mtime))


def _copy_preserving(source, dest):
    """Copy a file, link or directory tree with modes, times and owners."""
    info = os.lstat(source)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), dest)
    elif stat.S_ISDIR(info.st_mode):
        os.mkdir(dest)
        for name in sorted(os.listdir(source)):
            _copy_preserving(os.path.join(source, name), os.path.join(dest, name))
        shutil.copystat(source, dest)
    else:
        shutil.copy2(source, dest)
    os.lchown(dest, info.st_uid, info.st_gid)


def carry_over(root, keep):
    """Copy the host's own paths (those matching keep) from root into its staging tree."""
    carried = []
    staging = staging_dir(root)
    for pattern in keep:
        if not pattern.startswith(root + "/"):
            continue
        for path in sorted(glob.glob(pattern)):
            relative = os.path.relpath(path, root)
            dest = os.path.join(staging, relative)
            if os.path.lexists(dest):
                remove_path(dest)
            parent = os.path.dirname(relative)
            if parent:
                missing = []
                probe = parent
                while probe and not os.path.isdir(os.path.join(staging, probe)):
                    missing.append(probe)
                    probe = os.path.dirname(probe)
                for directory in reversed(missing):
                    os.mkdir(os.path.join(staging, directory))
                    shutil.copystat(os.path.join(root, directory), os.path.join(staging, directory))
            _copy_preserving(path, dest)
            carried.append(path)
    return carried


def swap_in(roots, commit):
    """Move every staged tree into place, then call commit(); undo all renames if any step fails.

    Returns the roots that replaced an existing tree.
    """
    done = []
    try:
        for root in roots:
            existed = os.path.lexists(root)
            if existed:
                os.rename(root, old_dir(root))
            try:
                os.rename(staging_dir(root), root)
            except Exception:
                if existed:
                    os.rename(old_dir(root), root)
                raise
            done.append((root, existed))
        commit()
    except Exception:
        for root, existed in reversed(done):
            os.rename(root, staging_dir(root))
            if existed:
                os.rename(old_dir(root), root)
        raise
    return [root for root, existed in done if existed]


def write_record(record, data):
    """Write the record of the installed bundle atomically."""
    _makedirs(os.path.dirname(record))
    temporary = record + ".part"
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.chmod(temporary, 0o644)
    os.rename(temporary, record)


def install(src, sha256, record, keep, as_root=None, machine=None):
    """Install the bundle at src, whose SHA-256 must be sha256; return what was done."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    actual = sha256_file(src)
    if actual != sha256:
        raise BundleError("the copy of the bundle on this host (%s) has SHA-256 %s, not %s: it was "
                          "damaged on the way" % (src, actual, sha256))
    metadata = read_metadata(src)
    machine = machine or platform.machine()
    if metadata["architecture"] != machine:
        raise BundleError("the bundle was built for %s, this host is %s"
                          % (metadata["architecture"], machine))
    roots = metadata["roots"]
    recover(roots)
    try:
        try:
            tar = tarfile.open(src, "r:gz")
            try:
                unpack(tar, metadata, as_root)
            finally:
                tar.close()
        except (tarfile.TarError, IOError, EOFError, zlib.error) as error:
            raise BundleError("the bundle could not be unpacked: %s" % error)
        carried = []
        for root in roots:
            if os.path.isdir(root):
                carried.extend(carry_over(root, keep))
        entry = {
            "sha256": sha256,
            "bundle": metadata["name"],
            "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": metadata,
        }
        replaced = swap_in(roots, lambda: write_record(record, entry))
    finally:
        for root in roots:
            if os.path.lexists(staging_dir(root)):
                remove_path(staging_dir(root))
    leftovers = []
    for root in replaced:
        try:
            remove_path(old_dir(root))
        except OSError as error:
            leftovers.append("%s: %s" % (old_dir(root), error))
    return {"bundle": metadata["name"], "roots": roots, "replaced": replaced, "carried": carried,
            "leftovers": leftovers}
