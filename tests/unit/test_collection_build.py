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
              ("molecule", "tests", "scripts", ".ci", ".venv", ".cache", ".collections", ".git")]
    assert not leaked, leaked
