"""`feddat report`: one self-contained report.html, checked in a real headless Chromium (Debian's,
driven by Playwright): no console errors, no request leaves the page, every image renders, and
the tables hold the numbers of results.md / table.md. A screenshot is kept in the test's folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_IMAGE, tiny_config
from feddat import config as config_mod
from feddat.cli import main
from feddat.compare import Workspace, parse_variants, run_compare
from feddat.engines.runner import run_experiment
from feddat.peft.model import AdaptedModel

CHROMIUM = "/usr/bin/chromium"
# Flags that work here as root, with nothing on the network to reach.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (it is in the test extra: pip install -e '.[test]')")
    executable = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if not executable:
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium with apt-get, which could not run here")
    return sync_playwright, executable


def open_page(html: Path, screenshot: Path, profile: Path) -> dict:
    """What a person would see: console errors, outside requests, images, tables (cell texts)."""
    sync_playwright, executable = browser_or_skip()
    seen: dict = {"errors": [], "requests": []}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=executable, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url) if not r.url.startswith(("data:", html.as_uri())) else None)
            page.goto(html.as_uri(), wait_until="load")
            seen["images"] = page.evaluate("[...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth, alt: i.alt}))")
            seen["tables"] = page.evaluate("[...document.querySelectorAll('table')].map(t => [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim())))")
            seen["headings"] = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.innerText)")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return seen


def markdown_rows(text: str) -> list[list[str]]:
    """Every row of every Markdown table in `text`, as cell texts (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def assert_page_is_sound(seen: dict, screenshot: Path, numbers_from: str, images: int) -> None:
    assert seen["errors"] == [] and seen["requests"] == []
    assert len(seen["images"]) == images and all(i["ok"] and i["width"] > 300 for i in seen["images"]), seen["images"]
    page_rows = [row for table in seen["tables"] for row in table]
    expected = markdown_rows(numbers_from)
    assert expected and [row for row in expected if row not in page_rows] == []
    assert seen["headings"] == ["Results", "Cost", "Plots", "Configuration", "Environment"]
    assert screenshot.stat().st_size > 20_000


def test_run_report_in_a_real_browser(tiny_vilt_dir, tmp_path, capsys):
    cfg = config_mod.load(None, {
        "backbone.name": "vilt", "backbone.path": tiny_vilt_dir, "backbone.image_size": TINY_IMAGE, "backbone.max_text_len": 12,
        "adapter.reduction_factor": 4, "data.benchmark": "function", "data.train_per_client": 8, "data.test_per_client": 6,
        "data.cache_dir": str(tmp_path / "cache"), "federation.rounds": 2, "federation.eval_every": 1, "train.batch_size": 8,
        "run.out_dir": str(tmp_path), "run.name": "run", "run.threads": 1,
    })  # fmt: skip
    run_dir = run_experiment(cfg, log=lambda s: None)
    assert main(["report", str(run_dir)]) == 0
    html = run_dir / "report.html"
    assert f"report written to {html}" in capsys.readouterr().out
    screenshot = tmp_path / "report.png"
    seen = open_page(html, screenshot, tmp_path / "profile")
    # curves against rounds, compute and bytes; per-client bars, global and personal (FedDAT)
    assert_page_is_sound(seen, screenshot, (run_dir / "results.md").read_text(), images=5)
    page_rows = [row for table in seen["tables"] for row in table]
    environment = json.loads((run_dir / "summary.json").read_text())["environment"]
    assert ["packages.torch", environment["packages"]["torch"]] in page_rows and ["cpu", environment["cpu"]] in page_rows
    summary = {s["method"]: s for s in json.loads((run_dir / "summary.json").read_text())["methods"]}
    assert ["fedavg", f"{summary['fedavg']['wall_s']:.1f}", str(summary["fedavg"]["local_steps"])] == next(row[:3] for row in page_rows if row[0] == "fedavg" and len(row) == 10)  # the cost table
    print(f"screenshot: {screenshot}")


def test_comparison_report_evaluated_once_draws_bars_not_one_point_curves(tiny_backbone, tiny_clients, tmp_path):
    cfg = tiny_config(**{"federation.rounds": 1})
    cfg.backbone.path = "tiny-vilt"
    work = Workspace(cfg, log=lambda s: None)
    work.parts = {"device": torch.device("cpu"), "clients": tiny_clients[:2], "model": AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)}
    out = run_compare(cfg, parse_variants(["feddat", "fedavg"]), [0], tmp_path / "cmp", log=lambda s: None, workspace=work)
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["clients_global.png", "clients_personal.png", "scores_once.png"]  # no 4.8-5.2 "curve"
    html = tmp_path / "cmp" / "report.html"
    assert main(["report", str(out)]) == 0
    screenshot = tmp_path / "compare.png"
    seen = open_page(html, screenshot, tmp_path / "profile")
    table = (out / "table.md").read_text().split("\n## Plots")[0]
    assert_page_is_sound(seen, screenshot, table, images=3)
    assert seen["images"][0]["alt"].startswith("Every run was evaluated once")
    page_rows = [row for table in seen["tables"] for row in table]
    assert ["feddat", "feddat", "—"] in page_rows and ["fedavg", "fedavg", "—"] in page_rows  # the variants and their overrides


def test_report_on_finished_runs_compared_with_from(tmp_path, capsys):
    """`feddat compare --from` writes its own compare.json: `feddat report` reads that folder back."""
    from test_compare import fake_run

    rounds = [{1: {"x": 0.1, "y": 0.2}, 2: {"x": 0.3, "y": 0.4}}, {1: {"x": 0.2, "y": 0.2}, 2: {"x": 0.5, "y": 0.3}}]
    for seed, scores in enumerate(rounds):
        fake_run(tmp_path / f"feddat{seed}", "feddat", seed, scores, personal=True)
        fake_run(tmp_path / f"fedavg{seed}", "fedavg", seed, {r: {c: v / 2 for c, v in s.items()} for r, s in scores.items()})
    dirs = [str(tmp_path / f"{m}{s}") for m in ("feddat", "fedavg") for s in (0, 1)]
    out = tmp_path / "from"
    assert main(["compare", "--from", *dirs, "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    html = out / "report.html"
    assert f"report written to {html}" in capsys.readouterr().out
    screenshot = tmp_path / "from.png"
    seen = open_page(html, screenshot, tmp_path / "profile")
    # curves against rounds, compute and bytes; per-client bars, global and personal
    assert_page_is_sound(seen, screenshot, (out / "table.md").read_text().split("\n## Plots")[0], images=5)
    page_rows = [row for table in seen["tables"] for row in table]
    assert ["feddat", "1", str((tmp_path / "feddat1").resolve())] in page_rows  # each run and where it is
    assert ["fedavg", "fedavg", "—"] in page_rows  # the labels and their overrides
