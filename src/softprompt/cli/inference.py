"""``softprompt generate`` and ``softprompt predict``: text in, text or a prediction out, with an adapter.

Both take a run folder (its config and best adapter) or just an adapter file: a run stores its task
section in the file (``model.task``), so the template, label words, tags and chat-template choice
travel with it, and the base model is the one the file names (or ``--base``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from softprompt.cli.common import (
    BaseOption,
    app,
    fail,
    guard,
    load_adapter,
    quiet_libraries,
    read_run_config,
    read_texts,
)


def carried_task(path: Path):
    """The task section an adapter file carries (its record's ``task``), or None (a peft folder, or a
    file saved outside a run)."""
    from softprompt.files import peft as peft_files
    from softprompt.files.adapter import adapter_file, read_adapter
    from softprompt.train.config import parse_task

    if peft_files.is_peft_folder(path):
        return None
    record, _ = guard(lambda: read_adapter(adapter_file(path)))
    raw = record.get("task")
    return guard(lambda: parse_task(raw)) if raw is not None else None


def load_for_task(target: Path, base: str | None, adapter: Path | None = None):
    """(prompted model, tokenizer, task section, run config or None) for a run folder or an adapter file.

    A run folder gives its config and adapter (or ``adapter``); an adapter file gives the task it
    carries and the base model it names (or ``base``). The base loads with the head the task trains.
    """
    import softprompt
    from softprompt.files.adapter import adapter_file, read_adapter
    from softprompt.train.build import DTYPES, load_base_for, make_task

    config = None
    if target.is_dir() and (target / "config.yaml").is_file():
        config = read_run_config(target, [])
        task_section, name, dtype = config.task, base or config.model.name_or_path, config.model.dtype
    else:
        task_section = carried_task(target)
        if task_section is None:
            fail(
                f"{target} carries no task (saved outside a run, or by an older softprompt); give the run "
                "folder it came from"
            )
        record, _ = guard(lambda: read_adapter(adapter_file(target)))
        name, dtype = base or record.get("base_model", {}).get("name_or_path"), "float32"
        if not name:
            fail(f"{target} does not say which base model it was made for; pass --base")
    task = make_task(task_section)
    base_model, tokenizer = guard(lambda: load_base_for(name, task, dtype=DTYPES[dtype]))
    model = guard(lambda: softprompt.load(base_model, adapter or target)).eval()
    return model, tokenizer, task_section, config


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
            "task's template (of the run folder, or carried by the adapter file), else the text as is.",
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per text.", min=1)] = 32,
    num_beams: Annotated[int, typer.Option(help="Beam width; 1 is greedy decoding.", min=1)] = 1,
    chat_template: Annotated[
        bool | None,
        typer.Option(
            "--chat-template/--no-chat-template",
            help="Give each text as a user's message in the tokenizer's chat template (and stop at the end "
            "of the reply); default: as the task does, else plain text.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Text in, text out: continue each input with the adapter's prompt, printing one line per input."""
    from softprompt.data import Encoded, TextFormat, format_template, template_fields
    from softprompt.train.evaluate import generate_texts

    quiet_libraries()
    model, tokenizer, run_config = load_adapter(adapter, base)
    task = run_config.task if run_config is not None else carried_task(adapter)
    text_format = TextFormat()
    if task is not None:
        if template is None:
            template = getattr(task, "template", None) or getattr(task, "source_template", None)
        if hasattr(task, "text_format"):
            text_format = task.text_format()
    if chat_template is not None and chat_template != text_format.chat:
        text_format = TextFormat(chat=chat_template)
    inputs = read_texts(texts)
    if template is not None:
        fields = template_fields(template)
        if len(fields) != 1:
            fail(f"--template must have exactly one field for the text, got {fields}")
        inputs = [format_template(template, {fields[0]: text}) for text in inputs]
    # No length limit: the texts are the user's own, given as they are.
    prompts = [
        Encoded(guard(lambda t=text: text_format.prompt_ids(t, tokenizer, sys.maxsize))[0]) for text in inputs
    ]
    outputs = generate_texts(
        model,
        tokenizer,
        prompts,
        batch_size=16,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        eos_token_id=guard(lambda: text_format.end_id(tokenizer)) if text_format.chat else None,
    )
    for text in outputs:
        typer.echo(text.replace("\n", "\\n"))


@app.command()
def predict(
    run: Annotated[
        Path,
        typer.Argument(
            help="A run's folder (its config and adapter), or an adapter file that carries its task.",
            show_default=False,
        ),
    ],
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Input texts; none: read one text per line from stdin.", show_default=False),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="Adapter file to use instead of the run folder's.")
    ] = None,
    base: BaseOption = None,
) -> None:
    """Predict for each text with a run's prompt, one line per input: the class and its probability
    (classification), the labels past 1/2 with theirs (multi-label), the number (regression), or each
    word with its tag (token classification: the text's words split at spaces), then the text. Each text
    fills the task's template, which must have one field."""
    import torch

    from softprompt.data import collate
    from softprompt.train.build import make_objective, make_task

    quiet_libraries()
    model, tokenizer, task_section, _ = load_for_task(run, base, adapter)
    if task_section.kind in ("generation", "multiple_choice"):
        what = "generates: use softprompt generate" if task_section.kind == "generation" else (
            "needs each row's choices: score a data file with softprompt eval"
        )  # fmt: skip
        fail(f"{run} is a {task_section.kind} task; it {what}")
    task = make_task(task_section)
    inputs = read_texts(texts)
    rows = guard(lambda: [_row(task, text) for text in inputs])
    objective = make_objective(model, task, tokenizer)
    batch = collate(
        [task.encode(row, tokenizer) for row in rows], tokenizer.pad_token_id, objective.padding_side
    )
    with torch.no_grad():
        scores = objective.batch_scores(batch).float()
        predictions = objective.decode(scores, batch)
    for text, row_scores, prediction in zip(inputs, scores, predictions, strict=True):
        typer.echo(f"{_shown(task, row_scores, prediction, text)}\t{text}")


def _row(task: Any, text: str) -> dict[str, Any]:
    """A data row for ``text`` (with a stand-in target: predictions do not read it)."""
    from softprompt.data import template_fields

    if task.kind == "token_classification":
        words = text.split()
        return {task.tokens_column: words, task.tags_column: [task.tags[0]] * len(words)}
    fields = template_fields(task.template)
    if len(fields) != 1:
        raise ValueError(
            f"the task's template has the fields {fields}; predict fills a template with one field"
        )
    if task.kind == "classification":
        stand_in = task.classes[0][0]
    else:
        stand_in = [] if task.kind == "multi_label" else 0.0
    return {fields[0]: text, task.label_column: stand_in}


def _shown(task: Any, scores: Any, prediction: Any, text: str) -> str:
    """One prediction as ``predict`` prints it (before the text)."""
    if task.kind == "classification":
        probabilities = scores.softmax(-1)
        return f"{task.classes[prediction][0]}\t{float(probabilities[prediction]):.3f}"
    if task.kind == "multi_label":
        chosen = sorted(prediction)
        names = ",".join(str(task.labels[i]) for i in chosen) or "-"
        return f"{names}\t{','.join(f'{float(scores[i].sigmoid()):.3f}' for i in chosen) or '-'}"
    if task.kind == "regression":
        return f"{prediction:.4f}"
    return " ".join(f"{word}/{tag}" for word, tag in zip(text.split(), prediction, strict=False))
