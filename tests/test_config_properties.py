"""Properties of the whole config surface: whatever a user types after `--set`, writes in a
YAML preset or posts as `/params` JSON, the answer is a config or one short ConfigError line."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.config import SECTIONS, load_config, merge_params, params_class, parse_assignment
from streamer.errors import ConfigError

LONGEST = 300
"""An error line quotes at most ~60 characters of the bad value and ~160 of the reason (the
page's HTTP errors are cut at 300 too)."""

KEYS = [(section, key) for section in SECTIONS for key in params_class(section).model_fields]
SOME_KEY = st.one_of(
    st.sampled_from(KEYS),
    st.tuples(st.sampled_from(list(SECTIONS)), st.text(max_size=30)),  # unknown keys too
)
TEXT = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["", "none", "null", "true", "off", "0", "-1", "1e400", "nan", "-inf", "0x10"]),
    st.sampled_from(["#00ff00", "0,255,0", "green", "512x288", "512", "blur", "image", "cuda:1", "a.lan"]),
    st.from_regex(r"-?\d{1,6}([.,x ]\d{1,6}){0,3}", fullmatch=True),
)
# Anything YAML or JSON can hold, numbers at their extremes included.
VALUE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        TEXT,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
CHECKS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def answer(make) -> object:
    """The config `make()` builds, or its error line checked for shape."""
    try:
        return make()
    except ConfigError as err:
        line = str(err)
        assert line and "\n" not in line and "\r" not in line and len(line) <= LONGEST, line
        return err


@CHECKS
@given(key=SOME_KEY, text=TEXT)
def test_any_set_text_is_a_config_or_one_line(key, text):
    def make():
        section, option, value = parse_assignment(f"{key[0]}.{key[1]}={text}")
        return load_config(None, {section: {option: value}})

    answer(make)


@CHECKS
@given(assignment=st.text(max_size=60))
def test_any_set_argument_is_a_config_or_one_line(assignment):
    def make():
        section, option, value = parse_assignment(assignment)
        return load_config(None, {section: {option: value}})

    answer(make)


@CHECKS
@given(changes=st.lists(st.tuples(SOME_KEY, VALUE), max_size=4))
def test_any_yaml_or_json_values_are_a_config_or_one_line(changes, tmp_path_factory):
    values: dict[str, dict] = {}
    for (section, key), value in changes:
        values.setdefault(section, {})[key] = value
    answer(lambda: load_config(None, values))
    # The same values as a preset file (YAML keeps them all, nan and inf included).
    path = tmp_path_factory.mktemp("preset") / "p.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    answer(lambda: load_config(str(path)))
    # ... and as a live change (the page's /params, typed controls) of the defaults.
    defaults = load_config()
    for section, section_values in values.items():
        answer(lambda s=section, v=section_values: merge_params(getattr(defaults, s), s, v))


@CHECKS
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_preset_file_is_a_config_or_one_line(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("preset") / "p.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    answer(lambda: load_config(str(path)))


@pytest.mark.parametrize("section", SECTIONS)
def test_a_section_survives_its_own_json(section):
    """What `/params` replies (model_dump as JSON) is accepted back as it is."""
    params = load_config().sections[section]
    again = merge_params(params, section, params.model_dump(mode="json"))
    assert again == params


@pytest.mark.parametrize(("section", "key"), KEYS)
def test_every_number_refuses_non_finite_values(section, key):
    field = params_class(section).model_fields[key]
    if "float" not in str(field.annotation) and "int" not in str(field.annotation):
        return
    for bad in (math.inf, -math.inf, math.nan, "nan", True):
        result = answer(lambda b=bad: load_config(None, {section: {key: b}}))
        assert isinstance(result, ConfigError), (section, key, bad)
        assert str(result).startswith(f"{section}.{key}: bad value "), result
