"""Writes that are whole, clean and polite — tested with real ``kill -9`` of processes that are saving."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_causal_lm

import softprompt
from softprompt.files import atomic
from softprompt.files.atomic import atomic_write, remove_stale_temps, replace_folder

TESTS = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    def set_umask(value: int) -> None:
        os.umask(value)

    previous = os.umask(0o022)
    yield set_umask
    os.umask(previous)


def test_a_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path, umask):
    umask(0o077)
    shared = tmp_path / "shared.txt"
    shared.write_text("old")
    shared.chmod(0o644)
    atomic_write(shared, lambda tmp: tmp.write_text("new"))
    assert shared.read_text() == "new" and mode(shared) == 0o644  # saving over it does not make it private
    atomic_write(tmp_path / "private.txt", lambda tmp: tmp.write_text("x"))
    assert mode(tmp_path / "private.txt") == 0o600
    umask(0o002)
    atomic_write(tmp_path / "group.txt", lambda tmp: tmp.write_text("x"))
    assert mode(tmp_path / "group.txt") == 0o664


def test_a_symlinked_target_is_written_through(tmp_path):
    real = tmp_path / "store" / "task.safetensors"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "task.safetensors"
    link.symlink_to(real)
    atomic_write(link, lambda tmp: tmp.write_text("new"))
    assert link.is_symlink() and real.read_text() == "new"


def test_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "task.safetensors"
    host = atomic._host()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".task.safetensors.{host}-{dead.stdout.strip()}.0badc0de.tmp"
    live = tmp_path / f".task.safetensors.{host}-{os.getpid()}.0123abcd.tmp"
    other_host = tmp_path / ".task.safetensors.elsewhere-1.0123abcd.tmp"
    legacy = tmp_path / ".task.safetensors.k3j4h5g6.tmp"  # mkstemp's name, before writers were named
    for path in (stale, live, other_host, legacy):
        path.write_bytes(b"half a file")
    os.utime(legacy, (0, 0))  # abandoned long ago
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other_host.name])


def test_replace_folder_swaps_in_whole_and_keeps_other_files(tmp_path):
    folder = tmp_path / "peft"
    replace_folder(folder, lambda d: (d / "a.txt").write_text("1"))
    (folder / "README.md").write_text("mine")
    folder.chmod(0o750)
    replace_folder(folder, lambda d: (d / "a.txt").write_text("2"))
    assert (folder / "a.txt").read_text() == "2" and (folder / "README.md").read_text() == "mine"
    assert mode(folder) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft"]


def test_replace_folder_without_an_exchange_call_moves_the_old_folder_back_after_a_crash(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    folder = tmp_path / "peft"
    replace_folder(folder, lambda d: (d / "a.txt").write_text("1"))
    replace_folder(folder, lambda d: (d / "a.txt").write_text("2"))
    assert (folder / "a.txt").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["peft"]
    # A writer killed between its two renames: the old folder sits aside, no folder at the target.
    aside = tmp_path / f".peft.{atomic._host()}-999999999.0badc0de.old"
    folder.rename(aside)
    assert remove_stale_temps(folder) == [] and (folder / "a.txt").read_text() == "2"


def test_a_failed_build_leaves_the_old_folder(tmp_path):
    folder = tmp_path / "peft"
    replace_folder(folder, lambda d: (d / "a.txt").write_text("1"))

    def broken(d: Path) -> None:
        (d / "a.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_folder(folder, broken)
    assert (folder / "a.txt").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["peft"]


# -------------------------------------------------------------------------------- real kill -9
SAVER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import softprompt
    from tiny import tiny_causal_lm

    out = {out!r}
    base = tiny_causal_lm("llama")
    models = [
        softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=n, init="random", seed=n))
        for n in (3, 5)
    ]
    if {kill_in_write!r}:  # die half-way through writing the temp file
        import softprompt.files.adapter as adapter

        def half_then_die(tensors, path, metadata=None):
            open(path, "wb").write(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)

        adapter.save_file = half_then_die
    print("ready", flush=True)
    i = {start}
    while True:
        model = models[i % 2]
        model.save(os.path.join(out, "task.safetensors"))
        model.export_peft(os.path.join(out, "peft"))
        i += 1
    """
)


def run_saver(out: Path, *, kill_in_write: bool = False, start: int = 0, delay: float | None = None) -> None:
    code = SAVER.format(tests=str(TESTS), out=str(out), kill_in_write=kill_in_write, start=start)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    if delay is not None:
        try:
            child.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=120) == -signal.SIGKILL


def check_whole(out: Path) -> None:
    """The file and the folder each hold one whole save: 3 or 5 virtual tokens, both halves agreeing."""
    base = tiny_causal_lm("llama")
    if (out / "task.safetensors").exists():
        assert softprompt.load(base, out / "task.safetensors").prompt.prefix.shape[0] in (3, 5)
    if (out / "peft").exists():
        config = json.loads((out / "peft" / "adapter_config.json").read_text())
        rows = load_file(out / "peft" / "adapter_model.safetensors")["prompt_embeddings"].shape[0]
        assert config["num_virtual_tokens"] == rows in (3, 5)
        assert softprompt.load(base, out / "peft").prompt.prefix.shape[0] == rows


def kill_saves(out: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    for round_ in range(kills):
        run_saver(out, start=round_, delay=rng.uniform(0.0, 0.4))
        check_whole(out)
    # The next save finds what the killed ones left and removes it.
    model = softprompt.wrap(tiny_causal_lm("llama"), softprompt.PrefixTuningConfig(num_virtual_tokens=3))
    model.save(out / "task.safetensors")
    model.export_peft(out / "peft")
    assert sorted(p.name for p in out.iterdir()) == ["peft", "task.safetensors"]
    assert sorted(p.name for p in (out / "peft").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_a_save_killed_inside_its_write_leaves_the_old_file_and_the_next_save_cleans_up(tmp_path):
    first = softprompt.wrap(tiny_causal_lm("llama"), softprompt.PrefixTuningConfig(num_virtual_tokens=4))
    first.save(tmp_path / "task.safetensors")
    before = (tmp_path / "task.safetensors").read_bytes()
    run_saver(tmp_path, kill_in_write=True)
    assert (tmp_path / "task.safetensors").read_bytes() == before
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1  # what kill -9 leaves
    first.save(tmp_path / "task.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task.safetensors"]


def test_saves_killed_at_random_moments_leave_whole_files(tmp_path):
    kill_saves(tmp_path, kills=2, seed=0)


@pytest.mark.slow
def test_forty_saves_killed_at_random_moments_leave_whole_files(tmp_path):
    kill_saves(tmp_path, kills=40, seed=1)


def test_a_torch_save_file_is_never_unpickled(tmp_path):
    torch.save({"embeddings": torch.zeros(4, 32)}, tmp_path / "task.safetensors")
    with pytest.raises(softprompt.files.UnsafeFileError, match="what torch.save writes"):
        softprompt.load(tiny_causal_lm("llama"), tmp_path / "task.safetensors")
