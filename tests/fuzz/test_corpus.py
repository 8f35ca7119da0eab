"""The fixed corpus of issue 13: every case refused with its own cause, named in its message, nothing run.

Each message must name the file, the field, the value found, what was expected and what to do;
the command line must print exactly that and exit 2.
"""

from __future__ import annotations

import pytest
from corpus import CASES, MARKER_NAME, good_files
from tiny import tiny_causal_lm
from typer.testing import CliRunner

import softprompt
from softprompt.cli import app


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return good_files(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def bases():
    return {family: tiny_causal_lm(family) for family in ("llama", "gpt2")}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_case_is_refused_with_its_reason(case, good, bases, tmp_path):
    path = case.make(good, tmp_path)
    with pytest.raises(softprompt.AdapterFileError) as refused:
        softprompt.load(bases[case.base], path)
    err = refused.value
    assert type(err) is case.error, f"{type(err).__name__}: {err}"
    message = str(err)
    assert case.says in message, message
    # file, field, value, expectation and what to do: "<path>: <field> is <value>; expected <...>.\n<Fix>."
    first, fix = message.split("\n")
    assert first.startswith(f"{err.path}: {err.field} is {err.found}; expected {err.expected}")
    assert str(path) in err.path or str(tmp_path) in err.path or str(path.parent) in err.path
    assert fix[0].isupper() and fix.endswith(".")
    assert not (tmp_path / MARKER_NAME).exists(), "a pickle was run"


CLI_CASES = [case for case in CASES if case.base == "llama" and not case.name.startswith("peft")]


@pytest.mark.parametrize("case", CLI_CASES[::3], ids=lambda case: case.name)
def test_the_cli_prints_the_message_and_exits_2(case, good, tmp_path):
    path = case.make(good, tmp_path)
    result = CliRunner().invoke(app, ["inspect", str(path), "--no-neighbours"])
    if case.error in (softprompt.files.WrongModelError,) or "model_options" in case.name:
        pytest.skip("refused on loading onto a model; inspect only reads the file")
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert case.says in result.output and "Traceback" not in result.output
