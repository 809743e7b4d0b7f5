"""Campaign config validation: every error is one line naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from discovery.config import load_config, parse_config
from discovery.errors import UserError


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_and_example_configs_parse(tmp_path):
    cfg = parse_config({})
    assert cfg.task.name == "token-mixer" and cfg.policy.kind == "evolution"
    for path in ("examples/quickstart.toml", "discovery/templates/campaign.toml"):
        assert load_config(path).name == "quickstart"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[budget]\nmax_evalutions = 3\n", "unknown key 'budget.max_evalutions'"),
        ("[budget]\nmax_evaluations = 'many'\n", "'budget.max_evaluations' = 'many' is invalid"),
        ("[policy]\nkind = 'bayes'\n", "'policy.kind' = 'bayes' is invalid"),
        ("nme = 'x'\n", "unknown key 'nme'"),
        ("[[targets]]\nname = 'g'\ndevice = 'tpu'\n", "'targets[0].device' = 'tpu'"),
        ("[policy]\npopulation = 2\ntournament = 5\n", "tournament (5) must be <= population (2)"),
        ("name = 'bad name!'\n", "'name' = 'bad name!' is invalid"),
    ],
)
def test_bad_config_gives_one_line(tmp_path, text, expected):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert expected in msg, msg
    assert "\n" not in msg


def test_unknown_key_lists_allowed_keys(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, "[budget]\nmax_evalutions = 3\n"))
    assert "max_evaluations" in str(err.value) and "max_wall_minutes" in str(err.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="invalid TOML"):
        load_config(write(tmp_path, "[budget\n"))


def test_llm_role_accepts_table_or_array():
    one = parse_config({"llm": {"researcher": {"model": "openai/x"}}})
    many = parse_config({"llm": {"researcher": [{"model": "a/x"}, {"model": "b/y", "weight": 2}]}})
    assert [r.model for r in one.llm.researcher] == ["openai/x"]
    assert [r.weight for r in many.llm.researcher] == [1.0, 2.0]
