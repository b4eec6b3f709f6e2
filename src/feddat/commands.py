"""The commands around a finished run: `feddat predict`, `feddat export`, `feddat report`.

Registered by cli.build_parser; each command's handler is set with `set_defaults(handler=...)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub) -> None:
    _predict_parser(sub)
    _export_parser(sub)
    _report_parser(sub)


def positive_int(text: str) -> int:
    """argparse type of a count that must be 1 or more (--top)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number; give a positive integer (1 or more)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", metavar="M", help="the run's method whose model to use (needed when the run trained several)")
    p.add_argument("--client", metavar="NAME", help="the client whose head (and client adapter) to use")
    # default None, not "global": on an export, a --view that is not the export's is refused
    p.add_argument("--view", choices=("global", "personal"), default=None, help="global: A_s + head (the deployed model); personal: FedDAT's A_s + A_c teacher or Ditto's personal adapter (default: global; an export holds one view)")
    p.add_argument("--state-dir", metavar="DIR", help="a Flower deployment: the client's SuperNode's state-dir (its --node-config state-dir, or a copy), where it kept the client's private state (default: the run directory's state/ or node-state/<client>/, and RUN_DIR.flower/ of `feddat flower local`)")


def _predict_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        allow_abbrev=False,
        help="answer a question about an image with a trained client model; print the top answers",
        description="Load the backbone of RUN_DIR's config.toml, the final shared module and one client's head (and, with --view personal, "
        "its client adapter), and print the most likely answers with their probabilities. PATH is a run directory or an export folder "
        "(feddat export). Example: feddat predict runs/domain-20261124-101500 --method feddat --client night --image cat.png --question 'what colour is the cat?'",
    )
    p.add_argument("path", metavar="RUN_DIR", help="a run directory, or a folder written by `feddat export` (which holds one model: --method, --client, --view, if given, must be its own)")
    _model_arguments(p)
    p.add_argument("--image", action="append", required=True, metavar="IMG", help="the image file (twice for a two-image task such as NLVR2)")
    p.add_argument("--question", required=True, metavar="TEXT", help="the question (or statement, for entailment and true/false tasks)")
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="answers to print, 1 or more (default 5)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs (default: auto)")
    p.set_defaults(handler=command_predict)


def command_predict(args: argparse.Namespace) -> int:
    from feddat import inference
    from feddat.runtime import check_device

    check_device(args.device, "--device")  # before the model loads
    predictor = inference.load(args.path, args.method, args.client, args.view, args.device, args.state_dir)
    example = args.image if predictor.images_per_example > 1 else args.image[0]
    if predictor.images_per_example == 1 and len(args.image) > 1:
        raise ValueError(f"client '{predictor.deployed.client['name']}' answers questions about one image; got {len(args.image)} --image")
    (answers,) = predictor.predict([example], [args.question], top=args.top)
    print(predictor.describe())
    print(f"question: {args.question}")
    width = max(len(a) for a, _ in answers)
    for rank, (answer, p) in enumerate(answers, 1):
        print(f"  {rank}. {answer:<{width}}  {p:.3f}")
    if predictor.decodes:  # an answer decoder also says its own answer, which may be off the list
        (said,) = predictor.generate([example], [args.question])
        print(f"generated: {said}")
    return 0


def _export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        allow_abbrev=False,
        help="write one client's trained model as a self-contained folder (peft's adapter format for LoRA methods)",
        description="Write the deployed model of one client to OUT: feddat_model.json, config.toml, head.safetensors, and the PEFT "
        "module: for LoRA methods peft's adapter_config.json + adapter_model.safetensors (peft.PeftModel.from_pretrained loads it "
        "onto the backbone's transformers encoder as feddat.lora_base(OUT) rebuilds it; for foundation not plain MiniLM), otherwise "
        "adapters.safetensors; a foundation export also carries its checkpoint. `feddat predict OUT` reads it. See docs/guide/using-a-model.md.",
    )
    p.add_argument("path", metavar="RUN_DIR")
    _model_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write: a new or empty folder, or an earlier export, which is replaced (any other folder is refused)")
    p.set_defaults(handler=command_export)


def command_export(args: argparse.Namespace) -> int:
    from feddat import inference

    if not args.client:
        raise ValueError("feddat export needs --client: a head belongs to one client")
    out = inference.export(args.path, args.method, args.client, args.out, args.view, args.state_dir)
    print(f"feddat: exported to {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        allow_abbrev=False,
        help="write one self-contained HTML page (report.html) for a run or a comparison",
        description="Write DIR/report.html: results and cost tables, score curves against rounds, compute and bytes, per-client bars, "
        "the per-category table, the configuration and the environment, with every picture embedded. DIR is a `feddat run` "
        "directory or a `feddat compare` folder.",
    )
    p.add_argument("path", metavar="RUN_DIR|COMPARE_DIR")
    p.add_argument("--out", metavar="FILE", help="where to write the page (default: DIR/report.html)")
    p.set_defaults(handler=command_report)


def command_report(args: argparse.Namespace) -> int:
    from feddat.html_report import write_report

    out = write_report(Path(args.path), Path(args.out) if args.out else None)
    print(f"feddat: report written to {out}")
    return 0
