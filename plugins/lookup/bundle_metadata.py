# Copyright: kmstls maintainers
# Apache License 2.0 (see galaxy.yml)
"""Check a stack bundle on the controller and read its description."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
  name: bundle_metadata
  short_description: Check a stack bundle against its .sha256 file and read its description
  description:
    - Computes the SHA-256 of a bundle made by the C(kmstls.nginx_pkcs11.bundle) role, compares
      it with the C(<bundle>.sha256) file next to it and reads the description stored in the
      bundle (platform, trees, files, runtime packages).
    - Does not fail for a missing, damaged or foreign bundle; the result's C(problem) says what
      is wrong, so that the calling task can refuse it with its own message.
  options:
    _terms:
      description: Controller path of the bundle (one).
      type: path
      required: true
"""

EXAMPLES = r"""
- name: Refuse a bundle that does not match its checksum file
  ansible.builtin.assert:
    that: __bundle.checksum_ok
    fail_msg: "{{ __bundle.problem }}"
  vars:
    __bundle: "{{ lookup('kmstls.nginx_pkcs11.bundle_metadata', kmstls_bundle) }}"
"""

RETURN = r"""
  _raw:
    description:
      - A dictionary with C(path), C(name) (file name), C(sha256) (computed), C(expected_sha256)
        (from the checksum file), C(checksum_file), C(checksum_ok), C(metadata) (the description,
        empty when it could not be read) and C(problem) (empty when the bundle is usable).
    type: list
    elements: dict
"""

import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible_collections.kmstls.nginx_pkcs11.plugins.module_utils.stack_bundle import inspect_bundle


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if len(terms) != 1 or not terms[0]:
            raise AnsibleLookupError("bundle_metadata takes exactly one bundle path, got %r" % (terms,))
        path = os.path.abspath(os.path.expanduser(str(terms[0])))
        return [inspect_bundle(path)]
