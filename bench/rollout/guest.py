"""The lab inside the VM: `python -m bench.rollout.guest PLAN OUT_DIR`. PLAN is a JSON list of batches, each
a list of arm specs that run side by side, each in a node namespace of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_batch(batch: list[dict[str, object]], out: Path) -> None:
    running = []
    for index, item in enumerate(batch):
        node = f"n{index}"
        subprocess.run(["ip", "netns", "add", node], check=True)
        result = out / f"{item['name']}.json"
        log = (out / f"{item['name']}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.rollout.arm", node, json.dumps(item["spec"]), str(result)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        running.append((node, process, log, item["name"]))
    for node, process, log, name in running:
        code = process.wait()
        log.close()
        subprocess.run(["ip", "netns", "del", node], check=False)
        print(f"{time.strftime('%H:%M:%S')} {name}: exit {code}", flush=True)


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for batch in plan:
        run_batch(batch, out)


if __name__ == "__main__":
    main()
