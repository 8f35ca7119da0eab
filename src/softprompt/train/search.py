"""A budgeted search: learning rate x init (x prompt length) by successive halving on dev.

Soft prompts are sensitive to their learning rate and their init. A ``search:`` section in the run
config (or ``softprompt train CONFIG --search``) tries each setting of the grid
(:meth:`~softprompt.train.config.RunConfig.search_settings`) as a *trial*, in rungs (successive
halving, Jamieson & Talwalkar 2016; one bracket of Hyperband, Li et al. 2018): every trial trains the
first rung, the best 1/eta by their dev score train on through the next rung, ... until one is left.

How the budget is split (:func:`plan_rungs`; a search prints it before it starts): the search trains
``search.budget x train.max_steps`` steps in all, an equal share per rung, a rung's share split evenly
over its trials. The steps are whole multiples of the trials' evaluation interval — ``train.eval_every``,
or the first rung's steps per trial when that is smaller — so that every rung ends on a dev evaluation.
A trial that goes on continues from its checkpoint (exact, as ``--resume``), so the last trial has
trained the sum of its rungs' steps.

Each trial is an ordinary run in ``<run>/trials/<name>/`` whose ``train.max_steps`` is the last rung's
end: its learning-rate schedule spans that, whether or not the trial gets there, and the trial left at
the end is exactly the run of its config. A trial's score at a rung is its best dev score so far (the
prompt a run keeps). The run folder then holds the winner as a finished run (adapter, model card, peft
copy, curves, checkpoint, summary), ``config.yaml`` = the winner's config (``search: null``: training
it again trains the winner, without a search), ``metrics.jsonl`` / ``metrics.csv`` with every trial's
records (a ``trial`` field / column), and ``search.json`` (plan, trials, scores per rung, winner).
Trials are deterministic given ``train.seed`` (every trial starts from it); a killed search continues
with ``--resume``: finished rungs are read back from the trials' checkpoints and metrics.

Examples:
    >>> plan = plan_rungs(num_trials=12, run_steps=300, budget=4, eta=3, eval_every=50)
    >>> [(rung.trials, rung.steps) for rung in plan.rungs], plan.eval_every, plan.spent
    ([(12, 33), (4, 132), (1, 528)], 33, 1188)
    >>> print("\\n".join(plan.describe()))
    budget 4 x 300 = 1200 steps, 400 per rung; trials evaluate dev every 33 steps
      rung 1: 12 trials x  33 steps (to step  33)   396 steps
      rung 2:  4 trials x  99 steps (to step 132)   396 steps
      rung 3:  1 trial  x 396 steps (to step 528)   396 steps
      1188 of 1200 steps; the last trial trains 528
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from softprompt.files import atomic_write
from softprompt.metrics import LOWER_IS_BETTER
from softprompt.sharing import CARD_NAME
from softprompt.train.build import InMemoryRows, load_base, load_data, make_task
from softprompt.train.checkpoint import CHECKPOINT_NAME, Progress, read_checkpoint
from softprompt.train.config import PROMPT_SEARCH_KEYS, RunConfig
from softprompt.train.logs import CSV_NAME, JSONL_NAME, PLOT_NAME, read_records
from softprompt.train.run import (
    ADAPTER_NAME,
    CONFIG_NAME,
    PEFT_NAMES,
    SUMMARY_NAME,
    RunError,
    RunSummary,
    format_summary,
    train,
)

SEARCH_NAME = "search.json"
TRIALS_DIR = "trials"
# What the winner's run folder holds that becomes the search's run folder (config.yaml is rewritten).
WINNER_FILES = (ADAPTER_NAME, *PEFT_NAMES, CARD_NAME, PLOT_NAME, CHECKPOINT_NAME)


# ------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Rung:
    """One rung: ``trials`` trials each train ``added`` steps, to ``steps`` steps from their start."""

    trials: int
    steps: int
    added: int

    @property
    def cost(self) -> int:
        """The steps the rung trains, over its trials."""
        return self.trials * self.added


@dataclass(frozen=True)
class RungPlan:
    """How a search spends its budget: the rungs, and the trials' evaluation interval."""

    rungs: tuple[Rung, ...]
    eval_every: int
    budget_steps: int
    budget: float
    run_steps: int

    @property
    def spent(self) -> int:
        """Steps the whole search trains (at most ``budget_steps``; less by the rounding to ``eval_every``)."""
        return sum(rung.cost for rung in self.rungs)

    def describe(self) -> list[str]:
        """The split, a line per rung, as a search prints it before it starts."""
        share = self.budget_steps // len(self.rungs)
        lines = [
            f"budget {self.budget:g} x {self.run_steps} = {self.budget_steps} steps, {share} per rung; "
            f"trials evaluate dev every {self.eval_every} steps"
        ]
        wide, trials = len(str(self.rungs[-1].steps)), len(str(self.rungs[0].trials))
        for number, rung in enumerate(self.rungs, 1):
            noun = "trial " if rung.trials == 1 else "trials"
            lines.append(
                f"  rung {number}: {rung.trials:>{trials}} {noun} x {rung.added:>{wide}} steps "
                f"(to step {rung.steps:>{wide}}) {rung.cost:>{wide + 2}} steps"
            )
        lines.append(
            f"  {self.spent} of {self.budget_steps} steps; the last trial trains {self.rungs[-1].steps}"
        )
        return lines


def plan_rungs(
    num_trials: int, run_steps: int, budget: float, eta: int, eval_every: int | None = None
) -> RungPlan:
    """Split ``budget x run_steps`` training steps over successive-halving rungs of ``num_trials`` trials.

    Rung k trains ``max(1, n_{k-1} // eta)`` trials (the first all of them; the last one), each for
    ``(budget_steps // rungs) // n_k`` steps rounded down to a multiple of the evaluation interval: the
    smaller of ``eval_every`` and the first rung's steps per trial.

    Raises:
        ValueError: the budget gives some trial no step in some rung (the message says the least budget).

    Examples:
        >>> [(rung.trials, rung.steps) for rung in plan_rungs(12, 300, budget=2, eta=3, eval_every=50).rungs]
        [(12, 16), (4, 64), (1, 256)]
        >>> plan_rungs(12, 300, budget=0.1, eta=3)
        Traceback (most recent call last):
        ...
        ValueError: 0.1 x 300 = 30 steps leave some of the 12 trials no step in one of the 3 rungs (36 steps at least); raise it to 0.12 or more
    """
    counts = [num_trials]
    while counts[-1] > 1:
        counts.append(max(1, counts[-1] // eta))
    budget_steps = int(budget * run_steps)
    share = budget_steps // len(counts)
    first = share // num_trials
    if first < 1:
        least = len(counts) * num_trials
        raise ValueError(
            f"{budget:g} x {run_steps} = {budget_steps} steps leave some of the {num_trials} trials no step in one "
            f"of the {len(counts)} rungs ({least} steps at least); raise it to {-(-least * 100 // run_steps) / 100:g} or more"
        )
    every = min(eval_every or first, first)
    rungs, steps = [], 0
    for count in counts:
        added = share // count // every * every  # >= every: share // count >= first >= every
        steps += added
        rungs.append(Rung(count, steps, added))
    return RungPlan(tuple(rungs), every, budget_steps, budget, run_steps)


# ---------------------------------------------------------------------------------------- trials
@dataclass
class Trial:
    """One setting of the grid and how it fared: its dev score at the end of each rung it trained."""

    name: str
    setting: dict[str, Any]
    scores: list[float | None] = field(default_factory=list)
    steps: int = 0

    @staticmethod
    def named(number: int, setting: dict[str, Any]) -> Trial:
        """``03-lr0.03-text-p20``: the folder name says the setting."""
        return Trial(
            f"{number:02d}-lr{setting['lr']:g}-{setting['init']}-p{setting['num_virtual_tokens']}", setting
        )


@dataclass
class SearchSummary:
    """What a search did: the plan, every trial's scores per rung, the winner and its run."""

    run_dir: str
    finished: bool
    metric: str
    eta: int
    plan: RungPlan
    trials: list[Trial]
    winner: str | None = None
    run: RunSummary | None = None  # the winner's run, as the run folder now holds it

    def to_json(self) -> dict[str, Any]:
        """``search.json``'s content."""
        plan = self.plan
        return {
            "finished": self.finished,
            "metric": self.metric,
            "eta": self.eta,
            "budget": {"multiple": plan.budget, "one_run_steps": plan.run_steps, "steps": plan.budget_steps,
                       "spent": plan.spent},  # fmt: skip
            "eval_every": plan.eval_every,
            "rungs": [asdict(rung) for rung in plan.rungs],
            "trials": [asdict(trial) for trial in self.trials],
            "winner": None if self.winner is None else {
                "name": self.winner,
                "setting": next(t.setting for t in self.trials if t.name == self.winner),
                "dev": self.run.dev if self.run else None,
                "test": self.run.test if self.run else None,
            },
        }  # fmt: skip


def setting_config(config: RunConfig, setting: dict[str, Any], plan: RungPlan, run_dir: Path) -> RunConfig:
    """The run config of one trial (``search: null``), training in ``run_dir`` to the last rung's end."""
    raw = config.model_dump(mode="json")
    raw["search"] = None
    raw["prompt"].update({key: setting[key] for key in PROMPT_SEARCH_KEYS})
    raw["train"].update(
        lr=setting["lr"], max_steps=plan.rungs[-1].steps, epochs=None, eval_every=plan.eval_every
    )
    raw["output"]["dir"] = str(run_dir)
    return RunConfig.model_validate(raw)


def rung_score(records: list[dict[str, Any]], metric: str, step: int) -> float | None:
    """A trial's score at a rung ending at ``step``: its best dev ``metric`` so far (None before any).

    Examples:
        >>> records = [{"step": 10, "split": "dev", "accuracy": 70.0}, {"step": 20, "split": "dev", "accuracy": 65.0},
        ...            {"step": 30, "split": "dev", "accuracy": 90.0}]
        >>> rung_score(records, "accuracy", 20), rung_score(records, "accuracy", 30), rung_score(records, "loss", 30)
        (70.0, 90.0, None)
    """
    scores = [r[metric] for r in records if r["split"] == "dev" and r["step"] <= step and metric in r]
    if not scores:
        return None
    return min(scores) if metric in LOWER_IS_BETTER else max(scores)


def best_trials(trials: list[Trial], metric: str, keep: int) -> list[Trial]:
    """The ``keep`` trials with the best last score (ties: the earlier trial; no score: last).

    Examples:
        >>> trials = [Trial("a", {}, [70.0]), Trial("b", {}, [None]), Trial("c", {}, [80.0]), Trial("d", {}, [70.0])]
        >>> [trial.name for trial in best_trials(trials, "accuracy", 3)]
        ['c', 'a', 'd']
    """
    sign = 1 if metric in LOWER_IS_BETTER else -1

    def key(numbered: tuple[int, Trial]) -> tuple[bool, float, int]:
        number, trial = numbered
        score = trial.scores[-1]
        return (score is None, 0.0 if score is None else sign * score, number)

    return [trial for _, trial in sorted(enumerate(trials), key=key)[:keep]]


# ---------------------------------------------------------------------------------------- search
def search(
    config: RunConfig,
    *,
    resume: bool = False,
    base: tuple[Any, Any] | None = None,
    data: InMemoryRows | None = None,
    push_to_hub: str | None = None,
) -> SearchSummary:
    """Run the search ``config.search`` asks for and leave the winner as the run in ``output.dir``.

    Args:
        config: a validated run config with a ``search`` section.
        resume: continue a killed search in ``output.dir`` (trials pick up from their checkpoints).
        base, data, push_to_hub: as :func:`softprompt.train.train` takes them (the base is loaded once and
            shared by the trials; the winner is pushed when it finishes).

    Examples:
        >>> from softprompt.train import load_config
        >>> task = {"kind": "classification", "template": "review {text} sentiment", "label_words": ["no", "yes"]}
        >>> config = load_config(None, [f"output.dir={tmp_dir / 'search'}", "train.max_steps=2", "train.batch_size=4",
        ...                             "train.report_to=[]", "output.plot=false", "eval.zero_shot=false",
        ...                             "search={lr: [0.01, 0.1], init: [vocab], budget: 4, eta: 2}"],
        ...                      base={"prompt": {"method": "prompt_tuning", "num_virtual_tokens": 4}, "task": task})
        >>> rows = [{"text": "a gem", "label": 1}, {"text": "dull film", "label": 0}] * 4
        >>> summary = search(config, base=(base_model, tokenizer), data={"train": rows, "validation": rows})
        ... # doctest: +ELLIPSIS
        search: 2 trials ..., the best by dev accuracy
        ...
        winner ...: dev accuracy ...
        >>> [rung.trials for rung in summary.plan.rungs], summary.run.steps, (tmp_dir / "search" / SEARCH_NAME).exists()
        ([2, 1], 6, True)
    """
    if config.search is None:
        raise RunError(
            "the config has no search section: add one (search: {}) or train it with softprompt.train.train"
        )
    run_dir = Path(config.output.dir)
    _check_search_dir(run_dir, config, resume)
    metric = config.selection_metric
    settings = config.search_settings()
    plan = plan_rungs(len(settings), config.train.max_steps, config.search.budget, config.search.eta,
                      config.train.eval_every)  # fmt: skip
    trials = [Trial.named(number, setting) for number, setting in enumerate(settings)]
    summary = SearchSummary(str(run_dir), False, metric, config.search.eta, plan, trials)

    grid = {
        key: list(dict.fromkeys(s[key] for s in settings)) for key in ("num_virtual_tokens", "init", "lr")
    }
    axes = " x ".join(f"{key} {values}" for key, values in grid.items())
    tqdm.write(f"search: {len(trials)} trials ({axes}), the best by dev {metric}")
    for line in plan.describe():
        tqdm.write(line)

    task = make_task(config.task)
    if base is None:
        tqdm.write(f"loading {config.model.name_or_path} ...")
        base = load_base(config, task)
    if load_data(config.data, task, base[1], rows=data, splits=("dev",)).dev is None:
        raise RunError("a search picks its winner on dev: set data.dev (or give train(data=) a dev split)")
    if not resume:  # the config, the model and the dev rows are good: an earlier run may go
        _clear_run_dir(run_dir)
    trials_dir = run_dir / TRIALS_DIR

    bar = tqdm(total=plan.spent, desc="search", unit="step", dynamic_ncols=True)
    try:
        alive = trials
        for number, rung in enumerate(plan.rungs, 1):
            last = number == len(plan.rungs)
            tqdm.write(f"rung {number} of {len(plan.rungs)}: {len(alive)} trial(s) to step {rung.steps}")
            for trial in alive:
                trial_dir = trials_dir / trial.name
                before = _progress(trial_dir)
                if before is None or (before.step < rung.steps and not before.stopped_early):
                    tqdm.write(f"trial {trial.name}: steps {before.step if before else 0} -> {rung.steps}")
                    train(
                        setting_config(config, trial.setting, plan, trial_dir),
                        resume=before is not None,
                        stop_after=rung.steps - (before.step if before else 0),
                        base=base,
                        data=data,
                        push_to_hub=push_to_hub if last else None,
                    )
                after = _progress(trial_dir)
                trial.steps = after.step if after else 0
                bar.update(trial.steps - (before.step if before else 0))
                if trial.steps < rung.steps and not (after and after.stopped_early):  # Ctrl-C in the trial
                    return _record(summary, trials_dir)
                trial.scores.append(rung_score(read_records(trial_dir / JSONL_NAME), metric, rung.steps))
                tqdm.write(f"trial {trial.name}: dev {metric} {_score(metric, trial.scores[-1])}")
                _record(summary, trials_dir)
            alive = best_trials(alive, metric, plan.rungs[number].trials) if not last else alive
    finally:
        bar.close()
    (winner,) = alive
    summary.winner, summary.finished = winner.name, True
    summary.run = _promote(trials_dir / winner.name, setting_config(config, winner.setting, plan, run_dir))
    tqdm.write(f"winner {winner.name}: dev {metric} {_score(metric, winner.scores[-1])}")
    return _record(summary, trials_dir)


def _score(metric: str, score: float | None) -> str:
    """A percentage with 2 decimals; a loss or mse with 4 (they are small numbers)."""
    if score is None:
        return "-"
    return f"{score:.4f}" if metric in LOWER_IS_BETTER else f"{score:.2f}"


def _progress(trial_dir: Path) -> Progress | None:
    """Where a trial is: its checkpoint's counters (None before its first checkpoint)."""
    path = trial_dir / CHECKPOINT_NAME
    return Progress(**read_checkpoint(path)["progress"]) if path.exists() else None


def _check_search_dir(run_dir: Path, config: RunConfig, resume: bool) -> None:
    """Refuse to clobber an earlier run or search, or to resume a search that is not there."""
    record = run_dir / SEARCH_NAME
    if resume and not record.exists():
        raise RunError(f"nothing to resume: {record} does not exist (start without --resume)")
    earlier = record.exists() or (run_dir / CHECKPOINT_NAME).exists()
    if not resume and earlier and not config.output.overwrite:
        raise RunError(
            f"{run_dir} already holds a run; continue its search with --resume, or start afresh with "
            "--set output.overwrite=true, or choose another output.dir"
        )


def _clear_run_dir(run_dir: Path) -> None:
    """A fresh search: an earlier run's or search's output goes (trials, winner files, records)."""
    shutil.rmtree(run_dir / TRIALS_DIR, ignore_errors=True)
    for name in (*WINNER_FILES, SUMMARY_NAME, SEARCH_NAME, JSONL_NAME, CSV_NAME, CONFIG_NAME):
        (run_dir / name).unlink(missing_ok=True)


def _record(summary: SearchSummary, trials_dir: Path) -> SearchSummary:
    """Write ``search.json`` and the run folder's metrics (every trial's records, by trial)."""
    run_dir = Path(summary.run_dir)
    records = [
        {"trial": trial.name, **record}
        for trial in summary.trials
        for record in read_records(trials_dir / trial.name / JSONL_NAME)
    ]
    rows = io.StringIO()
    out = csv.writer(rows)
    out.writerow(["trial", "step", "split", "name", "value"])
    out.writerows(
        [r["trial"], r["step"], r["split"], name, value]
        for r in records
        for name, value in r.items()
        if name not in ("trial", "step", "split")
    )
    atomic_write(
        run_dir / JSONL_NAME, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    )
    atomic_write(run_dir / CSV_NAME, lambda tmp: tmp.write_text(rows.getvalue()))
    text = json.dumps(summary.to_json(), indent=2) + "\n"
    atomic_write(run_dir / SEARCH_NAME, lambda tmp: tmp.write_text(text))
    return summary


def _promote(trial_dir: Path, config: RunConfig) -> RunSummary:
    """Make the winning trial the run: its files in the run folder, its config as the run's config."""
    run_dir = Path(config.output.dir)
    for name in WINNER_FILES:
        if (trial_dir / name).exists():
            atomic_write(run_dir / name, lambda tmp, name=name: shutil.copyfile(trial_dir / name, tmp))
    atomic_write(run_dir / CONFIG_NAME, lambda tmp: tmp.write_text(config.to_yaml()))
    run = RunSummary(**json.loads((trial_dir / SUMMARY_NAME).read_text()))
    adapter = run_dir / ADAPTER_NAME
    run = replace(run, run_dir=str(run_dir), adapter=str(adapter) if adapter.exists() else None)
    text = json.dumps(asdict(run), indent=2) + "\n"
    atomic_write(run_dir / SUMMARY_NAME, lambda tmp: tmp.write_text(text))
    return run


def format_search(summary: SearchSummary) -> str:
    """The end-of-search report: every trial's dev score per rung, then the winner's run summary."""
    rungs = len(summary.plan.rungs)
    wide = max(len(trial.name) for trial in summary.trials)
    header = "".join(f"{f'rung {n}':>9}" for n in range(1, rungs + 1))
    lines = [f"{'trial':<{wide}}{header}   (dev {summary.metric})"]
    for trial in summary.trials:
        cells = [f"{_score(summary.metric, score):>9}" for score in trial.scores]
        cells += [f"{'':>9}"] * (rungs - len(cells))
        mark = "  <- winner" if trial.name == summary.winner else ""
        lines.append(f"{trial.name:<{wide}}{''.join(cells)}{mark}")
    if not summary.finished:
        lines.append(
            f"\ninterrupted; continue the search with --resume (the run folder is {summary.run_dir})"
        )
    if summary.run is not None:
        lines += ["", format_summary(summary.run)]
    return "\n".join(lines)
