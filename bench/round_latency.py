"""The control plane's own latency per round, on the embedded default and on the server stack.

Latency here is the time from the last update of a round reaching the control plane to the
next round being available to agents: the quorum check, the hand-off through the broker,
the aggregation and the opening of the next round. Agent training time is not in it.

    python bench/round_latency.py                 # 20 rounds, 10 agents, both stacks
    python bench/round_latency.py --rounds 5 --sites 3 --stacks embedded
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACKS = {
    "embedded": [],
    "postgresql+redis": [
        "--database-url",
        "postgresql://postgres@127.0.0.1:5432/test",
        "--broker-url",
        "redis://127.0.0.1:6379/14",
    ],
}


def run(stack: str, rounds: int, sites: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            str(REPO / "deploy" / "run_local.py"),
            "--rounds",
            str(rounds),
            "--sites",
            str(sites),
            "--data-dir",
            f"{folder}/federation",
            *STACKS[stack],
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{stack}: the federation failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--stacks", nargs="+", choices=list(STACKS), default=list(STACKS))
    args = parser.parse_args()
    print(f"{args.rounds} rounds, {args.sites} agents, FedAvg on breast cancer")
    print(f"{'stack':20} {'median latency ms':>18} {'federated acc':>14} {'seconds':>8}")
    for stack in args.stacks:
        figures = run(stack, args.rounds, args.sites)
        print(
            f"{stack:20} {figures['round_latency_median_ms']:>18} {figures['federated_accuracy']:>14} "
            f"{figures['seconds']:>8}",
            flush=True,
        )


if __name__ == "__main__":
    main()
