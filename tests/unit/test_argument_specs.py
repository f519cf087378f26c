"""Each role's meta/argument_specs.yml must document exactly its defaults."""

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "meta" / "argument_specs.yml").exists())

# Collection-wide settings that roles accept but do not default (undefined means "not used").
SHARED_OPTIONS = {"kmstls_mirror_url", "kmstls_image_build"}


def load(path):
    return yaml.safe_load(path.read_text()) or {}


def spec_options(role):
    specs = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]
    return specs["main"]["options"]


def test_every_role_has_an_argument_spec():
    assert set(ROLE_NAMES) == {p.name for p in ROLES.iterdir() if p.is_dir()}


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_default_is_documented(role):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    missing = set(defaults) - set(spec_options(role))
    assert not missing, "%s: defaults without an argument spec: %s" % (role, sorted(missing))


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_documented_option_has_a_default_or_is_required(role):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    for name, option in spec_options(role).items():
        if name in defaults or name in SHARED_OPTIONS:
            continue
        assert option.get("required"), "%s: %s is neither defaulted nor required" % (role, name)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_documented_defaults_match_the_real_ones(role):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    for name, option in spec_options(role).items():
        if "default" not in option:
            continue
        assert name in defaults, "%s: %s has a spec default but none in defaults" % (role, name)
        assert option["default"] == defaults[name], (
            "%s: %s defaults to %r but the spec says %r" % (role, name, defaults[name], option["default"])
        )


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_variables_carry_the_role_prefix(role):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    wrong = [name for name in defaults if not name.startswith(role + "_")]
    assert not wrong, "%s: variables without the %s_ prefix: %s" % (role, role, wrong)
