"""The documentation site (mkdocs.yml, docs/): it builds with `mkdocs build --strict`, its generated
reference pages list every subcommand, option and configuration key, every `feddat` command its
pages show parses and validates, nothing in the repository points outside it, and the built site
works in a real headless Chromium (search included)."""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from feddat import config as config_mod
from feddat.cli import build_parser
from test_report import FLAGS, browser_or_skip
from test_usability import check_command, feddat_commands

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def doc_pages() -> list[Path]:
    """The Markdown pages of the site (the recorded runs under results/ are data, not pages)."""
    return sorted(p for p in DOCS.rglob("*.md") if "runs" not in p.relative_to(DOCS).parts)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra: pip install -c constraints.txt -e '.[test]'")
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    return out


def sections(html: str) -> dict[str, str]:
    """Each h2's id -> the HTML from it to the next h2."""
    return {chunk.split('"', 1)[0]: chunk for chunk in html.split('<h2 id="')[1:]}


def subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (sub-)subcommand parser of the real CLI, aliases once."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += [sub, *subcommands(sub)]
    return found


def test_the_site_builds_strictly_and_its_reference_lists_every_command_option_and_key(site):
    keys = [key for key, _, _ in config_mod.iter_fields()]
    cli = sections((site / "reference" / "cli" / "index.html").read_text())
    parsers = subcommands(build_parser())
    assert len(parsers) >= 8
    for parser in parsers:
        anchor = "-".join(parser.prog.lower().split())
        assert anchor in cli, f"reference/cli.md has no section for `{parser.prog}`"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.dest in keys:  # config keys: named by their section, listed in config.md
                assert f'config/#{action.dest.split(".")[0]}"' in cli[anchor], f"`{parser.prog}`: section of {action.dest} not linked"
            else:
                for name in action.option_strings or [action.metavar or action.dest]:
                    assert name in cli[anchor], f"reference/cli.md: `{parser.prog}` misses {name}"
    config = (site / "reference" / "config" / "index.html").read_text()
    missing = [key for key in keys if f"<code>{key}</code>" not in config]
    assert not missing, f"reference/config.md misses {missing}"
    assert {f'id="{key.split(".")[0]}"' for key in keys} <= set(re.findall(r'id="\w+"', config))
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ("from_toml", "run", "resume", "compare_methods", "load_model", "predict", "export", "lora_base", "report", "RunResult"):
        assert re.search(rf'id="feddat\.[\w.]*\b{name}"', api), f"reference/api.md lacks {name}"
    assert not list(site.rglob("*.safetensors")), "recorded runs became part of the site"


DOC_COMMANDS = [(str(page.relative_to(DOCS)), command) for page in doc_pages() for command in feddat_commands(page.read_text())]


@pytest.mark.parametrize(("page", "command"), DOC_COMMANDS)
def test_every_feddat_command_in_the_docs_parses_and_its_settings_validate(page, command):
    check_command(command)


def test_the_docs_show_every_main_command():
    shown = {command.split()[1] for _, command in DOC_COMMANDS}
    assert {"run", "compare", "data", "pretrain", "flower", "predict", "export", "report"} <= shown


# The spec these docs replace lives outside the repository; so do other checkouts.
OUTSIDE = re.compile(r"\.\./shared|/work/shared|DESIGN\.md|\bDESIGN\b")
SCANNED = ("README.md", "Makefile", "pyproject.toml", "constraints.txt", "mkdocs.yml", "docs/", "src/", "tests/", "benchmarks/", "configs/", "tools/")
BINARY = (".png", ".safetensors", ".pt", ".gz", ".pyc")


def test_nothing_in_the_repository_refers_outside_it():
    git = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    if git.returncode:
        pytest.skip(f"not a git checkout, so no list of the repository's files: {git.stderr.strip()}")
    listed = git.stdout
    files = sorted({f for f in listed.splitlines() if f.startswith(SCANNED) and not f.endswith(BINARY) and f != "tests/test_docs.py"})
    assert "src/feddat/cli.py" in files
    found = [f"{f}:{n}: {line.strip()[:120]}" for f in files if (ROOT / f).is_file() for n, line in enumerate((ROOT / f).read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "refers outside the repository (cite docs/design.md instead):\n" + "\n".join(found)


def serve(folder: Path):
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def search(page, query: str) -> int:
    """Type `query` into Material's search box as a person would; the number of results shown.
    A query typed while the search worker still builds its index can go unanswered, so a person
    would type it again: so do we, a few times."""
    box = "input[data-md-component='search-query']"
    for _ in range(5):
        page.fill(box, "")
        page.type(box, query)
        try:
            page.wait_for_function("document.querySelectorAll('.md-search-result__item').length > 0", timeout=4_000)
        except Exception:  # playwright's TimeoutError
            continue
        return page.locator(".md-search-result__item").count()
    return 0


def test_the_built_site_works_in_a_real_browser_search_included(site, tmp_path):
    sync_playwright, executable = browser_or_skip()
    server = serve(site)
    home = f"http://127.0.0.1:{server.server_address[1]}/"
    errors, outside = [], []
    screenshot = tmp_path / "home.png"
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=executable, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900})
            try:
                page = context.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((home, "data:", "blob:")) else None)
                page.goto(home, wait_until="networkidle")
                assert "feddat" in page.title()
                page.screenshot(path=str(screenshot), full_page=False)
                results = search(page, "adapter")
                page.screenshot(path=str(tmp_path / "search.png"))
            finally:
                context.close()
    finally:
        server.shutdown()
    print(f"screenshot of the home page: {screenshot}")
    assert not errors, errors
    assert not outside, f"the site requests outside resources: {outside}"
    assert results > 0
