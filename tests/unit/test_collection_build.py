"""`ansible-galaxy collection build` must ship the roles and playbooks, not the test bed."""

import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_built_collection_has_no_tests_or_molecule_files(tmp_path):
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    subprocess.run([str(galaxy), "collection", "build", "--output-path", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (tarball,) = tmp_path.glob("kmstls-nginx_pkcs11-*.tar.gz")
    names = tarfile.open(tarball).getnames()
    assert "roles/openssl/tasks/main.yml" in names
    assert "playbooks/site.yml" in names
    assert "meta/runtime.yml" in names
    leaked = [n for n in names if n.split("/")[0] in
              ("molecule", "tests", "scripts", ".ci", ".venv", ".cache", ".collections", ".git",
               "inventory", "ansible.cfg")]
    assert not leaked, leaked


def test_installed_tarball_runs_its_playbooks_by_fqcn(tmp_path):
    """What a user does with the built tarball: install it, then name playbooks by FQCN."""
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "ansible-galaxy"), "collection", "build", "--output-path",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (tarball,) = tmp_path.glob("kmstls-nginx_pkcs11-*.tar.gz")
    installed = tmp_path / "collections"
    # Outside the checkout (no ansible.cfg of ours, which would find the
    # linked checkout), with only the installed copy.
    env = {"PATH": str(bindir) + ":/usr/bin:/bin", "HOME": str(tmp_path),
           "ANSIBLE_COLLECTIONS_PATH": str(installed)}
    subprocess.run([str(bindir / "ansible-galaxy"), "collection", "install", "--offline",
                    "-p", str(installed), str(tarball)], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    assert (installed / "ansible_collections/kmstls/nginx_pkcs11/playbooks/site.yml").is_file()
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("kmstls_nginx:\n  hosts:\n    web1:\n    web2:\n")
    for playbook in ("site", "build", "serve"):
        listed = subprocess.run(
            [str(bindir / "ansible-playbook"), "-i", str(inventory), "--list-hosts", "--list-tasks",
             "kmstls.nginx_pkcs11." + playbook], cwd=tmp_path, env=env, capture_output=True,
            text=True)
        assert listed.returncode == 0, listed.stderr
        assert "web1" in listed.stdout and "web2" in listed.stdout
        role = "kmstls.nginx_pkcs11.%s :" % ("nginx" if playbook == "serve" else "openssl")
        assert role in listed.stdout
    assert str(installed) in subprocess.run(
        [str(bindir / "ansible-galaxy"), "collection", "list", "kmstls.nginx_pkcs11"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
