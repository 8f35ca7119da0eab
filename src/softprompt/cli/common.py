"""What every ``softprompt`` command shares: the Typer app, common options, loading adapters and runs,
and how user errors are reported (one message, exit code 2, no traceback)."""

from __future__ import annotations

import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="softprompt",
    help="Soft-prompt tuning (prompt tuning, prefix tuning, P-tuning) of frozen Hugging Face models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal's width
)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config key, e.g. --set train.lr=0.1 --set data.dev_limit=200 (values are YAML).",
    ),
]
BaseOption = Annotated[
    str | None,
    typer.Option(
        "--base",
        help="Base model (built-in alias, folder or hub name); default: the one the adapter was trained on.",
    ),
]


def example_config_path() -> Path:
    """The built-in example's config, shipped in the package (``softprompt/recipes/example.yaml``)."""
    return Path(str(resources.files("softprompt") / "recipes" / "example.yaml"))


def load_adapter(path: Path, base: str | None):
    """(prompted model, tokenizer, run config or None) for an adapter file, run folder or peft folder."""
    import softprompt
    from softprompt.files import ADAPTER_FILENAME
    from softprompt.files import peft as peft_files
    from softprompt.files.adapter import adapter_file, read_adapter
    from softprompt.hub import family_kind, load_base_model
    from softprompt.kinds import KINDS
    from softprompt.train.build import load_base, make_task

    run_config = None
    if path.is_dir() and (path / "config.yaml").is_file():
        run_config = read_run_config(path, [])
    if base is None:
        if run_config is not None:
            base = run_config.model.name_or_path
        elif peft_files.is_peft_folder(path) and not (path / ADAPTER_FILENAME).is_file():
            base = guard(lambda: peft_files.read_peft_config(path)).get("base_model_name_or_path")
        else:
            record, _ = guard(lambda: read_adapter(adapter_file(path)))
            base = record["base_model"].get("name_or_path")
    if not base:
        fail(f"{path} does not say which base model it was made for; pass --base")
    if run_config is not None:  # the run's own model class, head size and dtype
        run_config = run_config.model_copy(
            update={"model": run_config.model.model_copy(update={"name_or_path": base})}
        )
        base_model, tokenizer = guard(lambda: load_base(run_config, make_task(run_config.task)))
    else:
        kind = KINDS[guard(lambda: family_kind(base))]
        if kind.run_head == "sequence-classification":
            fail(
                f"{base} is one of the {kind.label}: give the run folder, whose classes size the classifier head"
            )
        base_model, tokenizer = guard(lambda: load_base_model(base, head=kind.run_head))
    model = guard(lambda: softprompt.load(base_model, path))
    return model, tokenizer, run_config


def read_texts(texts: list[str] | None) -> list[str]:
    """The command's input texts: its arguments, or one per line of stdin."""
    inputs = list(texts) if texts else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not inputs:
        fail("no input texts (give them as arguments or on stdin)")
    return inputs


def read_run_config(target: Path, overrides: list[str]):
    """The config of a run folder (its resolved config.yaml) or of a YAML file."""
    from softprompt.train import load_config

    path = target / "config.yaml" if target.is_dir() else target
    config = guard(lambda: load_config(path, overrides))
    if target.is_dir():  # the folder was moved or copied: it is the run folder wherever it is
        config = config.model_copy(
            update={"output": config.output.model_copy(update={"dir": str(target.resolve())})}
        )
    return config


def guard(action):
    """Run ``action``; report the errors a user can fix as one message and exit 2, not a traceback.

    A refused file (:class:`~softprompt.files.errors.AdapterFileError`) prints its message as it
    is: the file, the field, the value found, what was expected and what to do. Anything else that
    escapes is a bug in softprompt, reported in one line (exit 1) unless SOFTPROMPT_DEBUG is set.
    """
    from softprompt.files.errors import AdapterFileError
    from softprompt.train import ConfigError, RunError

    try:
        return action()
    except (ConfigError, RunError, AdapterFileError, FileNotFoundError, ImportError) as err:
        fail(str(err))
    except Exception as err:
        if os.environ.get("SOFTPROMPT_DEBUG"):
            raise
        if isinstance(err, ValueError):  # bad data or settings found while running (e.g. an unknown label)
            fail(f"error: {err}\n(set SOFTPROMPT_DEBUG=1 to see where)")
        fail(
            f"internal error: {type(err).__name__}: {err}\nThis is a bug in softprompt; please report it "
            "(SOFTPROMPT_DEBUG=1 shows the traceback)",
            code=1,
        )


def fail(message: str, code: int = 2) -> Any:
    """Print ``message`` on stderr and exit with ``code`` (2: the input or the settings need fixing)."""
    typer.echo(message, err=True)
    raise typer.Exit(code)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record: a test runner or a notebook may swap it, and a
    handler holding the first one would write to a closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def quiet_libraries() -> None:
    """softprompt's warnings (e.g. truncation counts) on stderr; no library progress bars or info."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("softprompt")
    if not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass
