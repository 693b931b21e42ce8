"""Write the averaged (EMA) weights that a fine-tuning ``last.pt`` carries for resuming as a checkpoint.

Usage: ``python scripts/ema_weights.py runs/RUN/last.pt runs/RUN/last_ema.pt``. A run with
``--select last`` (the default) saves exactly these weights as ``best.pt`` after its final epoch; this
recovers them from runs made with another selection rule.
"""

from __future__ import annotations

import sys

from train.checkpoint import load_checkpoint, load_model, save_checkpoint


def main(src: str, dst: str) -> int:
    blob = load_checkpoint(src)
    ema = blob["extra"].get("heads", {}).get("ema")
    if ema is None:
        print(f"{src}: no EMA state (the run had ema_decay 0)", file=sys.stderr)
        return 2
    model, meta = load_model(src)
    model.load_state_dict({k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")})
    extra = {"state": blob["extra"]["state"], "from": f"{src} (EMA weights)"}
    save_checkpoint(dst, model, None, blob["epoch"], blob["config"], meta, extra)
    print(f"{dst}: EMA weights of {src} after {int(ema['updates'])} updates")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.splitlines()[2], file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
