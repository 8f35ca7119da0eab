"""``softprompt generate`` and ``softprompt predict``: text in, text or a class out, with an adapter."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    chat_template: Annotated[
        bool | None,
        typer.Option(
            "--chat-template/--no-chat-template",
            help="Give each text as a user's message in the tokenizer's chat template (and stop at the end "
            "of the reply); default: as the run's task does, else plain text.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Text in, text out: continue each input with the adapter's prompt, printing one line per input."""
    from softprompt.data import Encoded, TextFormat, format_template, template_fields
    from softprompt.train.evaluate import generate_texts

    quiet_libraries()
    model, tokenizer, run_config = load_adapter(adapter, base)
    text_format = TextFormat()
    if run_config is not None:
        task = run_config.task
        if template is None:
            template = task.template if task.kind == "classification" else task.source_template
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

    quiet_libraries()
    config = read_run_config(run, [])
    if config.task.kind != "classification":
        fail(f"{run} is a {config.task.kind} run: predict classifies; use softprompt generate")
    task = make_task(config.task)
    fields = template_fields(task.template)
    if len(fields) != 1:
        fail(f"the run's template has the fields {fields}; predict fills a template with one field")
    inputs = read_texts(texts)
    base, tokenizer = guard(lambda: load_base(config, task))
    model = guard(lambda: softprompt.load(base, adapter or run)).eval()
    objective = make_objective(model, task, tokenizer)
    any_label = task.classes[0][0]  # encode() reads a label; the prediction ignores it
    rows = [task.encode({fields[0]: text, task.label_column: any_label}, tokenizer) for text in inputs]
    batch = collate(rows, tokenizer.pad_token_id, objective.padding_side)
    with torch.no_grad():
        probabilities = objective.scores(batch["input_ids"], batch["attention_mask"]).float().softmax(-1)
    for text, row in zip(inputs, probabilities, strict=True):
        best = int(row.argmax())
        typer.echo(f"{task.classes[best][0]}\t{float(row[best]):.3f}\t{text}")
