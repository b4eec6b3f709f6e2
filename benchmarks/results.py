"""Every page under docs/results/, made again from the runs recorded there (trains nothing; seconds).

    make results        # = .venv/bin/python benchmarks/results.py

docs/results/index.md says what each results page is, the command that made it, and the commits
and machine of the runs behind it; docs/results/regime-study/index.md is the regime study's
summary (benchmarks/regime_report.py). The pages hold no time of writing: made again from the
same recorded runs they are the same bytes, which tests/test_regime_study.py checks against the
committed pages.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # regime_report, regime_study beside this file

import regime_report  # noqa: E402
import regime_study  # noqa: E402

RESULTS = regime_study.RECORDED.parent  # docs/results


def index_text(results: Path) -> str:
    """docs/results/index.md: one row per results page, with what made it and from which runs."""
    study = results / "regime-study"
    runs = sorted(p.parent for p in study.glob("*/runs/*/seed*/summary.json"))
    cells = [c for c in regime_study.PRIORITY if any(r.parents[2].name == c for r in runs)]
    commits, machines = regime_report.provenance(runs)
    lines = [
        "# Results",
        "",
        "Every page here is made from the runs recorded in this folder alone, by one command that",
        "trains nothing and takes seconds:",
        "",
        "```bash",
        regime_report.COMMAND,
        "```",
        "",
        "(`.venv/bin/python benchmarks/results.py`). The pages hold no time of writing, so the same",
        "recorded runs give the same bytes; `tests/test_regime_study.py` fails when a committed page",
        "is not what the command makes of the committed runs.",
        "",
        "| page | what it is | made by | from the recorded runs | trained by commit(s) | machine |",
        "|---|---|---|---|---|---|",
        f"| [Where FedDAT leads: the regime study](regime-study/index.md) | per cell (benchmark twin × regime), every method's final "
        f"mean score per seed, mean ± std, paired differences to FedAvg+Adapter and to the head alone, with n and p | `{regime_report.COMMAND}` | "
        f"{len(runs)} runs in `regime-study/<cell>/runs/<method>/seed<N>/` (cells {', '.join(cells) or 'none yet'}) | {', '.join(commits) or '—'} | {'; '.join(machines) or '—'} |",
        "",
        "The runs themselves are trained by `make study` (hours on a CPU; [Where FedDAT",
        "leads](../findings.md#where-feddat-leads) gives the commands), which records each finished run here.",
        "",
        "The other measured tables of [Findings](../findings.md) (the default run, the controls, the",
        "ablations, the lighter distillation, twice the rounds, how much data, minivl, and the r0",
        "column of the regime-study table) were measured before runs were kept in the repository.",
        "Each gives its command, machine and seeds; their runs are not recorded, so no",
        "page here makes them again.",
        "",
    ]
    return "\n".join(lines)


def pages(results: Path = RESULTS) -> dict[Path, str]:
    """Every results page under `results` -> its text, made from the recorded runs."""
    study = results / "regime-study"
    return {
        results / "index.md": index_text(results),
        study / "index.md": regime_report.summary_text(study, list(regime_study.PRIORITY)),
    }


def main() -> int:
    from feddat.runtime import write_text

    for path, text in pages().items():
        write_text(path, text)
        print(f"wrote {path.relative_to(regime_study.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
