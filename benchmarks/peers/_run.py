"""Run one peer in this process (the ``.venv-peers`` interpreter) and write its JSON.

``.venv-peers/bin/python -m benchmarks.peers._run temporal --out r.json --workdir /tmp/x``
``__main__`` calls this once per peer and round, each in a fresh process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

from . import _common

MODULES = {
    "temporal": "benchmarks.peers.temporal",
    "dbos": "benchmarks.peers.dbos_peer",
    "restate": "benchmarks.peers.restate_peer",
    "celery": "benchmarks.peers.celery_peer",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers._run")
    p.add_argument("peer", choices=sorted(MODULES))
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("-n", type=int, required=True, help="W1 load instances")
    p.add_argument("--w2-n", type=int, required=True, help="W2 waiting instances")
    p.add_argument("--iterations", type=int, required=True, help="one-at-a-time rounds")
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args(argv)
    _common.install_signal_handlers()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, object] = {
        "peer": args.peer,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    code = 0
    try:
        module = importlib.import_module(MODULES[args.peer])
        doc.update(
            module.run(
                workdir,
                n=args.n,
                w2_n=args.w2_n,
                iterations=args.iterations,
                warmup=args.warmup,
            )
        )
    except KeyboardInterrupt:
        doc["error"] = "interrupted"
        code = 130
    except Exception as exc:
        traceback.print_exc()
        doc["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        _common.stop_all()
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    return code


if __name__ == "__main__":
    sys.exit(main())
