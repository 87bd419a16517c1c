"""The command line as a whole: every numeric option is range-checked (a bad value is one line and exit 2),
every option has help, old flag spellings name their new one, and every `convrec` command the README and
docs show exists with the flags it uses."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from convrec.cli import bounds
from convrec.cli.main import click_root, main

ROOT = Path(__file__).resolve().parent.parent
ROOT_CMD = click_root()
COMMANDS = dict(bounds.commands(ROOT_CMD))


def _options(cmd):
    return [p for p in cmd.params if type(p).__name__.endswith("Option") and not p.hidden]


def _run(argv: list[str], capsys, stream: str = "err") -> tuple[int, str]:
    """The real entry point in-process (a bad value fails while parsing, before any work): the exit
    code and what it wrote to ``stream``."""
    old = sys.argv
    sys.argv = ["convrec", *argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    return exit_info.value.code, getattr(capsys.readouterr(), stream)


def _required(cmd, skip: str) -> list[str]:
    """Placeholder values for the required arguments and options (never reached: the bad value fails first)."""
    args = []
    for p in cmd.params:
        if not p.required or skip in getattr(p, "opts", ()):
            continue
        args += ["x"] if type(p).__name__.endswith("Argument") else [p.opts[0], "x"]
    return args


NUMERIC = [(path, p) for path, cmd in COMMANDS.items() for p in _options(cmd) if bounds.numeric(p)]


def test_every_numeric_option_has_a_range():
    missing = [f"{' '.join(path)} {p.opts[0]}" for path, p in NUMERIC if bounds.range_of(p) is None]
    assert not missing, f"numeric options without a range in convrec/cli/bounds.py: {missing}"
    assert len(NUMERIC) > 80  # the walk saw the whole tree


@pytest.mark.parametrize(
    ("path", "flag", "bad"),
    [
        (path, p.opts[0], bad)
        for path, p in NUMERIC
        if bounds.range_of(p) is not None
        for bad in [*bounds.range_of(p).bad_values(), *(["nan"] if p.bare_type() == "float" else [])]
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v),
)
def test_bad_numeric_values_are_one_line_and_exit_2(path, flag, bad, capsys):
    cmd = COMMANDS[path]
    value = str(int(bad)) if not isinstance(bad, str) and float(bad).is_integer() else str(bad)
    code, err = _run([*path, f"{flag}={value}", *_required(cmd, flag)], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in err, err


def test_a_value_inside_the_range_passes_the_check(capsys):
    code, err = _run(["baseline", "cooc", "--n-items=5", "--data", "/nonexistent/d", "--out", "x.parquet"], capsys)
    assert code == 2 and "--n-items" not in err and "no such data folder" in err


def test_every_option_has_help_and_every_choice_is_declared():
    no_help = [f"{' '.join(path)} {p.opts[0]}" for path, cmd in COMMANDS.items() for p in _options(cmd) if not p.help]
    assert not no_help, f"options without help: {no_help}"
    for flag in ("--split", "--precision", "--level", "--protocol", "--engine", "--size"):
        for path, cmd in COMMANDS.items():
            for p in _options(cmd):
                if flag in p.opts and path != ("model", "init"):
                    assert p.type_descriptor.is_choice, f"{' '.join(path)} {flag} is not declared as a choice"


@pytest.mark.parametrize(
    ("argv", "new"),
    [
        (["baseline", "cooc", "--n", "5"], "--n-items"),
        (["remap", "--n", "5"], "--n-items"),
        (["reflect", "--n", "5"], "--n-items"),
        (["adjust", "--n", "5"], "--n-items"),
        (["rl", "--init", "m"], "--model"),
        (["generate", "--dtype", "bfloat16"], "--precision"),
        (["model", "import", "x", "--dtype", "float32"], "--precision"),
        (["serve", "--catalog", "d"], "--data"),
    ],
)
def test_old_spellings_are_refused_naming_the_new_one(argv, new, capsys):
    code, err = _run(argv, capsys)
    assert code == 2 and f"is now {new}" in err and len(err.strip().splitlines()) == 1, err


def test_short_help_and_an_example_in_every_command(capsys):
    for path in COMMANDS:
        code, out = _run([*path, "-h"], capsys, "out")
        assert code == 0, path
        assert "Example" in out and f"convrec {' '.join(path)}" in out, f"{' '.join(path)}: no example in its help"


def _shown_commands() -> list[tuple[str, str]]:
    """(file, command line) for every `convrec ...` line in a shell block of the README and docs."""
    found = []
    # docs/results.md is history: each command there is spelt as it ran on its day
    for doc in [ROOT / "README.md", *sorted(d for d in (ROOT / "docs").glob("*.md") if d.name != "results.md")]:
        blocks, lang, lines = [], None, []
        for raw in doc.read_text().splitlines():
            if raw.lstrip().startswith("```"):
                if lang is None:
                    lang, lines = raw.strip()[3:].strip(), []
                else:
                    blocks += ["\n".join(lines)] if lang in ("", "bash", "sh", "shell", "console") else []
                    lang = None
            elif lang is not None:
                lines.append(raw)
        for block in blocks:
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.strip().removeprefix("$ ")
                for part in re.split(r"&&|;|\|", line):
                    part = part.strip()
                    if part.startswith(("convrec ", ".venv/bin/convrec ")):
                        found.append((doc.name, part))
    return found


def test_every_command_the_docs_show_exists_with_its_flags():
    shown = _shown_commands()
    assert len(shown) >= 10
    problems = []
    for doc, line in shown:
        words = shlex.split(line.split(" #")[0])[1:]
        node, path = ROOT_CMD, []
        while words and hasattr(node, "commands") and words[0] in node.commands:
            node = node.commands[words[0]]
            path.append(words.pop(0))
        if hasattr(node, "commands") and not (words and words[0].startswith("-")):
            problems.append(f"{doc}: '{line}': no such command")
            continue
        params = [p for p in node.params if not getattr(p, "hidden", False)]  # hidden: old spellings
        known = {o for p in params for o in [*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ())]}
        known |= {"--help", "-h"}
        for w in words:
            flag = w.split("=")[0]
            if flag.startswith("--") and flag not in known:
                problems.append(f"{doc}: '{line}': {' '.join(path)} has no {flag}")
    assert not problems, "\n".join(problems)


def test_learning_rates_default_to_real_models_and_the_demo_keeps_its_own():
    from convrec.demo.plan import SIZES
    from convrec.train.config import RLConfig, SFTConfig

    assert SFTConfig(data="d", model="m", out="o").lr == 1e-5  # full fine-tuning of a 0.5B-3B model
    assert SFTConfig(data="d", model="m", out="o", lora_r=8).lr == 2e-4  # LoRA
    assert SFTConfig(data="d", model="m", out="o", lr=3e-3).lr == 3e-3
    assert RLConfig(model="m", data="d", out="o").lr == 1e-6  # the paper's released value
    assert SIZES["small"]["sft"]["lr"] == 1e-3 and SIZES["small"]["rl"]["lr"] == 5e-5  # the tiny student's recipe
