"""``softprompt inspect`` and ``softprompt convert``: what an adapter holds, and moving it to and from peft."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from softprompt.cli.common import BaseOption, app, guard, load_adapter, quiet_libraries


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

    quiet_libraries()
    path = guard(lambda: adapter_file(adapter))
    record, tensors = guard(lambda: read_adapter(path))
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
    from softprompt.files import ADAPTER_FILENAME
    from softprompt.files import peft as peft_files

    quiet_libraries()
    model, _, _ = load_adapter(source, base)
    # A run folder holds both layouts (softprompt's file and peft's): it converts to peft, as a file does.
    if peft_files.is_peft_folder(source) and not (source / ADAPTER_FILENAME).is_file():
        written = guard(lambda: model.save(destination))
        typer.echo(f"wrote softprompt adapter {written}")
    else:
        written = guard(lambda: model.export_peft(destination))
        typer.echo(f"wrote peft adapter folder {written}")
