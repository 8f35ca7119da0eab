"""The README's set-up commands stay true: exactly two, and CI runs the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    section = (
        ROOT.joinpath("README.md")
        .read_text()
        .split("## Set up on a fresh machine", 1)[1]
        .split("\n## ", 1)[0]
    )
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = setup_commands()
    assert len(commands) == 2, commands
    install_and_run, install_and_test = commands
    assert "softprompt train" in install_and_run and "pytest" in install_and_test
    assert install_and_test in ROOT.joinpath(".ci", "run").read_text()


def test_the_readme_support_count_is_the_generated_tables():
    """The README's model-type count comes from the support table (benchmarks/results/support.json)."""
    import json

    summary = json.loads(ROOT.joinpath("benchmarks", "results", "support.json").read_text())["summary"]
    causal = summary["by_head"]["causal-lm"]
    readme = " ".join(ROOT.joinpath("README.md").read_text().split())
    claim = (
        f"**{summary['model_types_every_method']} of {summary['model_types_attention_based']} attention-based "
        f"model types run every method** under at least one head (causal LMs: "
        f"{causal['attention_based_every_method']} of {causal['attention_based']} types)"
    )
    assert claim in readme
