"""The reference pages ``docs/configuration.md`` and ``docs/cli.md``, written from the code itself — the
run config's pydantic models (their field docstrings) and the Typer commands (their help texts) — so
the pages cannot drift from what ``softprompt`` accepts (a test compares them).

Run from the project root after changing a config field or a command:
    python -m softprompt.cli.reference docs

Examples:
    >>> page = config_reference()
    >>> "| `train.lr` | number | `0.01` | Peak learning rate. |" in page
    True
    >>> "| `--push-to-hub REPO_ID` |" in cli_reference()
    True
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import click
import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from softprompt.cli.common import app

# Commands in the order a user meets them.
COMMAND_ORDER = ("train", "eval", "predict", "generate", "inspect", "convert", "serve")

CONFIG_INTRO = """\
# Configuration reference

`softprompt train CONFIG` reads a YAML file of sections: `model`, `prompt`, `task`, `data`,
`train`, `eval` and `output`, plus a top-level `preset`. Every key below is checked: an unknown key
or a wrong type is an error naming the key (`train.lr: Input should be a valid number`). Relative
paths in the file are relative to the file; `--set key=value` overrides any key (values are YAML).
A run writes the resolved config (preset and defaults filled in) to `<output.dir>/config.yaml`.
See [Training](training.md) for a run end to end.

This page is generated from the config's models (`python -m softprompt.cli.reference docs`).
"""

CLI_INTRO = """\
# Command line

`softprompt` is one command with a subcommand per job; `softprompt <command> --help` prints the
same text as this page. Errors a user can fix (a bad config key, a missing file, a refused adapter)
print one message and exit with status 2, never a traceback; an interrupted `train` exits with 130
after saving a checkpoint. `python -m softprompt.cli` runs the same program.

This page is generated from the commands (`python -m softprompt.cli.reference docs`).
"""


# ------------------------------------------------------------------------------ configuration
def config_reference() -> str:
    """``docs/configuration.md``: one table per config section (per method and task kind for
    ``prompt`` and ``task``), each key with its type, default and description."""
    from softprompt.train.config import PROMPT_SECTIONS, TASK_SECTIONS, RunConfig

    parts = [CONFIG_INTRO]
    sections = {name for name, field in RunConfig.model_fields.items() if _is_section(field.annotation)}
    sections |= {"prompt", "task"}  # one section class per method / task kind
    top = {name: field for name, field in RunConfig.model_fields.items() if name not in sections}
    parts += ["## Top level", "", *_table(top, prefix="")]
    for name, field in RunConfig.model_fields.items():
        if name in top:
            continue
        parts += [f"## `{name}`", "", _cell(field.description), ""]
        if name == "prompt":
            for method, section in PROMPT_SECTIONS.items():
                parts += [f"### `prompt.method: {method}`", "", *_table(section.model_fields, "prompt.")]
        elif name == "task":
            for kind, section in TASK_SECTIONS.items():
                parts += [f"### `task.kind: {kind}`", "", *_table(section.model_fields, "task.")]
        else:
            parts += _table(_section(field.annotation).model_fields, f"{name}.")
    return "\n".join(parts).rstrip() + "\n"


def _section(annotation: Any) -> Any:
    """The section class of ``X`` or of an optional ``X | None`` (a section a config may leave out)."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return args[0] if len(args) == 1 else annotation


def _is_section(annotation: Any) -> bool:
    section = _section(annotation)
    return isinstance(section, type) and issubclass(section, BaseModel)


def _table(fields: dict[str, Any], prefix: str) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in fields.items():
        rows.append(
            f"| `{prefix}{name}` | {_type(field.annotation)} | {_default(field)} | {_cell(field.description)} |"
        )
    return [*rows, ""]


def _type(annotation: Any) -> str:
    """A type as a config author reads it: ``number``, ``one of `a`, `b```, ``list of text``..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return (
            "one of " + ", ".join(f"`{json.dumps(arg)}`" for arg in args) if len(args) > 1 else f"`{args[0]}`"
        )
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(arg) for arg in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    names = {str: "text", int: "integer", float: "number", bool: "true/false", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required"
    return f"`{json.dumps(field.default)}`"


def _cell(text: str | None) -> str:
    """Text for one table cell: one line, pipes escaped."""
    return " ".join((text or "").split()).replace("|", "\\|")


# ------------------------------------------------------------------------------------ the CLI
def cli_reference() -> str:
    """``docs/cli.md``: each command's help, usage, and a table of its arguments and options."""
    group = typer.main.get_command(app)
    root = click.Context(group, info_name="softprompt")
    names = [*COMMAND_ORDER, *sorted(set(group.commands) - set(COMMAND_ORDER))]
    parts = [CLI_INTRO]
    for name in names:
        command = group.commands[name]
        context = click.Context(command, info_name=name, parent=root)
        usage = command.get_usage(context).removeprefix("Usage: ")
        parts += [
            f"## `softprompt {name}`",
            "",
            (command.help or "").strip(),
            "",
            "```text",
            usage,
            "```",
            "",
        ]
        parts += ["| argument or option | description |", "|---|---|"]
        for param in command.params:
            record = param.get_help_record(context)
            if record is not None:
                parts.append(f"| `{record[0]}` | {_cell(record[1])} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


PAGES = {"configuration.md": config_reference, "cli.md": cli_reference}


def main(argv: list[str] | None = None) -> None:
    folder = Path((argv or sys.argv[1:] or ["docs"])[0])
    for name, page in PAGES.items():
        (folder / name).write_text(page())
        print(f"wrote {folder / name}")


if __name__ == "__main__":
    main()
