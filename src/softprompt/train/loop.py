"""The training loop, built on ``accelerate``: the same code on a CPU, a GPU, in mixed precision or DDP.

Every process builds the same global batch (the batch order is a pure function of seed and epoch)
and hands it to the training core (:func:`softprompt.train.core.step`), which takes this process's
share of the rows and accumulates gradients over micro-batches, so one process and N processes
compute the gradient of the same batch — the same prompt up to float rounding. This layer adds what
a long run needs around the step: evaluation, the best adapter, checkpoints, Ctrl-C, progress.

Evaluation runs every ``eval_every`` steps; a better dev score saves the adapter (the best one is
kept) and ``early_stopping_patience`` evaluations without one stop the run. Checkpoints are written
at every evaluation (or every ``save_every`` steps), at the end, and when Ctrl-C interrupts: the
loop then finishes the current step first, so the checkpoint is exact.

Examples:
    >>> from softprompt.train.config import TrainSection
    >>> total_steps(TrainSection(max_steps=300), batches_per_epoch=100)
    300
    >>> total_steps(TrainSection(epochs=2.5, batch_size=8), batches_per_epoch=100)  # epochs win over max_steps
    250

    :func:`softprompt.train.run.train` calls :func:`fit` with hooks that evaluate on dev, save the best
    adapter, write checkpoints and log (``tests/train`` runs it on tiny models).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from softprompt.data import Encoded, ExampleBatches, StreamBatches, StreamedExamples
from softprompt.metrics import is_better
from softprompt.train.checkpoint import Progress
from softprompt.train.config import TrainSection
from softprompt.train.core import step
from softprompt.train.objectives import Objective


@dataclass
class Hooks:
    """What the loop calls out to; every hook runs on every process (they decide who writes).

    Attributes:
        evaluate: dev scores of the current prompt, or None when there is no dev set.
        save_best: save the current prompt as the best adapter.
        checkpoint: write a resumable checkpoint of the current state.
        log: record ``(split, step, values)``.
    """

    evaluate: Callable[[], dict[str, float]] | None
    save_best: Callable[[], None]
    checkpoint: Callable[[Progress], None]
    log: Callable[[str, int, dict[str, float]], None]


@dataclass
class FitResult:
    """How the loop ended: ``finished`` (all steps or early stopping) or interrupted (Ctrl-C, ``stop_after``)."""

    progress: Progress
    finished: bool


def total_steps(train: TrainSection, batches_per_epoch: int) -> int:
    """``max_steps``, or ``epochs`` worth of batches when ``epochs`` is set."""
    if train.epochs is not None:
        return max(1, math.ceil(train.epochs * batches_per_epoch))
    return train.max_steps


def training_batches(
    examples: Sequence[Encoded] | StreamedExamples, train: TrainSection, pad_token_id: int, padding_side: str
) -> ExampleBatches | StreamBatches:
    """The loop's global batches: a list's seeded (length-grouped) order, or a stream's."""
    if isinstance(examples, StreamedExamples):
        return StreamBatches(examples, train.batch_size, pad_token_id, padding_side)
    return ExampleBatches(
        examples,
        train.batch_size,
        pad_token_id,
        padding_side,
        seed=train.seed,
        group_by_length=train.group_by_length,
    )


def fit(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler,
    examples: Sequence[Encoded] | StreamedExamples,
    hooks: Hooks,
    *,
    train: TrainSection,
    accelerator,
    pad_token_id: int,
    total_steps: int,
    progress: Progress,
    metric: str,
    stop_after: int | None = None,
) -> FitResult:
    """Train until ``total_steps``, early stopping, or an interruption; ``progress`` is updated in place.

    ``objective`` and ``optimizer`` must already be ``accelerator.prepare``-d; ``progress`` is a
    fresh :class:`Progress` or one restored from a checkpoint.
    """
    batches = training_batches(
        examples, train, pad_token_id, type(accelerator.unwrap_model(objective)).padding_side
    )
    save_every = train.save_every or train.eval_every
    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        # Only the main process draws; elsewhere tqdm's own default stands (TQDM_DISABLE=1 works).
        **({} if accelerator.is_local_main_process else {"disable": True}),
    )
    session_steps, window = 0, []
    started = time.perf_counter()

    def save(state: Progress) -> None:
        nonlocal started
        state.train_seconds += time.perf_counter() - started
        started = time.perf_counter()
        hooks.checkpoint(state)

    interrupt = _Interrupt()
    try:
        with interrupt:
            while progress.step < total_steps:
                started_at = progress.batches_done
                for batch in batches.epoch(progress.epoch, progress.batches_done):
                    loss = step(
                        objective,
                        optimizer,
                        batch,
                        scheduler=scheduler,
                        micro_batch_size=train.micro_batch_size,
                        max_grad_norm=train.max_grad_norm,
                        accelerator=accelerator,
                    )
                    progress.step += 1
                    progress.batches_done += 1
                    if progress.batches_done == batches.num_batches:
                        progress.epoch, progress.batches_done = progress.epoch + 1, 0
                    session_steps += 1
                    window.append(loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

                    last = progress.step >= total_steps
                    if progress.step % train.log_every == 0 or last:
                        lr = scheduler.get_last_lr()[0]
                        hooks.log("train", progress.step, {"loss": sum(window) / len(window), "lr": lr})
                        window = []
                    stop = False
                    if hooks.evaluate is not None and (
                        last or (train.eval_every and progress.step % train.eval_every == 0)
                    ):
                        stop = progress.stopped_early = _evaluate(
                            hooks, progress, train, metric, report=accelerator.is_local_main_process
                        )
                    interrupted = interrupt.requested(accelerator) or (
                        stop_after is not None and session_steps >= stop_after
                    )
                    if last or stop or interrupted or (save_every and progress.step % save_every == 0):
                        save(progress)
                    if last or stop:
                        return FitResult(progress, finished=True)
                    if interrupted:
                        return FitResult(progress, finished=False)
                    if progress.batches_done == 0:
                        break  # an epoch ended: restart the loader on the next epoch's order
                else:  # a stream ran out: its next pass is the next epoch
                    if progress.batches_done == started_at == 0:
                        raise ValueError(
                            f"the training rows do not fill one batch of train.batch_size={train.batch_size}"
                        )
                    progress.epoch, progress.batches_done = progress.epoch + 1, 0
        return FitResult(progress, finished=True)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; the last checkpoint stands
        return FitResult(progress, finished=False)
    finally:
        bar.close()


class _Interrupt:
    """Ctrl-C (SIGINT) asks the loop to stop after the current step, so the checkpoint it writes is
    exact; a second Ctrl-C raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.flag = False
        self.previous = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        print(
            "\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to abort)", flush=True
        )

    def requested(self, accelerator) -> bool:
        """Whether any process was interrupted (all processes must stop at the same step)."""
        if accelerator.num_processes == 1:
            return self.flag
        flag = torch.tensor(float(self.flag), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum") > 0)


def _evaluate(hooks: Hooks, progress: Progress, train: TrainSection, metric: str, *, report: bool) -> bool:
    """Score dev, keep the best adapter; True when early stopping says stop."""
    scores = hooks.evaluate()
    hooks.log("dev", progress.step, scores)
    score = scores[metric]
    if is_better(metric, score, progress.best_score):
        progress.best_score, progress.best_step, progress.evals_since_best = score, progress.step, 0
        progress.best_scores = scores
        hooks.save_best()
    else:
        progress.evals_since_best += 1
    if report:  # the main process reports, above the progress bar (if one is drawn)
        tqdm.write(
            f"step {progress.step}: dev {metric} {score:.2f} (best {progress.best_score:.2f} at step {progress.best_step})"
        )
    patience = train.early_stopping_patience
    return patience is not None and progress.evals_since_best >= patience
