"""Unit tests for the PKCS#11 URI filters (plugins/filter/pkcs11_uri.py)."""

import importlib.util
import re
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from ansible.errors import AnsibleFilterError

_PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "filter" / "pkcs11_uri.py"
_SPEC = importlib.util.spec_from_file_location("kmstls_pkcs11_uri", _PLUGIN)
plugin = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(plugin)

FILTERS = plugin.FilterModule().filters()
pkcs11_uri = FILTERS["pkcs11_uri"]
pkcs11_engine_key = FILTERS["pkcs11_engine_key"]
problems = FILTERS["pkcs11_uri_problems"]
id_length = FILTERS["pkcs11_id_length"]

# RFC 7512: a path attribute value holds unreserved characters and %XX only
# (the reserved characters it could also hold are left encoded here).
VALUE = re.compile(r"^(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})*$")


def attributes(uri):
    """Split 'pkcs11:a=1;b=2?c=3' into ({a: 1, b: 2}, {c: 3}) of raw (encoded) values."""
    assert uri.startswith("pkcs11:")
    path, _, query = uri[len("pkcs11:"):].partition("?")

    def split(text, sep):
        return dict(item.split("=", 1) for item in text.split(sep) if item)

    return split(path, ";"), split(query, "&")


def test_plain_labels_are_kept_and_type_defaults_to_private():
    assert pkcs11_uri({"token": "nginx", "object": "ec-p256"}) == (
        "pkcs11:token=nginx;object=ec-p256;type=private")


def test_engine_key_is_prefixed_for_nginx():
    key = pkcs11_engine_key({"token": "t", "object": "k"})
    assert key == "engine:pkcs11:pkcs11:token=t;object=k;type=private"


@pytest.mark.parametrize("label", [
    "my token", "a;b", "a?b", "a&b", "a=b", "50%", "quote\"d", "back\\slash",
    "dollar$var", "hash#1", "slash/name", "unicodé ключ", "curly{}",
])
def test_awkward_labels_are_percent_encoded_and_round_trip(label):
    path, query = attributes(pkcs11_uri({"token": label, "object": label}))
    assert query == {}
    for key in ("token", "object"):
        assert VALUE.match(path[key]), path[key]
        assert unquote_to_bytes(path[key]).decode("utf-8") == label


def test_a_label_with_a_space_is_encoded_as_percent_20():
    assert "token=nginx%20keys;" in pkcs11_uri({"token": "nginx keys", "object": "k"})


def test_characters_nginx_treats_specially_never_appear_raw():
    uri = pkcs11_engine_key({"token": "a b;c{d}$e\"f'g", "object": "k"},
                            pin_file="/etc/kmstls/my pin;$x")
    for char in " {}$\"'\\":
        assert char not in uri


@pytest.mark.parametrize("given, encoded", [
    ("01", "%01"),
    ("a1b2", "%A1%B2"),
    ("A1:B2:c3", "%A1%B2%C3"),
    ("de ad be ef", "%DE%AD%BE%EF"),
])
def test_id_is_hex_encoded_byte_by_byte(given, encoded):
    path, _ = attributes(pkcs11_uri({"id": given}))
    assert path["id"] == encoded
    assert id_length(given) == len(encoded) // 3


@pytest.mark.parametrize("bad", ["0", "xyz1", "0g", "", 7, "01:2"])
def test_an_id_that_is_not_hex_bytes_is_refused(bad):
    found = problems({"object": "k", "id": bad})
    assert found and any("id" in problem for problem in found)
    with pytest.raises(AnsibleFilterError):
        pkcs11_uri({"object": "k", "id": bad})
    assert id_length(bad) == 0


def test_id_length_counts_bytes_not_hex_digits():
    assert id_length("ab" * 101) == 101
    assert id_length("ab" * 100) == 100


def test_pin_file_becomes_a_readable_pin_source_query():
    uri = pkcs11_uri({"token": "t", "object": "k"}, pin_file="/etc/kmstls/token.pin")
    assert uri.endswith("?pin-source=file:/etc/kmstls/token.pin")
    _, query = attributes(uri)
    assert unquote_to_bytes(query["pin-source"]) == b"file:/etc/kmstls/token.pin"


def test_a_pin_file_path_with_separators_is_encoded():
    uri = pkcs11_uri({"object": "k"}, pin_file="/etc/a;b&c?d")
    _, query = attributes(uri)
    assert unquote_to_bytes(query["pin-source"]) == b"file:/etc/a;b&c?d"


def test_a_relative_pin_file_is_refused():
    with pytest.raises(AnsibleFilterError, match="absolute"):
        pkcs11_uri({"object": "k"}, pin_file="token.pin")


@pytest.mark.parametrize("parts", [
    {"object": "k", "pin": "1234"},
    {"object": "k", "pin-value": "1234"},
    {"object": "k", "pin_value": "1234"},
    {"object": "k", "pin-source": "file:/x"},
    {"object": "k?pin-value=1234"},
    {"object": "k", "token": "t;pin-value=1234"},
    {"object": "k", "token": "t?PIN-source=/x"},
    {"object": "k", "serial": "pin-value"},
])
def test_any_pin_in_the_parts_is_refused(parts):
    found = problems(parts)
    assert any("PIN" in problem for problem in found), found
    with pytest.raises(AnsibleFilterError, match="PIN"):
        pkcs11_engine_key(parts)


def test_the_refusal_does_not_repeat_the_pin():
    with pytest.raises(AnsibleFilterError) as raised:
        pkcs11_uri({"object": "k", "pin": "s3cret-pin"})
    assert "s3cret-pin" not in str(raised.value)


@pytest.mark.parametrize("parts, word", [
    ({"token": "t"}, "names no object"),
    ({"object": "k", "type": "secret"}, "type"),
    ({"object": "k", "label": "x"}, "label"),
    ({"object": ""}, "empty"),
    ("pkcs11:object=k", "dictionary"),
])
def test_other_mistakes_are_named(parts, word):
    found = problems(parts)
    assert any(word in problem for problem in found), found


def test_explicit_type_and_token_attributes_are_kept_in_rfc_order():
    uri = pkcs11_uri({"type": "cert", "id": "01", "serial": "0f", "model": "SoftHSM v2",
                      "manufacturer": "SoftHSM project", "token": "t", "object": "k"})
    assert uri == ("pkcs11:token=t;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;"
                   "serial=0f;object=k;id=%01;type=cert")


def test_engine_id_is_checked():
    assert pkcs11_engine_key({"object": "k"}, engine="pkcs11").startswith("engine:pkcs11:")
    with pytest.raises(AnsibleFilterError):
        pkcs11_engine_key({"object": "k"}, engine="pk cs11;")
