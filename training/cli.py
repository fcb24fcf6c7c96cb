"""`enrich train | cv | cv-decode | augment | evaluate | export`: torch etc. imported in the handlers only."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from training.config import add_config_arguments

    train = subparsers.add_parser("train", help="fine-tune the attribute model, write a model directory")
    add_config_arguments(train)
    train.set_defaults(func=_train)

    augment = subparsers.add_parser("augment", help="write augmented copies of OA-Mine-format offers")
    augment.add_argument("input", type=Path, help="OA-Mine JSON-lines file")
    augment.add_argument("output", type=Path, help="output JSON-lines file")
    augment.add_argument("--copies", type=int, default=1, help="augmented variants per offer")
    augment.add_argument("--seed", type=int, default=0, help="random seed")
    augment.add_argument("--with-originals", action="store_true", help="also write the input offers")
    augment.set_defaults(func=_augment)

    evaluate = subparsers.add_parser("evaluate", help="score a model directory on an OA-Mine-format file")
    evaluate.add_argument("model_dir", type=Path, help="models/<name>/<version>")
    evaluate.add_argument("data", type=Path, help="OA-Mine JSON-lines file")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--charts", type=Path, help="folder for PNG charts (default: <model_dir>/eval)")
    evaluate.add_argument("--decode-method", default="viterbi", choices=("viterbi", "argmax"))
    evaluate.add_argument(
        "--no-restrict", action="store_true", help="keep attributes not valid for the predicted category"
    )
    evaluate.add_argument(
        "--dev-split",
        action="store_true",
        help="score only the dev side of the split recorded in the model's metrics.json",
    )
    evaluate.add_argument(
        "--compare-decoding", action="store_true", help="also report micro-F1 of every decoding variant"
    )
    evaluate.set_defaults(func=_evaluate)

    cv = subparsers.add_parser(
        "cv", help="k-fold cross-validation of the training config: both metrics, mean ± sd over folds"
    )
    add_config_arguments(cv)
    cv.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    cv.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment (default: 0)")
    cv.add_argument("--max-epochs", type=int, help="maximum epochs per fold (same as --epochs)")
    cv.add_argument(
        "--teacher-config",
        type=Path,
        help="JSON training options of a teacher trained per fold (on that fold's training side) and "
        "distilled into the configured student; its own fold metrics are reported too",
    )
    cv.add_argument("--out", type=Path, help="report folder (default: <output_root>/cv/<name>-<UTC time>)")
    cv.set_defaults(func=_cv)

    decode_cv = subparsers.add_parser(
        "cv-decode",
        help="score decode-time levers (known values, per-attribute thresholds, several values) on a "
        "cv's saved outputs, tuned on the other folds; no retraining",
    )
    decode_cv.add_argument("cv_dir", type=Path, help="the --out folder of a finished `enrich cv`")
    decode_cv.add_argument("--teacher", action="store_true", help="the CV's teachers instead of its models")
    decode_cv.add_argument(
        "--data-path", type=Path, help="the CV's training file (default: from its cv.json)"
    )
    decode_cv.add_argument(
        "--partial", action="store_true", help="a CV still running: score the folds finished so far"
    )
    decode_cv.add_argument("--folds", type=int, default=5, help="with --partial: the CV's --folds")
    decode_cv.add_argument("--fold-seed", type=int, default=0, help="with --partial: the CV's --fold-seed")
    decode_cv.set_defaults(func=_decode_cv)

    export = subparsers.add_parser("export", help="ONNX export + parity check + Triton CPU repository")
    export.add_argument("model_dir", type=Path, help="models/<name>/<version>")
    export.add_argument("--triton-repo", type=Path, help="CPU model repository (default: triton_repo/cpu)")
    export.add_argument("--no-triton", action="store_true", help="only write model.onnx")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    export.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training.config import config_from_args
    from training.train import train

    model_dir = train(config_from_args(args))
    metrics = json.loads((model_dir / "metrics.json").read_text())
    print(f"model directory: {model_dir}")
    extra = metrics["data"]["extra"]
    if extra["files"]:
        print(
            f"extra data: {extra['added']} of {extra['offers']} offers from {extra['files']} file(s) added to"
            f" the training split ({extra['held_out_titles']} left out: title in the dev split)"
        )
    alignment = metrics["data"]["alignment"]
    print(
        f"training values placed as spans: {alignment['placed']} of {alignment['values']} "
        f"(skipped {alignment['not_in_title']} not in the title, {alignment['overlapping']} under a longer "
        f"value; {alignment['case_insensitive']} placed case-insensitively)"
    )
    print(
        f"dev micro-F1 {metrics['dev']['micro']['f1']:.4f} ({'with' if metrics['augmented'] else 'without'} "
        f"augmentation), category accuracy {metrics['dev']['category_accuracy']:.3f}"
    )
    if "without_augmentation" in metrics:
        print(
            f"dev micro-F1 without augmentation (same run): "
            f"{metrics['without_augmentation']['dev']['micro']['f1']:.4f}"
        )
    return 0


def _cv(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training.config import TrainConfig, config_from_args
    from training.cv import run_cv

    config = config_from_args(args)
    teacher = None
    if args.teacher_config is not None:
        teacher = TrainConfig.from_json(args.teacher_config).replace(progress=config.progress)
    if args.max_epochs is not None:
        config = config.replace(epochs=args.max_epochs)
        teacher = teacher.replace(epochs=args.max_epochs) if teacher else None
    out_dir = run_cv(config, args.folds, args.out, args.fold_seed, teacher_config=teacher)
    print((out_dir / "cv.md").read_text())
    print(f"written: {out_dir / 'cv.json'}, {out_dir / 'cv.md'}")
    return 0


def _decode_cv(args: argparse.Namespace) -> int:
    from training.decode_cv import MODEL_ALONE, format_markdown, load_held_out, run_decode_cv

    finished = (args.cv_dir / "cv.json").is_file()
    summary = json.loads((args.cv_dir / "cv.json").read_text()) if finished else {}
    if not finished and not (args.partial and args.data_path):
        raise SystemExit(
            f"{args.cv_dir}: no cv.json (not finished); --partial --data-path FILE scores its folds"
        )
    data_path = args.data_path or summary["config"]["data_path"]
    folds, fold_seed = summary.get("folds", args.folds), summary.get("fold_seed", args.fold_seed)
    held_out = load_held_out(
        args.cv_dir, data_path, folds, fold_seed, teacher=args.teacher, partial=args.partial
    )
    if len(held_out) < 2:
        raise SystemExit(f"{args.cv_dir}: {len(held_out)} fold(s) with saved outputs; tuning needs 2")
    report = run_decode_cv(held_out)
    recorded = []
    for fold in held_out:
        metrics = json.loads((args.cv_dir / f"fold-{fold.fold}.json").read_text())["metrics"]
        recorded.append((metrics["teacher"] if args.teacher else metrics)["micro"]["f1"])
    replayed = report[MODEL_ALONE]["strict_micro_f1"]["values"]
    if any(abs(a - b) > 1e-6 for a, b in zip(recorded, replayed, strict=True)):
        raise SystemExit(
            f"the saved outputs decode to {replayed}, the CV recorded {recorded}: not the same run"
        )
    stem = "cv-decode.teacher" if args.teacher else "cv-decode"
    markdown = format_markdown(report, len(held_out))
    (args.cv_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.cv_dir / f"{stem}.md").write_text(markdown)
    print(markdown)
    print(f"written: {args.cv_dir / f'{stem}.json'}, {args.cv_dir / f'{stem}.md'}")
    return 0


def _augment(args: argparse.Namespace) -> int:
    from training.augment import augment_offers
    from training.data import load_offers, write_offers

    offers = load_offers(args.input)
    augmented = augment_offers(offers, args.copies, seed=args.seed)
    write_offers(args.output, [*offers, *augmented] if args.with_originals else augmented)
    print(f"wrote {len(augmented) + (len(offers) if args.with_originals else 0)} offers to {args.output}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_model_dir, print_report, write_charts

    metrics = evaluate_model_dir(
        args.model_dir,
        args.data,
        decode_method=args.decode_method,
        restrict_to_category=not args.no_restrict,
        dev_split=args.dev_split,
        compare_decoding=args.compare_decoding,
    )
    charts = write_charts(metrics, args.charts or args.model_dir / "eval")
    metrics["charts"] = [str(path) for path in charts]
    print_report(metrics, args.json)
    if not args.json:
        print("charts: " + ", ".join(metrics["charts"]))
    return 0


def _export(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training.export import DEFAULT_TRITON_CPU_REPO, export_model

    cpu_repo = None if args.no_triton else (args.triton_repo or DEFAULT_TRITON_CPU_REPO)
    report = export_model(args.model_dir, cpu_repo=cpu_repo, opset=args.opset)
    print(f"ONNX parity: max absolute difference torch vs ONNX Runtime = {report['parity_max_abs_diff']:.3g}")
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0
