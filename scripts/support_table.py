"""Generate the support table: every model type transformers' auto mappings name x every method.

Runs the support matrix's checks (``tests/support_checks.py``, the same code the test suite runs)
on tiny random models built from each model type's config, one forked process per case, and writes

* ``docs/support.md`` — each model type x method as works / refused (the reason) / fails (the
  error), head by head, with counts, the share of attention-based types that run every method, the
  failures grouped by reason, and the transformers version and date;
* ``benchmarks/results/support.json`` — the same, machine-readable (rewritten after every case, so an
  interrupted run keeps what it measured).

Usage::

    OMP_NUM_THREADS=1 python scripts/support_table.py                 # everything (minutes)
    python scripts/support_table.py --types llama gpt2 --heads causal-lm --markdown /tmp/t.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the checks and the tiny builder live with the tests

import torch  # noqa: E402
import transformers  # noqa: E402
from support_checks import MATRIX_HEADS, CaseResult, cases, run_isolated  # noqa: E402

from softprompt.methods import METHODS  # noqa: E402

STATUSES = ("works", "refused", "fails")


# ------------------------------------------------------------------------------------------ summary
def summarize(results: list[CaseResult]) -> dict:
    """Counts head by head and overall: built, per method outcome, attention-based running everything."""

    def counts(group: list[CaseResult]) -> dict:
        built = [r for r in group if r.built == "yes"]
        attention = [r for r in built if r.attention_based]
        every = [r for r in attention if r.runs_every_method()]
        return {
            "cases": len(group),
            "excluded": sum(r.built == "excluded" for r in group),
            "not_built": sum(r.built == "no" for r in group),
            "built": len(built),
            "attention_based": len(attention),
            "methods": {
                name: {s: sum(r.outcomes[name].status == s for r in built) for s in STATUSES}
                for name in METHODS
            },
            "attention_based_every_method": len(every),
            "attention_based_every_method_percent": round(100 * len(every) / len(attention), 1)
            if attention
            else 0.0,
        }

    by_head = {head: counts([r for r in results if r.head == head]) for head in MATRIX_HEADS}
    types_every = {r.model_type for r in results if r.attention_based and r.runs_every_method()}
    types_attention = {r.model_type for r in results if r.built == "yes" and r.attention_based}
    return {
        "overall": counts(results),
        "by_head": {head: c for head, c in by_head.items() if c["cases"]},
        # a model type is supported when every method runs under at least one of its heads
        "model_types_attention_based": len(types_attention),
        "model_types_every_method": len(types_every),
    }


def _pattern(text: str) -> str:
    """A message with its numbers, quoted names and layer lists folded, so equal causes group together."""
    text = re.sub(r"\[[\d, ]+\]", "[...]", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", "N", text)
    return text[:160]


def grouped_failures(results: list[CaseResult], status: str) -> list[dict]:
    """Cases with outcomes of ``status``, grouped by check and folded message, largest group first.

    A refusal groups by its first clause with class names folded ("cannot adapt a Class"): the rest
    names the model's own type and heads.
    """
    groups: dict[tuple[str, str], dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        for name, o in r.outcomes.items():
            if o.status == status:
                detail = o.detail
                if status == "refused":
                    detail = re.sub(r"\b(?=\w*[a-z])(?=\w*[A-Z]\w*[A-Z])\w+", "Class", detail.split(":")[0])
                groups[(o.check, _pattern(detail))][(r.model_type, r.head)].append(name)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    return [
        {
            "check": check,
            "reason": reason,
            "count": len(where),
            "where": [_where(*case, m) for case, m in where.items()],
        }
        for (check, reason), where in ordered
    ]


def _where(model_type: str, head: str, methods: list[str]) -> str:
    """``type (head)``, naming the methods unless it is all of them."""
    if len(methods) == len(METHODS):
        return f"{model_type} ({head})"
    return f"{model_type} ({head}: {', '.join(methods)})"


def grouped_build_failures(results: list[CaseResult]) -> list[dict]:
    groups: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if r.built == "no":
            groups[_pattern(r.reason.split(":")[0] + ":" + r.reason.partition(":")[2])].append(
                f"{r.model_type} ({r.head})"
            )
    return [
        {"reason": reason, "count": len(where), "where": where}
        for reason, where in sorted(groups.items(), key=lambda item: -len(item[1]))
    ]


# ----------------------------------------------------------------------------------------- markdown
def _cell(text: str, limit: int = 160) -> str:
    """Free text as a table cell: a code span (no markdown or HTML inside), pipes escaped."""
    text = " ".join(text.split()).replace("`", "'")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return "`" + text.replace("|", "\\|") + "`"


def _outcome_cell(outcome) -> str:
    if outcome.status == "works":
        return "works"
    detail = f"{outcome.check}: {outcome.detail}" if outcome.status == "fails" else outcome.detail
    return f"{outcome.status} {_cell(detail)}"


def markdown(results: list[CaseResult], summary: dict, about: dict) -> str:
    methods = list(METHODS)
    overall = summary["overall"]
    lines = [
        "# Support table",
        "",
        "Generated by `scripts/support_table.py` — do not edit by hand; see [Bring your own model](models.md) "
        "for what it checks and how to regenerate it.",
        "",
        f"transformers {about['transformers']}, torch {about['torch']}, softprompt at `{about['softprompt']}`, "
        f"{about['date']}.",
        "",
        f"**{summary['model_types_every_method']} of {summary['model_types_attention_based']} attention-based "
        f"model types** run every method under at least one of their heads; "
        f"**{overall['attention_based_every_method']} of {overall['attention_based']} attention-based "
        f"(model type, head) cases ({overall['attention_based_every_method_percent']} %)** run every method.",
        "",
        "## Counts",
        "",
        "| head | model types | excluded (not text) | not built | built | attention-based | "
        + " | ".join(f"{m} works / refused / fails" for m in methods)
        + " | attention-based running every method |",
        "|---|" + "---|" * (6 + len(methods)),
    ]
    for head, c in [*summary["by_head"].items(), ("all", overall)]:
        per_method = [" / ".join(str(c["methods"][m][s]) for s in STATUSES) for m in methods]
        lines.append(
            f"| {head} | {c['cases']} | {c['excluded']} | {c['not_built']} | {c['built']} | {c['attention_based']} | "
            + " | ".join(per_method)
            + f" | {c['attention_based_every_method']} ({c['attention_based_every_method_percent']} %) |"
        )
    for status, title in (("fails", "Failures"), ("refused", "Refusals")):
        groups = grouped_failures(results, status)
        lines += ["", f"## {title} by reason", ""]
        if not groups:
            lines.append("None.")
            continue
        lines += ["| cases | check | reason (numbers folded) | where |", "|---|---|---|---|"]
        for g in groups:
            where = ", ".join(g["where"][:6]) + (f", ... ({g['count'] - 6} more)" if g["count"] > 6 else "")
            lines.append(f"| {g['count']} | {g['check']} | {_cell(g['reason'])} | {where} |")
    lines += [
        "",
        "## Not built, by reason",
        "",
        "| cases | reason (numbers folded) | where |",
        "|---|---|---|",
    ]
    for g in grouped_build_failures(results):
        lines.append(f"| {g['count']} | {_cell(g['reason'])} | {', '.join(g['where'])} |")
    for head in summary["by_head"]:
        rows = [r for r in results if r.head == head]
        lines += ["", f"## {head}", "", "| model type | attention-based | " + " | ".join(methods) + " |"]
        lines.append("|---|---|" + "---|" * len(methods))
        for r in rows:
            if r.built != "yes":
                continue
            cells = [_outcome_cell(r.outcomes[m]) for m in methods]
            lines.append(
                f"| {r.model_type} | {'yes' if r.attention_based else 'no'} | " + " | ".join(cells) + " |"
            )
        skipped = [r for r in rows if r.built != "yes"]
        if skipped:
            lines += ["", "Not in the matrix:", "", "| model type | why |", "|---|---|"]
            lines += [
                f"| {r.model_type} | {'not a text model' if r.built == 'excluded' else 'does not build tiny'}: "
                f"{_cell(r.reason)} |"
                for r in skipped
            ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- running
def _about(label: str | None) -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    import softprompt

    source = Path(softprompt.__file__).resolve().parent
    if source.is_relative_to(REPO):
        dirty = git("status", "--porcelain", "--", "src")
        version = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")
    else:  # another copy (e.g. an export of one commit) on PYTHONPATH
        version = str(source)
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "softprompt": label or version,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _write(results: list[CaseResult], about: dict, json_path: Path, markdown_path: Path | None) -> dict:
    summary = summarize(results)
    payload = {
        "about": about,
        "summary": summary,
        "failures": grouped_failures(results, "fails"),
        "refusals": grouped_failures(results, "refused"),
        "build_failures": grouped_build_failures(results),
        "cases": [
            {
                **{k: v for k, v in vars(r).items() if k != "outcomes"},
                "outcomes": {m: vars(o) for m, o in r.outcomes.items()},
            }
            for r in results
        ],
    }
    _write_atomic(json_path, json.dumps(payload, indent=1) + "\n")
    if markdown_path is not None:
        _write_atomic(markdown_path, markdown(results, summary, about))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", nargs="+", default=list(MATRIX_HEADS), choices=MATRIX_HEADS)
    parser.add_argument(
        "--types", nargs="+", help="only these model types (default: every type of each head)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one case may take")
    parser.add_argument("--label", help="how to name the softprompt measured (default: its git commit)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/support.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs/support.md")
    args = parser.parse_args(argv)

    todo = [(t, h) for t, h in cases(tuple(args.heads)) if not args.types or t in args.types]
    about = _about(args.label)
    results: list[CaseResult] = []
    start = time.perf_counter()
    for i, (model_type, head) in enumerate(todo, 1):
        result = run_isolated(model_type, head, args.timeout)
        results.append(result)
        statuses = Counter(o.status for o in result.outcomes.values())
        shown = ", ".join(f"{n} {s}" for s, n in statuses.items()) or f"{result.built}: {result.reason[:100]}"
        print(f"[{i}/{len(todo)}] {model_type} ({head}) {result.seconds:.1f} s: {shown}", flush=True)
        _write(results, about, args.json, None)
    summary = _write(results, about, args.json, args.markdown)
    overall = summary["overall"]
    print(
        f"{len(todo)} cases in {time.perf_counter() - start:.0f} s: built {overall['built']}, "
        f"attention-based {overall['attention_based']}, every method {overall['attention_based_every_method']} "
        f"({overall['attention_based_every_method_percent']} %); model types "
        f"{summary['model_types_every_method']}/{summary['model_types_attention_based']}"
    )
    for name, c in overall["methods"].items():
        print(f"  {name}: " + ", ".join(f"{s} {c[s]}" for s in STATUSES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
