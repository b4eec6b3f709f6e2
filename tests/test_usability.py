"""What a newcomer meets first: a misspelt flag names the nearest valid one; a missing data.root is
reported before the backbone loads."""

from __future__ import annotations

import pytest

from feddat.cli import main


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "--federation.roundz", "3"], "unknown option '--federation.roundz' (did you mean '--federation.rounds'?); `feddat run --help`"),
        (["compare", "--seed", "0,1"], "(did you mean '--seeds'?)"),
        (["flower", "local", "--federation.fractoin", "0.5"], "(did you mean '--federation.fraction'?); `feddat flower local --help`"),
        (["run", "--federation.rounds", "3", "stray"], "unexpected argument(s) stray"),
        # another command's option is said to be one, not matched to this command's nearest name
        (["pretrain", "--federation.rounds", "3"], "`feddat pretrain` takes no option '--federation.rounds'; it is an option of `feddat run`, `feddat compare`, `feddat flower local` and others;"),
        (["run", "--pretrain.steps=3"], "`feddat run` takes no option '--pretrain.steps'; it is an option of `feddat pretrain`; `feddat run --help`"),
    ],
)
def test_a_misspelt_flag_names_the_nearest_valid_one(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "unrecognized arguments" not in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--data.benchmark", "folder"], "data.root {root} is not a folder"),
        (["--data.source", "public", "--data.benchmark", "vqav2"], "data.root {root} is not a folder: data.source = public"),
    ],
)
def test_a_missing_data_root_is_reported_before_the_backbone_loads(flags, message, tmp_path, capsys):
    root = tmp_path / "no-such-folder"
    # The backbone path does not exist either: had the backbone loaded first, the error would name it.
    argv = ["run", "--backbone.name", "vilt", "--backbone.path", str(tmp_path / "no-such-vilt"), "--data.root", str(root), "--run.out_dir", str(tmp_path / "runs"), *flags]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message.format(root=root) in err and "ViLT" not in err
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_a_public_dataset_folder_missing_under_data_root_is_named(tmp_path, capsys):
    (tmp_path / "data" / "aqua").mkdir(parents=True)
    argv = ["run", "--backbone.name", "vilt", "--backbone.path", str(tmp_path / "no-such-vilt"), "--data.source", "public", "--data.root", str(tmp_path / "data"), "--run.out_dir", str(tmp_path / "runs")]
    assert main(argv) == 1
    assert f"vqa_abstract: {tmp_path / 'data' / 'vqa_abstract'} does not exist" in capsys.readouterr().err


def feddat_commands(text: str) -> list[str]:
    """Every `.venv/bin/feddat …` or `feddat …` line of a Markdown text's shell blocks (continuations
    joined, a `$ ` prompt dropped); also used for the documentation pages (tests/test_docs.py)."""
    import re

    blocks = re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S)
    lines = (line.strip().removeprefix("$ ") for block in blocks for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line.startswith((".venv/bin/feddat ", "feddat ")) and "--help" not in line]


def readme_commands() -> list[str]:
    """Every `.venv/bin/feddat …` or `feddat …` line of the README's bash blocks (continuations joined)."""
    from pathlib import Path

    return feddat_commands((Path(__file__).parent.parent / "README.md").read_text())


@pytest.mark.parametrize("command", readme_commands())
def test_every_feddat_command_in_the_readme_parses_and_its_settings_validate(command):
    """A command pasted from the README is accepted: its options exist for that subcommand, and
    the settings it gives make a valid configuration (files it names are the reader's own)."""
    check_command(command)


def check_command(command: str) -> None:
    """`command` parses with the real CLI and the settings it gives make a valid configuration."""
    import shlex

    from feddat import config as config_mod
    from feddat.cli import build_parser, parse

    words = shlex.split(command, comments=True)[1:]  # the program name goes, and the shell's part
    argv = words[: next((i for i, w in enumerate(words) if w in ("&", "&&", "|", ";", ">", "2>&1")), len(words))]
    args = parse(build_parser(), argv)
    config_mod.load(None, {k: v for k, v in vars(args).items() if "." in k and v is not None})


def test_the_readme_shows_the_main_commands():
    subcommands = {c.split()[1] for c in readme_commands()}
    assert {"run", "compare", "data", "pretrain", "flower", "predict", "export", "report"} <= subcommands
