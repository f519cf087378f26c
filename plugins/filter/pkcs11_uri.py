# Copyright: kmstls maintainers
# Apache License 2.0 (see galaxy.yml)
"""Filters that build RFC 7512 PKCS#11 URIs from structured parts.

A key reference written by hand is easy to get subtly wrong: a ``;`` or a
space in a token label ends the attribute early, an object ID must be given
as bytes, and a PIN pasted into the URI ends up in every ``nginx -T`` dump.
These filters take the parts as a dictionary, encode each value, and refuse
PINs outright; the only way to authenticate is a PIN file, referenced with
``pin-source``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
  name: pkcs11_uri
  short_description: Build a PKCS#11 URI (RFC 7512) from structured parts
  description:
    - Encodes each part with percent-encoding, so labels may hold any character.
    - The object ID is given as hexadecimal bytes and encoded byte by byte.
    - Refuses any part that carries a PIN; pass O(pin_file) instead, which adds
      C(pin-source=file:<path>) to the query.
    - The companion filter C(pkcs11_engine_key) returns the same URI prefixed with
      C(engine:pkcs11:), the form nginx's C(ssl_certificate_key) expects, and
      C(pkcs11_uri_problems) returns the list of problems instead of failing.
  options:
    _input:
      description: >-
        Dictionary with any of C(token), C(manufacturer), C(model), C(serial)
        (token attributes), C(object) (object label), C(id) (object ID as hex,
        colons and spaces allowed) and C(type) (C(private), C(public), C(cert),
        C(secret-key) or C(data); C(private) when omitted). At least one of
        C(object) and C(id) is required.
      type: dict
      required: true
    pin_file:
      description: Absolute path of a file holding the PIN, referenced with C(pin-source).
      type: path
"""

EXAMPLES = r"""
- name: Show the key reference for an EC key
  ansible.builtin.debug:
    msg: >-
      {{ {'token': 'nginx keys', 'object': 'ec-p256', 'id': '01'}
         | kmstls.nginx_pkcs11.pkcs11_engine_key(pin_file='/etc/kmstls/pin') }}
  # engine:pkcs11:pkcs11:token=nginx%20keys;object=ec-p256;id=%01;type=private
  #   ?pin-source=file:/etc/kmstls/pin
"""

RETURN = r"""
  _value:
    description: The URI, e.g. C(pkcs11:token=a;object=b;type=private).
    type: str
"""

import re
import string

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_bytes, to_native

# Path attributes in the order RFC 7512 lists them; the order is cosmetic.
_PATH_ATTRIBUTES = ("token", "manufacturer", "model", "serial", "object", "id", "type")
_OBJECT_TYPES = ("private", "public", "cert", "secret-key", "data")
# Keys that would put a PIN, or a PIN source other than the file, into the URI.
_PIN_KEYS = ("pin", "pin-value", "pin_value", "pinvalue", "pin-source", "pin_source")
# A PIN smuggled inside a value, e.g. object: "key?pin-value=1234".
_PIN_IN_VALUE = re.compile(r"pin-value|[?;&]pin", re.IGNORECASE)

_UNRESERVED = frozenset((string.ascii_letters + string.digits + "-._~").encode("ascii"))
# Besides the unreserved characters, a query value may keep these (RFC 7512,
# pk11-query-res-avail), which keeps file paths readable.
_QUERY_KEEP = _UNRESERVED | frozenset(b"/:")


def _encode(value, keep=_UNRESERVED):
    """Percent-encode every byte of value's UTF-8 form that is not in keep."""
    return "".join(
        chr(byte) if byte in keep else "%%%02X" % byte for byte in to_bytes(value, errors="strict")
    )


def _id_bytes(value):
    """Return the bytes of a hex object ID such as '01', 'a1:b2' or 'A1 B2'."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("give it as a hex string, e.g. '%02x'" % value)
    digits = re.sub(r"[\s:]", "", to_native(value))
    if not digits or len(digits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
        raise ValueError("an even number of hex digits is expected (colons and spaces allowed)")
    return bytes.fromhex(digits)


def pkcs11_uri_problems(parts, pin_file=None):
    """Return a list of readable problems with parts; empty when the URI can be built."""
    if not isinstance(parts, dict):
        return ["the key reference must be a dictionary of URI parts, got %s" % type(parts).__name__]
    problems = []
    for key in sorted(parts, key=str):
        if str(key).lower() in _PIN_KEYS:
            problems.append(
                "it carries a PIN (%s); keep the PIN out of the configuration and "
                "reference a PIN file instead" % key)
        elif key not in _PATH_ATTRIBUTES:
            problems.append(
                "%s is not a URI part this filter knows (allowed: %s)"
                % (key, ", ".join(_PATH_ATTRIBUTES)))
    for key in _PATH_ATTRIBUTES:
        value = parts.get(key)
        if value is None:
            continue
        if _PIN_IN_VALUE.search(to_native(value)):
            problems.append(
                "%s contains what looks like a PIN attribute; keep the PIN out of the "
                "configuration and reference a PIN file instead" % key)
        elif to_native(value) == "":
            problems.append("%s is empty; leave it out instead" % key)
    if "id" in parts and parts["id"] is not None:
        try:
            _id_bytes(parts["id"])
        except ValueError as error:
            problems.append("id %r is not a usable object ID: %s" % (parts["id"], error))
    if parts.get("type") is not None and parts["type"] not in _OBJECT_TYPES:
        problems.append(
            "type %r is not one of %s" % (parts["type"], ", ".join(_OBJECT_TYPES)))
    if parts.get("object") in (None, "") and parts.get("id") in (None, ""):
        problems.append("it names no object: give object (the label), id, or both")
    if pin_file is not None and pin_file != "":
        pin_file = to_native(pin_file)
        if not pin_file.startswith("/"):
            problems.append("the PIN file %r is not an absolute path" % pin_file)
    return problems


def pkcs11_uri(parts, pin_file=None):
    """Build 'pkcs11:<path>[?pin-source=file:<pin_file>]' from parts."""
    problems = pkcs11_uri_problems(parts, pin_file)
    if problems:
        raise AnsibleFilterError("Cannot build a PKCS#11 URI: " + "; ".join(problems))
    path = []
    for key in _PATH_ATTRIBUTES:
        value = parts.get(key)
        if key == "type" and value is None:
            value = "private"
        if value is None:
            continue
        if key == "id":
            encoded = "".join("%%%02X" % byte for byte in _id_bytes(value))
        else:
            encoded = _encode(to_native(value))
        path.append("%s=%s" % (key, encoded))
    uri = "pkcs11:" + ";".join(path)
    if pin_file:
        uri += "?pin-source=" + _encode("file:" + to_native(pin_file), _QUERY_KEEP)
    return uri


def pkcs11_engine_key(parts, pin_file=None, engine="pkcs11"):
    """Build the 'engine:<engine>:<uri>' form that nginx's ssl_certificate_key takes."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", to_native(engine)):
        raise AnsibleFilterError("engine %r is not a valid OpenSSL engine id" % (engine,))
    return "engine:%s:%s" % (engine, pkcs11_uri(parts, pin_file))


def pkcs11_id_length(value):
    """Return the number of bytes of a hex object ID (0 when it is not valid hex)."""
    try:
        return len(_id_bytes(value))
    except ValueError:
        return 0


class FilterModule(object):
    """PKCS#11 URI filters."""

    def filters(self):
        return {
            "pkcs11_uri": pkcs11_uri,
            "pkcs11_engine_key": pkcs11_engine_key,
            "pkcs11_uri_problems": pkcs11_uri_problems,
            "pkcs11_id_length": pkcs11_id_length,
        }
