"""The ``affectline`` command line: thin wrappers around library functions.

Subcommands: ``run``, ``watch``, ``validate``, ``bench``, ``train ...``, ``engines ...``.
Library code raises; only this module turns errors into messages and exit codes
(0 ok, 1 runtime failure, 2 bad input such as an invalid config).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from edge_agent.ranges import AT_LEAST_0, POSITIVE, flag_type

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig
from edge_agent.shutdown import restore_handlers, saved_handlers, stop_on_signals

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def _cmd_validate(args: argparse.Namespace) -> int:
    from edge_agent.config import ConfigError, load_config, missing_files

    try:
        cfg = load_config(args.config)
        if problems := missing_files(cfg):
            raise ConfigError(args.config, problems)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_BAD_INPUT
    backend = f"backend {cfg.inference.backend.type}{_model_of(cfg)}"
    print(f"{args.config}: ok ({len(cfg.cameras)} camera(s), {backend})")
    return EXIT_OK


def _model_of(cfg: AgentConfig) -> str:
    """``, model FILE`` for ONNX Runtime: the file ``auto`` picks on this CPU is what an operator checks."""
    if cfg.inference.backend.type != "onnxruntime":
        return ""
    from edge_agent.infer import resolve_model_path

    return f", model {resolve_model_path(cfg.inference.backend.model, log_choice=False).name}"


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """Import a subcommand's module only when it runs (keeps `validate` and `--help` light)."""

    def call(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), func)(args))

    return call


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a config file; print every problem")
    p.add_argument("config")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run the agent (default: embedded demo clips, model and broker)")
    p.add_argument("config", nargs="?", help="config file (default: the built-in demo config)")
    p.add_argument("--preview", help="write an annotated video here (overrides the config)")
    p.add_argument("--console", action="store_true", help="show a live per-person table")
    p.add_argument(
        "--max-seconds",
        type=flag_type(float, AT_LEAST_0),
        default=0,
        help="stop after this long (0 = until the sources end); exit 1 if a camera gave no frame by then",
    )
    # stop_on_signals: SIGINT/SIGTERM set the event main() passes on, even during the imports and
    # the model load; other commands get the default actions back.
    p.set_defaults(func=_lazy("edge_agent.app", "cli_run"), stop_on_signals=True)

    p = sub.add_parser("watch", help="subscribe to an agent and show a live per-person table")
    p.add_argument("config", nargs="?", help="config file naming the broker (default: localhost:1883)")
    p.add_argument("--camera", help="only this camera")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--seconds", type=flag_type(float, AT_LEAST_0), default=0, help="stop after this long (0 = forever)"
    )
    p.set_defaults(func=_lazy("edge_agent.watch", "cli_watch"))

    p = sub.add_parser("bench", help="benchmark the full pipeline on clips")
    p.add_argument("clips", nargs="*", help="video files (default: the demo clip)")
    p.add_argument(
        "--config",
        help="agent config whose detector/model/tracking settings to use; the bench publishes to its "
        "embedded broker as agent 'bench', a --soak to the config's broker as agent 'soak'",
    )
    p.add_argument(
        "--frames", type=flag_type(int, AT_LEAST_0), default=0, help="frames per clip (0 = whole clip)"
    )
    p.add_argument(
        "--realtime", action="store_true", help="feed frames at the clip's frame rate, as a live camera does"
    )
    p.add_argument(
        "--soak",
        type=flag_type(float, AT_LEAST_0),
        default=0,
        metavar="MINUTES",
        help="soak test on a looping clip",
    )
    p.add_argument(
        "--sample-s", type=flag_type(float, POSITIVE), default=10.0, help="soak: seconds between samples"
    )
    p.add_argument("--json", help="also write results here")
    p.set_defaults(func=_lazy("edge_agent.bench", "cli_bench"))

    for package in ("train", "engines"):
        try:
            cli = importlib.import_module(f"{package}.cli")
        except ImportError:
            continue
        cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # First thing: building the parser imports the train/engines CLIs (OpenCV, NumPy; ~0.5 s on a
    # small box), and `run` must not die from a SIGTERM that comes meanwhile.
    saved = saved_handlers()
    early_stop = stop_on_signals()
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # The embedded broker's state machine logs every transition at INFO.
        logging.getLogger("transitions").setLevel(logging.WARNING)
        if getattr(args, "stop_on_signals", False):
            args.stop_event = early_stop
        else:  # commands that never look at the event: their signals act as they always did
            restore_handlers(saved, redeliver=True)
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_FAIL
    finally:
        restore_handlers(saved)  # an in-process caller (a test) gets its handlers back


if __name__ == "__main__":
    sys.exit(main())
