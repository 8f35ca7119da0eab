"""The reference pages cover what softprompt accepts: every run-config key is in docs/configuration.md,
every option each command's --help lists is in docs/cli.md (regenerate both with
``python -m softprompt.cli.reference docs``)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.main import get_command
from typer.testing import CliRunner

from softprompt.cli import app
from softprompt.cli.reference import COMMAND_ORDER, cli_reference, config_reference
from softprompt.train.config import PROMPT_SECTIONS, TASK_SECTIONS, RunConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
REGENERATE = "out of date: run python -m softprompt.cli.reference docs"


def _model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def config_keys() -> set[str]:
    """Every key a run config takes, as ``section.key`` (``preset`` at the top)."""
    keys = set()
    for name, field in RunConfig.model_fields.items():
        if name in ("prompt", "task"):
            sections = PROMPT_SECTIONS if name == "prompt" else TASK_SECTIONS
            keys |= {f"{name}.{key}" for section in sections.values() for key in section.model_fields}
        elif sections := [a for a in (field.annotation, *typing.get_args(field.annotation)) if _model(a)]:
            keys |= {f"{name}.{key}" for key in sections[0].model_fields}  # a section, or an optional one
        else:
            keys.add(name)
    return keys


def test_every_config_key_is_in_the_configuration_page():
    page = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", page, re.MULTILINE))
    assert config_keys() - documented == set(), REGENERATE
    assert config_keys() == set(re.findall(r"^\| `([\w.]+)` \|", config_reference(), re.MULTILINE))


@pytest.mark.parametrize("command", COMMAND_ORDER)
def test_every_option_of_each_command_is_in_the_cli_page(command):
    page = (DOCS / "cli.md").read_text()
    section = page.split(f"## `softprompt {command}`", 1)[1].split("\n## ", 1)[0]
    rows = "\n".join(line for line in section.splitlines() if line.startswith("| `"))
    in_table = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", rows))
    # what --help lists: each option's names (--x / --no-x, -s), as Typer declares them
    params = get_command(app).commands[command].params
    options = {name for param in params if param.param_type_name == "option"
               for name in (*param.opts, *param.secondary_opts)}  # fmt: skip
    assert options and options <= in_table, f"{sorted(options - in_table)} {REGENERATE}"
    shown = CliRunner().invoke(app, [command, "--help"])
    assert shown.exit_code == 0 and all(option[:12] in shown.output for option in options)


def test_every_command_has_a_section():
    assert set(get_command(app).commands) == set(COMMAND_ORDER)
    assert [f"## `softprompt {name}`" in cli_reference() for name in COMMAND_ORDER] == [True] * len(
        COMMAND_ORDER
    )
