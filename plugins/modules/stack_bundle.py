#!/usr/bin/python
# Copyright: kmstls maintainers
# Apache License 2.0 (see galaxy.yml)
"""Make a bundle of the prebuilt TLS stack on a builder, or install one on a host."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
  module: stack_bundle
  short_description: Make or install a bundle of the collection's prebuilt TLS stack
  description:
    - With O(state=archived), packs installed directory trees into a gzip-compressed tar archive
      whose first member, C(KMSTLS-BUNDLE.json), lists the SHA-256 of every file, the target of
      every link and the packages that provide the libraries its programs load (found with
      C(ldd) and C(dpkg-query) or C(rpm)).
    - With O(state=present), installs such a bundle. Nothing is done when the record says the
      same bundle is installed and every file still matches it. Otherwise the bundle is checked
      against O(sha256), each tree is unpacked and checked next to the tree it replaces, the host's
      own paths (O(keep)) are copied over from the current trees, and the trees are swapped in by
      renames that are undone if one of them fails. A killed earlier run is cleaned up first.
    - Used by the C(kmstls.nginx_pkcs11.bundle) role, which checks the bundle on the controller
      and refuses one made for another platform before calling this module.
  options:
    state:
      description: C(archived) makes a bundle, C(present) installs one.
      type: str
      required: true
      choices: [archived, present]
    roots:
      description: Absolute directories to pack (O(state=archived)).
      type: list
      elements: path
    exclude:
      description:
        - Absolute paths (glob patterns, matched per path component) left out of the bundle,
          with everything below them (O(state=archived)).
      type: list
      elements: str
      default: []
    dest:
      description: Where the bundle is written (O(state=archived)).
      type: path
    metadata:
      description:
        - Description of the bundle (O(state=archived)); needs C(name), C(distribution),
          C(distribution_major_version) and C(architecture). The module adds C(format),
          C(roots), C(exclude), C(files), C(links), C(runtime_packages) and C(created).
      type: dict
    os_family:
      description: C(Debian) or another family (rpm); chooses how library owners are found.
      type: str
      default: Debian
    src:
      description:
        - The bundle on the host (O(state=present)). Not needed in check mode or when the
          bundle is installed already.
      type: path
    sha256:
      description: SHA-256 the bundle must have (O(state=present)).
      type: str
    record:
      description: Record of the installed bundle on the host (O(state=present)).
      type: path
      default: /var/lib/kmstls/bundle.json
    keep:
      description:
        - Absolute paths (glob patterns) inside the trees that belong to the host; they are copied
          from the current trees into the new ones (O(state=present)).
      type: list
      elements: str
      default: []
  author: kmstls maintainers
"""

EXAMPLES = r"""
- name: Pack the installed stack into a bundle
  kmstls.nginx_pkcs11.stack_bundle:
    state: archived
    roots: [/usr/local/openssl, /usr/local/p11-kit, /usr/local/nginx, /var/lib/kmstls/builds]
    exclude: [/usr/local/nginx/conf/nginx.conf]
    dest: /var/tmp/kmstls-bundles/kmstls-stack-debian-12-x86_64-0123456789ab.tar.gz
    metadata:
      name: kmstls-stack-debian-12-x86_64-0123456789ab
      distribution: Debian
      distribution_major_version: "12"
      architecture: x86_64

- name: Install a bundle copied to the host
  kmstls.nginx_pkcs11.stack_bundle:
    state: present
    src: /var/tmp/kmstls-bundles/kmstls-stack-debian-12-x86_64-0123456789ab.tar.gz
    sha256: "{{ bundle_sha256 }}"
    keep: [/usr/local/nginx/conf/nginx.conf]
"""

RETURN = r"""
  sha256:
    description: SHA-256 of the bundle written (O(state=archived)).
    type: str
    returned: state is archived
  metadata:
    description: The bundle's description, without its file lists.
    type: dict
    returned: always
  current:
    description: Whether the bundle was installed and intact before this run (O(state=present)).
    type: bool
    returned: state is present
  reason:
    description: Why the bundle is, or is not, considered installed.
    type: str
    returned: state is present
  replaced:
    description: Trees that replaced an existing one.
    type: list
    returned: when a bundle was installed
  carried:
    description: Host paths copied from the old trees into the new ones.
    type: list
    returned: when a bundle was installed
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmstls.nginx_pkcs11.plugins.module_utils.stack_bundle import (
    FORMAT,
    BundleError,
    describe_trees,
    install,
    installed_state,
    is_elf,
    read_metadata,
    root_problems,
    runtime_dependencies,
    sha256_file,
    write_bundle,
)


def _summary(metadata):
    return dict((key, value) for key, value in metadata.items() if key not in ("files", "links"))


def archived(module):
    params = module.params
    roots, dest, given = params["roots"] or [], params["dest"], params["metadata"] or {}
    problems = root_problems(roots)
    missing = [key for key in ("name", "distribution", "distribution_major_version", "architecture")
               if not given.get(key)]
    if missing:
        problems.append("metadata lacks %s" % ", ".join(missing))
    if not dest:
        problems.append("dest is required")
    if problems:
        module.fail_json(msg="Cannot make a bundle: " + "; ".join(problems))
    if os.path.isfile(dest):
        try:
            existing = read_metadata(dest)
        except BundleError:
            existing = None
        if existing and all(existing.get(key) == value for key, value in given.items()) \
                and existing.get("roots") == roots:
            module.exit_json(changed=False, sha256=sha256_file(dest), metadata=_summary(existing))
    if module.check_mode:
        module.exit_json(changed=True, metadata=given)

    def run(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    try:
        paths, files, links = describe_trees(roots, params["exclude"])
        elf = [path for path in paths if is_elf(path)]
        dependencies = runtime_dependencies(run, elf, roots, params["os_family"])
        metadata = dict(given)
        metadata.update({
            "format": FORMAT,
            "roots": roots,
            "exclude": params["exclude"],
            "files": files,
            "links": links,
            "runtime_packages": dependencies["packages"],
            "unresolved_libraries": dependencies["unresolved"],
            "unowned_libraries": dependencies["unowned"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        digest = write_bundle(dest, paths, metadata)
    except (BundleError, OSError, IOError) as error:
        module.fail_json(msg="Cannot make the bundle %s: %s" % (dest, error))
    for library in dependencies["unowned"]:
        module.warn("%s, which the stack loads, belongs to no package; hosts installing the bundle "
                    "must provide it themselves" % library)
    for library in dependencies["unresolved"]:
        module.warn("%s is not found on the builder" % library)
    module.exit_json(changed=True, sha256=digest, metadata=_summary(metadata))


def present(module):
    params = module.params
    sha256 = (params["sha256"] or "").lower()
    if len(sha256) != 64:
        module.fail_json(msg="sha256 must be the 64 hex digits of the bundle's SHA-256, got %r"
                         % params["sha256"])
    current, reason = installed_state(params["record"], sha256)
    if current or module.check_mode:
        module.exit_json(changed=not current, current=current, reason=reason, metadata={})
    if not params["src"] or not os.path.isfile(params["src"]):
        module.fail_json(msg="The bundle must be installed (%s), but src %r is not a file on this host"
                         % (reason, params["src"]), current=False, reason=reason)
    try:
        done = install(params["src"], sha256, params["record"], params["keep"])
    except (BundleError, OSError, IOError) as error:
        module.fail_json(
            msg="The bundle %s was not installed: %s. The installed trees were left as they were."
            % (params["src"], error), current=False, reason=reason)
    for leftover in done["leftovers"]:
        module.warn("could not remove the replaced tree %s" % leftover)
    module.exit_json(changed=True, current=False, reason=reason, replaced=done["replaced"],
                     carried=done["carried"], metadata={"name": done["bundle"], "roots": done["roots"]})


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", required=True, choices=["archived", "present"]),
            roots=dict(type="list", elements="path"),
            exclude=dict(type="list", elements="str", default=[]),
            dest=dict(type="path"),
            metadata=dict(type="dict"),
            os_family=dict(type="str", default="Debian"),
            src=dict(type="path"),
            sha256=dict(type="str"),
            record=dict(type="path", default="/var/lib/kmstls/bundle.json"),
            keep=dict(type="list", elements="str", default=[]),
        ),
        required_if=[
            ("state", "archived", ("roots", "dest", "metadata")),
            ("state", "present", ("sha256",)),
        ],
        supports_check_mode=True,
    )
    if module.params["state"] == "archived":
        archived(module)
    else:
        present(module)


if __name__ == "__main__":
    main()
