"""MkDocs hook (mkdocs.yml `hooks:`): the reference pages that must not drift from the code.

reference/cli.md is written from the real argparse parser (feddat.cli.build_parser) and
reference/config.md from the configuration dataclasses (feddat.config.iter_fields), at every
build, as pages that exist only in the built site: nothing under docs/ to edit or to forget.
tests/test_docs.py checks that they list every subcommand, option and key.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import typing

from mkdocs.structure.files import File

CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/config.md"


def on_files(files, config):
    for path, text in ((CLI_PAGE, cli_page()), (CONFIG_PAGE, config_page())):
        if files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, content=text))
    return files


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no HTML, no column breaks, no emphasis."""
    return html.escape(str(text), quote=False).replace("|", "&#124;").replace("*", "&#42;").replace("\n", " ")


def code(text: str) -> str:
    return f"<code>{cell(text)}</code>" if text != "" else ""


# ---- the command line --------------------------------------------------------------------------


def config_keys() -> set[str]:
    from feddat import config as config_mod

    return {key for key, _, _ in config_mod.iter_fields()}


def commands(parser: argparse.ArgumentParser) -> typing.Iterator[tuple[argparse.ArgumentParser, str]]:
    """Every (sub-)subcommand parser with its one-line help, depth first, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.prog.split()[-1] != name:  # an alias: the parser is listed under its own name
                    continue
                yield sub, helps.get(name) or ""
                yield from commands(sub)


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def option_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(action.option_strings)
        shown = f"{names} {action.metavar or action.dest.upper()}" if action.nargs != 0 else names
    else:
        shown = action.metavar or action.dest
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            shown = "{" + ",".join(map(str, action.choices)) + "}"
    return f"| {code(shown)} | {cell(option_help(parser, action))} |"


def command_section(parser: argparse.ArgumentParser, summary: str, keys: set[str]) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    own = [a for a in parser._actions if a.dest not in keys and a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)]
    own = [a for a in own if not isinstance(a, argparse._HelpAction)]
    taken = [a.dest for a in parser._actions if a.dest in keys]
    lines = [f"## {parser.prog}", ""]
    if summary:
        lines += [cell(summary[0].upper() + summary[1:]) + ".", ""]
    if parser.description and parser.description != summary:
        lines += [cell(parser.description), ""]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subs:
        names = [n for n, p in subs[0].choices.items() if p.prog.split()[-1] == n]
        lines += ["Subcommands: " + ", ".join(f"[`{parser.prog} {n}`](#{anchor(f'{parser.prog} {n}')})" for n in names) + ".", ""]
    if len(usage) < 400:
        lines += ["```text", usage, "```", ""]
    if own:
        lines += ["| Option | Help |", "| --- | --- |", *(option_row(parser, a) for a in own), ""]
    if taken:
        sections = list(dict.fromkeys(k.split(".")[0] for k in taken))
        lines += [
            f"Also {len(taken)} configuration keys as `--section.key V`, those of {', '.join(f'[`[{s}]`](config.md#{s})' for s in sections)}: "
            "the keys, their types, defaults and help are in the [configuration reference](config.md). "
            f"`{parser.prog} --help` lists them all.",
            "",
        ]
    return lines


def anchor(title: str) -> str:
    """The id Python-Markdown's toc gives a heading (lower case, spaces to dashes)."""
    return "-".join(title.lower().split())


def cli_page() -> str:
    from feddat.cli import build_parser

    parser, keys = build_parser(), config_keys()
    lines = [
        "# Command line",
        "",
        "Generated from `feddat`'s own argument parser at every build of this site "
        "(`tools/docs_hooks.py`), so it lists exactly what the installed version accepts. "
        "`feddat <command> --help` prints the same.",
        "",
        "```text",
        parser.format_usage().removeprefix("usage: ").strip(),
        "```",
        "",
    ]
    for sub, summary in commands(parser):
        lines += command_section(sub, summary, keys)
    return "\n".join(lines) + "\n"


# ---- the configuration -------------------------------------------------------------------------


def default_of(f: dataclasses.Field) -> typing.Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def toml_value(value: typing.Any) -> str:
    """The default as it is written in a TOML file (a list on one line)."""
    import tomli_w

    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def config_page() -> str:
    from feddat import config as config_mod

    lines = [
        "# Configuration",
        "",
        "Every key a run accepts, generated from the configuration dataclasses "
        "(`src/feddat/config.py`) at every build of this site (`tools/docs_hooks.py`). "
        "A key `section.key` is set in a TOML file as `key = value` under `[section]` "
        "(`feddat run --config FILE`), or on the command line as `--section.key VALUE` "
        "(lists comma-separated: `--run.methods feddat,fedavg`). Values come from these defaults, "
        "then the file, then the flags; `feddat run --help` prints the same help. "
        "The `[pretrain]` keys are read by `feddat pretrain`.",
        "",
    ]
    section = None
    for key, f, typ in config_mod.iter_fields():
        name = key.split(".")[0]
        if name != section:
            section = name
            lines += ["", f"## {name}", "", "| Key | Type | Default | Help |", "| --- | --- | --- | --- |"]
        lines.append(f"| {code(key)} | {cell(config_mod._type_name(typ))} | {code(toml_value(default_of(f)))} | {cell(f.metadata['help'])} |")
    return "\n".join(lines) + "\n"
