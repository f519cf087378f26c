"""What the pkcs11 role hands to the engine and to the nginx role, per backend.

The role's defaults and internal variables are evaluated with Ansible's own
templating, as a play would, and its templates are rendered from them, so a
change that breaks the contract with the nginx role fails here in seconds
instead of in a Molecule run.
"""

import re
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

ROLE = Path(__file__).resolve().parents[2] / "roles" / "pkcs11"


def role_variables(os_family="Debian", **overrides):
    """Defaults, the OS family's vars and vars/main.yml, with host facts and overrides."""
    variables = {}
    for name in ("defaults/main.yml", "vars/%s.yml" % os_family, "vars/main.yml"):
        variables.update(yaml.safe_load((ROLE / name).read_text()))
    # What gathering facts gives the role on such a host.
    variables.update(ansible_os_family=os_family, ansible_facts={"fqdn": "tls.example.test"},
                     ansible_managed="Ansible managed")
    variables.update(overrides)
    return variables


def evaluate(expression, **settings):
    templar = Templar(loader=DataLoader(), variables=role_variables(**settings))
    return templar.template(expression)


def render(template, **settings):
    templar = Templar(loader=DataLoader(), variables=role_variables(**settings))
    return templar.template((ROLE / "templates" / template).read_text(), escape_backslashes=False)


def engine_section(text):
    """The (name, value) lines of the engine section, in order."""
    section = text.split("[kmstls_pkcs11_engine]", 1)[1]
    return re.findall(r"^([A-Za-z_]+) = (.*)$", section, re.M)


def test_softhsm_service_environment_names_both_configuration_files():
    assert evaluate("{{ __pkcs11_service_environment }}") == {
        "OPENSSL_CONF": "/etc/kmstls/openssl-pkcs11.cnf",
        "SOFTHSM2_CONF": "/etc/kmstls/softhsm2.conf",
    }


def test_kmsp11_service_environment_comes_from_the_libkmsp11_role():
    environment = evaluate(
        "{{ __pkcs11_service_environment }}", pkcs11_backend="kmsp11",
        libkmsp11_environment={"KMS_PKCS11_CONFIG": "/etc/libkmsp11/x.yaml",
                               "GRPC_ENABLE_FORK_SUPPORT": "1"})
    assert environment == {
        "OPENSSL_CONF": "/etc/kmstls/openssl-pkcs11.cnf",
        "KMS_PKCS11_CONFIG": "/etc/libkmsp11/x.yaml",
        "GRPC_ENABLE_FORK_SUPPORT": "1",
    }


def test_kmsp11_without_the_libkmsp11_role_falls_back_to_its_defaults():
    settings = {"pkcs11_backend": "kmsp11"}
    assert evaluate("{{ __pkcs11_module }}", **settings) == "/usr/local/libkmsp11/libkmsp11.so"
    assert evaluate("{{ __pkcs11_service_environment }}", **settings)["GRPC_ENABLE_FORK_SUPPORT"] == "1"


def test_custom_backend_passes_its_environment_through():
    environment = evaluate("{{ __pkcs11_service_environment }}", pkcs11_backend="custom",
                           pkcs11_custom_module="/opt/hsm/lib/libhsm.so",
                           pkcs11_custom_environment={"HSM_CONF": "/opt/hsm/hsm.conf"})
    assert environment == {"OPENSSL_CONF": "/etc/kmstls/openssl-pkcs11.cnf",
                           "HSM_CONF": "/opt/hsm/hsm.conf"}


@pytest.mark.parametrize("backend, pin, manage, expected", [
    ("softhsm", "123456", True, True),
    ("custom", "123456", True, True),
    ("custom", "", True, False),
    ("kmsp11", "123456", True, False),
    # An image is built without secrets: the PIN file comes at deployment.
    ("softhsm", "", False, True),
    ("kmsp11", "", False, False),
])
def test_only_tokens_that_need_a_pin_get_a_pin_file(backend, pin, manage, expected):
    uses_pin = evaluate("{{ __pkcs11_uses_pin | bool }}", pkcs11_backend=backend,
                        pkcs11_user_pin=pin, pkcs11_manage_secrets=manage,
                        pkcs11_custom_module="/opt/hsm/lib/libhsm.so")
    assert uses_pin is expected


@pytest.mark.parametrize("os_family, module, engine", [
    ("Debian", "/usr/lib/softhsm/libsofthsm2.so", "/usr/local/openssl/lib/engines-1.1/pkcs11.so"),
    ("RedHat", "/usr/lib64/pkcs11/libsofthsm2.so", "/usr/local/openssl/lib64/engines-1.1/pkcs11.so"),
])
def test_the_engine_section_loads_initialises_and_names_the_module(os_family, module, engine):
    text = render("openssl-pkcs11.cnf.j2", os_family=os_family)
    assert re.search(r"^openssl_conf = kmstls_openssl_init$", text, re.M)
    assert not re.search(r"^\s*\.include", text, re.M)
    assert "PIN" not in dict(engine_section(text))
    # Order matters to OpenSSL: load, then hand over the module, then initialise.
    assert engine_section(text) == [
        ("engine_id", "pkcs11"),
        ("dynamic_path", engine),
        ("MODULE_PATH", module),
        ("init", "1"),
    ]


def test_call_logging_routes_the_engine_through_p11_kit():
    text = render("openssl-pkcs11.cnf.j2", pkcs11_log_calls=True)
    assert dict(engine_section(text))["MODULE_PATH"] == "/usr/local/p11-kit/lib/p11-kit-proxy.so"
    module = render("p11-kit.module.j2", pkcs11_log_calls=True)
    assert re.search(r"^module: /usr/lib/softhsm/libsofthsm2.so$", module, re.M)
    assert re.search(r"^log-calls: yes$", module, re.M)
    assert evaluate("{{ __pkcs11_p11_kit_module_config }}") == \
        "/usr/local/p11-kit/etc/pkcs11/modules/kmstls-pkcs11.module"


def test_softhsm_configuration_points_at_the_private_token_directory():
    text = render("softhsm2.conf.j2")
    assert re.search(r"^directories.tokendir = /var/lib/kmstls/softhsm/tokens$", text, re.M)
    assert re.search(r"^library.reset_on_fork = false$", text, re.M)


@pytest.mark.parametrize("key, usage", [
    ({"label": "k-ec", "id": "01", "type": "ec"}, "critical, digitalSignature"),
    ({"label": "k-rsa", "id": "02", "type": "rsa"}, "critical, digitalSignature, keyEncipherment"),
])
def test_certificate_request_has_server_extensions(key, usage):
    text = render("certificate.cnf.j2", item=key)
    assert re.search(r"^CN = tls.example.test$", text, re.M)
    assert re.search(r"^keyUsage = %s$" % re.escape(usage), text, re.M)
    assert re.search(r"^subjectAltName = DNS:localhost, IP:127.0.0.1$", text, re.M)
    assert re.search(r"^extendedKeyUsage = serverAuth$", text, re.M)


def test_certificate_request_takes_per_key_names():
    key = {"label": "k", "id": "01", "type": "ec", "common_name": "www.example.test",
           "subject_alt_names": ["DNS:www.example.test"]}
    text = render("certificate.cnf.j2", item=key)
    assert re.search(r"^CN = www.example.test$", text, re.M)
    assert re.search(r"^subjectAltName = DNS:www.example.test$", text, re.M)


def test_certificate_paths_are_published_per_key_label():
    assert evaluate("{{ __pkcs11_softhsm_certificates }}") == {
        "kmstls-ec-p256": "/etc/kmstls/certs/kmstls-ec-p256.crt",
        "kmstls-rsa-2048": "/etc/kmstls/certs/kmstls-rsa-2048.crt",
    }
