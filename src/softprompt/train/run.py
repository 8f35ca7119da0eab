"""A whole training run, read top to bottom: setup -> zero-shot -> fit -> evaluate -> save.

The run folder (``output.dir``) ends up holding:

* ``softprompt.safetensors`` — the best prompt by the dev score (the last one without a dev set);
* ``config.yaml`` — the resolved config (preset and defaults filled in);
* ``metrics.jsonl`` / ``metrics.csv`` / ``tensorboard/`` — training loss and dev/test scores;
* ``curves.png`` — loss and dev-score curves;
* ``checkpoint.safetensors`` — the resumable state (``softprompt train ... --resume``);
* ``summary.json`` — the numbers :func:`format_summary` prints;
* ``README.md`` (the model card, with the run's scores) and, where peft can hold the prompt,
  ``adapter_config.json`` + ``adapter_model.safetensors``: the folder is what ``save_pretrained``
  writes, so ``PromptedModel.from_pretrained`` and peft load it, and ``push_to_hub=`` uploads it.

Examples:
    >>> from softprompt.train import load_config
    >>> task = {"kind": "classification", "template": "review {text} sentiment", "label_words": ["negative", "positive"]}
    >>> config = load_config(None, [f"output.dir={tmp_dir / 'run'}", "train.max_steps=4", "train.batch_size=4",
    ...                             "train.eval_every=4", "train.report_to=[]"],
    ...                      base={"prompt": {"method": "prompt_tuning", "num_virtual_tokens": 4}, "task": task})
    >>> rows = [{"text": "a gem", "label": 1}, {"text": "dull film", "label": 0}] * 4
    >>> summary = train(config, base=(base_model, tokenizer), data={"train": rows, "validation": rows})
    ... # doctest: +ELLIPSIS
    prompt_tuning: 128 trainable parameters, 8 training rows, 4 steps of 4
    scoring the frozen model without a prompt (zero-shot) on dev ...
    zero-shot dev accuracy: 50.00
    step 4: dev accuracy 50.00 (best 50.00 at step 4)
    >>> summary.finished, summary.best_step, sorted(path.name for path in Path(summary.run_dir).iterdir())
    (True, 4, ['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'checkpoint.safetensors', \
'config.yaml', 'curves.png', 'metrics.csv', 'metrics.jsonl', 'softprompt.safetensors', 'summary.json'])
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

import softprompt
from softprompt import sharding, sharing
from softprompt.data import StreamedExamples
from softprompt.files import ADAPTER_FILENAME, atomic_write
from softprompt.files import peft as peft_files
from softprompt.hub import HEADS_WITH_LABELS
from softprompt.kinds import KINDS
from softprompt.sharing import CARD_NAME, Scores
from softprompt.train.build import (
    DTYPES,
    InMemoryRows,
    bare_objective,
    dtype_choice,
    load_base,
    load_data,
    make_objective,
    make_task,
    model_options,
    prompt_config,
)
from softprompt.train.checkpoint import CHECKPOINT_NAME, Progress, load_checkpoint, save_checkpoint
from softprompt.train.config import RunConfig
from softprompt.train.evaluate import evaluate_generation, evaluate_predictions
from softprompt.train.logs import (
    JSONL_NAME,
    PLOT_NAME,
    TENSORBOARD_DIR,
    MetricsLog,
    check_trackers,
    plot_curves,
    start_trackers,
)
from softprompt.train.loop import Hooks, fit, total_steps
from softprompt.train.objectives import Objective
from softprompt.train.optim import make_optimizer, make_scheduler

logger = logging.getLogger(__name__)

ADAPTER_NAME = ADAPTER_FILENAME  # "softprompt.safetensors": softprompt.load(base, run_dir) finds it
CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
PEFT_NAMES = (peft_files.CONFIG_NAME, peft_files.WEIGHTS_NAME)


class RunError(RuntimeError):
    """A run that cannot start as asked (e.g. a folder with an earlier run and no --resume)."""


@dataclass
class RunSummary:
    """What a run did. Scores are percentages; ``zero_shot`` is the bare model's dev scores."""

    run_dir: str
    finished: bool
    method: str
    num_virtual_tokens: int
    trainable_parameters: int
    adapter: str | None
    adapter_bytes: int | None
    metric: str
    steps: int
    total_steps: int
    best_step: int | None
    stopped_early: bool
    zero_shot: dict[str, float] | None
    dev: dict[str, float] | None
    test: dict[str, float] | None
    zero_shot_test: dict[str, float] | None
    train_seconds: float
    total_seconds: float
    hub_commit: str | None = None  # the commit's URL, when the run was pushed to the Hub

    def scores(self) -> Scores:
        """The scores a model card shows: split -> metric -> value (percentages; loss and mse as they are)."""
        splits = {
            "dev": self.dev,
            "test": self.test,
            "dev, zero-shot": self.zero_shot,
            "test, zero-shot": self.zero_shot_test,
        }
        return {split: values for split, values in splits.items() if values}


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    base: tuple[Any, Any] | None = None,
    data: InMemoryRows | None = None,
    push_to_hub: str | None = None,
) -> RunSummary:
    """Train the prompt ``config`` describes and write the run folder; see the module docstring.

    Args:
        config: a validated run config (:func:`softprompt.train.load_config`).
        resume: continue from the run folder's checkpoint; the result equals an uninterrupted run.
        stop_after: stop (resumably, as Ctrl-C does) after this many steps in this session.
        base: an already loaded ``(model, tokenizer)`` to use instead of loading ``model.name_or_path``
            (it is frozen, not otherwise changed, so several runs can share it).
        data: rows to train and evaluate on instead of ``data.train/dev/test``: a ``datasets.Dataset``
            or ``IterableDataset`` (the training rows, streamed if iterable), or splits by name (a
            ``DatasetDict``, or a dict) picked with ``data.train_split``/``dev_split``/``test_split``.
        push_to_hub: a Hub repo id (``"user/name"``, created if needed) that a finished run uploads its
            best adapter to, with the model card and its scores (``huggingface_hub``'s login or
            ``HF_TOKEN``); the run folder is complete before the upload starts.

    Examples:
        >>> from softprompt.train import load_config
        >>> task = {"kind": "classification", "template": "review {text} sentiment", "label_words": ["no", "yes"]}
        >>> config = load_config(None, [f"output.dir={tmp_dir / 'run'}", "train.max_steps=4", "train.batch_size=4",
        ...                             "train.report_to=[]", "output.plot=false"],
        ...                      base={"prompt": {"method": "prompt_tuning", "num_virtual_tokens": 4}, "task": task})
        >>> rows = [{"text": "a gem", "label": 1}, {"text": "dull film", "label": 0}] * 4
        >>> train(config, base=(base_model, tokenizer), data={"train": rows}, stop_after=2).finished  # as Ctrl-C
        prompt_tuning: 128 trainable parameters, 8 training rows, 4 steps of 4
        False
        >>> train(config, base=(base_model, tokenizer), data={"train": rows}, resume=True).steps
        resuming at step 2 of 4
        prompt_tuning: 128 trainable parameters, 8 training rows, 4 steps of 4
        4
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration, set_seed

    if config.search is not None:  # a search trains many runs, each through here with search: null
        raise RunError(
            "the config has a search section: run softprompt.train.search.search(config) (as `softprompt "
            "train` does), or set search: null to train the config's own setting"
        )
    started = time.perf_counter()
    run_dir = Path(config.output.dir)
    push_to_hub = push_to_hub or config.output.push_to_hub
    try:
        check_trackers(config.train.report_to)
        if push_to_hub is not None:
            validate_repo_id(push_to_hub)
    except HFValidationError as err:
        raise RunError(f"push to hub: {err}") from None
    except ValueError as err:
        raise RunError(str(err)) from None
    _check_run_dir(run_dir, config, resume)
    # accelerate keeps its settings in a process-wide singleton; a second run in the same process
    # (a notebook, the tests) may ask for others. The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        cpu=config.train.cpu,
        mixed_precision=config.train.mixed_precision,
        log_with=config.train.report_to or None,
        project_config=ProjectConfiguration(
            project_dir=str(run_dir), logging_dir=str(run_dir / TENSORBOARD_DIR)
        ),
    )
    say = accelerator.print
    set_seed(config.train.seed)

    # ------------------------------------------------------------------------------------- setup
    task = make_task(config.task)
    if base is None:
        say(f"loading {config.model.name_or_path} ...")
        say(dtype_choice(config, task).message())
        base = load_base(config, task)
    base, tokenizer = base
    base.to(accelerator.device).eval()  # eval: the frozen model runs without dropout
    encoded = load_data(config.data, task, tokenizer, rows=data, seed=config.train.seed)
    if accelerator.num_processes > config.train.batch_size:
        raise RunError(
            f"train.batch_size {config.train.batch_size} is smaller than the {accelerator.num_processes} processes"
        )
    streamed = isinstance(encoded.train, StreamedExamples)
    if streamed and config.train.epochs is not None:
        raise RunError("streamed training rows have no length for train.epochs; set train.max_steps")
    if not streamed and not encoded.train:
        raise RunError("no training rows: set data.train (or give the rows: train(config, data=...))")
    batches_per_epoch = 0 if streamed else len(encoded.train) // config.train.batch_size
    if not streamed and batches_per_epoch == 0:
        raise RunError(
            f"{len(encoded.train)} training rows do not fill one batch of train.batch_size={config.train.batch_size}"
        )
    if streamed and next(encoded.train.examples(0), None) is None:  # its first row encodes (or says why not)
        raise RunError("the streamed training rows are empty")
    model = softprompt.wrap(
        base, prompt_config(config, task), tokenizer=tokenizer, **model_options(config, base)
    )
    # The adapter file carries the task (template, label words, chat template...), so predict, eval and
    # generate need only the file and the base model: see softprompt.train.config.parse_task.
    model.task = config.task.model_dump(mode="json")
    # An encoder's classifier head is new: the bare model has no zero-shot answer to score.
    zero_shot = (
        config.eval.zero_shot
        and KINDS[model.shape.kind].zero_shot
        and model.shape.head not in HEADS_WITH_LABELS
    )
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    objective = make_objective(model, task, tokenizer).to(accelerator.device)
    # The config, the data and the task's words are good: only now is an earlier run's output replaced.
    _start_run_dir(run_dir, config, resume, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    optimizer = make_optimizer(model.parameters(), config.train)
    steps = total_steps(config.train, batches_per_epoch)
    scheduler = make_scheduler(optimizer, config.train, steps)
    progress = Progress()
    if resume:
        progress = load_checkpoint(run_dir / CHECKPOINT_NAME, model, optimizer, scheduler)
        say(f"resuming at step {progress.step} of {steps}")
    # FSDP2 / ZeRO-3: the frozen base sharded, the prompt whole (plain accelerator.prepare otherwise).
    wrapped, optimizer = sharding.prepare(accelerator, objective, optimizer)
    resume_step = progress.step if resume else None
    start_trackers(accelerator, config, run_dir.name, resume_step=resume_step)
    log = (
        MetricsLog(run_dir, resume_step=resume_step, accelerator=accelerator)
        if accelerator.is_main_process
        else None
    )
    rows_told = "streamed training rows" if streamed else f"{len(encoded.train)} training rows"
    say(
        f"{model.prompt_config.method}: {model.num_trainable_parameters():,} trainable parameters, "
        f"{rows_told}, {steps} steps of {config.train.batch_size}"
    )

    def evaluate(split_examples, scoring: Objective) -> dict[str, float]:
        # Scoring runs outside the prepared forward: what it reads of a sharded base is gathered first.
        with sharding.unsharded(wrapped):
            return score_split(config, scoring, split_examples, tokenizer, accelerator)

    def write_log(split: str, step: int, values: dict[str, float]) -> None:
        if log is not None:
            log.write(split, step, values)

    # -------------------------------------------------------------------------------- zero-shot
    if zero_shot and encoded.dev is not None and progress.zero_shot is None:
        say("scoring the frozen model without a prompt (zero-shot) on dev ...")
        progress.zero_shot = evaluate(encoded.dev, bare_objective(objective))
        write_log("zero_shot", 0, progress.zero_shot)
        say(f"zero-shot dev {config.selection_metric}: {progress.zero_shot[config.selection_metric]:.2f}")

    # -------------------------------------------------------------------------------------- fit
    adapter_path = run_dir / ADAPTER_NAME
    save_dtype = DTYPES[config.output.save_dtype]
    best_dtype = save_dtype if save_dtype != torch.float32 else None

    def save_best() -> None:
        if accelerator.is_main_process:
            model.save(adapter_path, dtype=best_dtype)

    def checkpoint(state: Progress) -> None:
        if accelerator.is_main_process:
            save_checkpoint(run_dir / CHECKPOINT_NAME, model, optimizer, scheduler, state)
        accelerator.wait_for_everyone()

    hooks = Hooks(
        evaluate=(lambda: evaluate(encoded.dev, objective)) if encoded.dev is not None else None,
        save_best=save_best,
        checkpoint=checkpoint,
        log=write_log,
    )
    result = fit(
        wrapped,
        optimizer,
        scheduler,
        encoded.train,
        hooks,
        train=config.train,
        accelerator=accelerator,
        pad_token_id=tokenizer.pad_token_id,
        total_steps=steps,
        progress=progress,
        metric=config.selection_metric,
        stop_after=stop_after,
    )
    if result.finished and encoded.dev is None:
        save_best()  # no dev set: the adapter is the last prompt
    accelerator.wait_for_everyone()  # the adapter file is complete before any process reads it

    # --------------------------------------------------------------------------------- evaluate
    test_scores = zero_shot_test = None
    best = softprompt.load(base, adapter_path).to(accelerator.device) if result.finished else None
    if best is not None and encoded.test is not None:
        say("scoring the best adapter on test ...")
        test_scores = evaluate(encoded.test, make_objective(best, task, tokenizer).to(accelerator.device))
        write_log("test", progress.best_step or progress.step, test_scores)
        if zero_shot:
            zero_shot_test = evaluate(encoded.test, bare_objective(objective))

    # ------------------------------------------------------------------------------------- save
    summary = RunSummary(
        run_dir=str(run_dir),
        finished=result.finished,
        method=model.prompt_config.method,
        num_virtual_tokens=model.prompt_config.num_virtual_tokens,
        trainable_parameters=model.num_trainable_parameters(),
        adapter=str(adapter_path) if adapter_path.exists() else None,
        adapter_bytes=adapter_path.stat().st_size if adapter_path.exists() else None,
        metric=config.selection_metric,
        steps=progress.step,
        total_steps=steps,
        best_step=progress.best_step if encoded.dev is not None else progress.step,
        stopped_early=progress.stopped_early,
        zero_shot=progress.zero_shot,
        dev=progress.best_scores,
        test=test_scores,
        zero_shot_test=zero_shot_test,
        train_seconds=progress.train_seconds,
        total_seconds=time.perf_counter() - started,
    )
    if log is not None:
        log.close()
        if config.output.plot:
            plot_curves(
                run_dir / JSONL_NAME,
                run_dir / PLOT_NAME,
                metric=config.selection_metric,
                best_step=summary.best_step,
            )
        if best is not None:  # the folder becomes a save_pretrained folder: card with scores, peft layout
            best.save_pretrained(run_dir, dtype=best_dtype, scores=summary.scores())
            if push_to_hub is not None:
                summary.hub_commit = _push(best, push_to_hub, summary, best_dtype)
                say(f"pushed to {summary.hub_commit}")
        text = json.dumps(asdict(summary), indent=2) + "\n"
        atomic_write(run_dir / SUMMARY_NAME, lambda tmp: tmp.write_text(text))
    return summary


def _push(model, repo_id: str, summary: RunSummary, dtype: torch.dtype | None) -> str:
    """Upload the run's best adapter with its scores; a failed upload leaves the finished run as it is."""
    try:
        return sharing.push_to_hub(model, repo_id, scores=summary.scores(), dtype=dtype).commit_url
    except (HfHubHTTPError, OSError) as err:
        raise RunError(
            f"the run in {summary.run_dir} finished, but pushing it to {repo_id} failed: {err}\n"
            f"push it again: softprompt.PromptedModel.from_pretrained(base, {summary.run_dir!r})"
            f".push_to_hub({repo_id!r})"
        ) from None


def score_split(
    config: RunConfig, objective: Objective, examples, tokenizer: Any, accelerator
) -> dict[str, float]:
    """Scores of ``objective``'s model on ``examples`` as the task section asks: metrics of its
    predictions (classes, label sets, numbers, tags, choices), or of generated texts."""
    objective = accelerator.unwrap_model(objective)
    if config.task.kind != "generation":
        return evaluate_predictions(
            objective,
            examples,
            batch_size=config.eval.batch_size,
            pad_token_id=tokenizer.pad_token_id,
            metrics=config.task.metrics,
            accelerator=accelerator,
        )
    scores, _ = evaluate_generation(
        objective.model,
        tokenizer,
        examples,
        batch_size=config.eval.batch_size,
        metrics=config.task.metrics,
        max_new_tokens=config.task.max_new_tokens or config.task.max_target_length,
        num_beams=config.task.num_beams,
        eos_token_id=config.task.text_format().end_id(tokenizer),
        accelerator=accelerator,
    )
    return scores


def _check_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> None:
    """Refuse to clobber an earlier run, or to resume one that is not there (nothing is written)."""
    checkpoint = run_dir / CHECKPOINT_NAME
    if resume and not checkpoint.exists():
        raise RunError(f"nothing to resume: {checkpoint} does not exist (start without --resume)")
    if not resume and checkpoint.exists() and not config.output.overwrite:
        raise RunError(
            f"{run_dir} already holds a run; continue it with --resume, or start afresh with "
            "--set output.overwrite=true, or choose another output.dir"
        )


def _start_run_dir(run_dir: Path, config: RunConfig, resume: bool, is_main: bool) -> None:
    """Clear an earlier run's output (a fresh start) and write the resolved config.

    Called once the run's config, data and task have loaded, so a run that fails before has left an
    earlier run as it was. A fresh start removes the earlier checkpoint too (a later --resume must
    not continue another run) and its TensorBoard events (one TensorBoard run per run)."""
    if not is_main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = config.to_yaml()
    config_path = run_dir / CONFIG_NAME
    if resume and config_path.exists() and config_path.read_text() != resolved:
        logger.warning("the config differs from the one the run started with; the result may differ")
    if not resume:
        earlier = (ADAPTER_NAME, SUMMARY_NAME, PLOT_NAME, CHECKPOINT_NAME, CARD_NAME, *PEFT_NAMES)
        for name in earlier:
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    atomic_write(config_path, lambda tmp: tmp.write_text(resolved))  # --resume and eval read it


def format_summary(summary: RunSummary) -> str:
    """The end-of-run report: files, size, steps, time, and zero-shot vs trained scores side by side."""
    lines = [f"run folder   {summary.run_dir}"]
    if not summary.finished:
        lines.append(f"interrupted  at step {summary.steps} of {summary.total_steps}; continue with --resume")
    if summary.adapter:
        lines.append(f"adapter      {summary.adapter} ({_size(summary.adapter_bytes)})")
    lines.append(
        f"prompt       {summary.method}, {summary.num_virtual_tokens} virtual tokens, "
        f"{summary.trainable_parameters:,} trainable parameters"
    )
    best = f", best at step {summary.best_step}" if summary.best_step is not None else ""
    early = ", stopped early" if summary.stopped_early else ""
    lines.append(f"steps        {summary.steps} of {summary.total_steps}{best}{early}")
    lines.append(
        f"time         {_duration(summary.train_seconds)} training loop (dev evaluations included), "
        f"{_duration(summary.total_seconds)} total"
    )
    if summary.hub_commit:
        lines.append(f"pushed       {summary.hub_commit}")
    table = _score_table(summary)
    if table:
        lines += ["", *table]
    return "\n".join(lines)


def _score_table(summary: RunSummary) -> list[str]:
    rows = []
    for split, before, after in (
        ("dev", summary.zero_shot, summary.dev),
        ("test", summary.zero_shot_test, summary.test),
    ):
        for name in after or before or {}:
            if name == "loss":
                continue
            zero = f"{before[name]:9.2f}" if before and name in before else f"{'-':>9}"
            trained = f"{after[name]:9.2f}" if after and name in after else f"{'-':>9}"
            rows.append(f"{split + ' ' + name:<18}{zero}  {trained}")
    if not rows:
        return []
    return [f"{'':<18}{'zero-shot':>9}  {'trained':>9}", *rows]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
