"""`privfedtalk train` for launchers that need a module (torchrun, accelerate launch).

torchrun --nproc_per_node P -m privfedtalk.federated.launch CONFIG [key=value ...]
torchrun --nproc_per_node P -m privfedtalk.federated.launch --resume RUN_DIR
"""

from __future__ import annotations

import argparse
import logging
import sys

from privfedtalk.config import load_config
from privfedtalk.errors import PrivFedTalkError
from privfedtalk.federated.simulation import train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m privfedtalk.federated.launch")
    parser.add_argument("config", nargs="?")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--resume", help="continue the run in this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.resume:
            train(resume=args.resume)
        else:
            train(load_config(args.config, args.overrides))
    except PrivFedTalkError as err:
        print(f"privfedtalk: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
