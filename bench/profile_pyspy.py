"""Sample durable runs with py-spy and say whose code the CPU time is spent in.

For each variant (the plain agent, ours, the competitor's `DBOSAgent`, the bare DBOS workflow) a child process warms
up, then runs N=10 runs back to back while `py-spy` samples every thread of it. Each busy sample
(threads waiting on a lock, a queue or `epoll` are dropped) is put in one bucket:

- integration code: frames of `dbos_pydantic_ai` (ours) or `pydantic_ai.durable_exec` (the competitor's)
- agent framework: pydantic-ai, pydantic and what they call (the plain agent run)
- DBOS on the event loop: the engine's step and workflow machinery between the hand-offs
- event loop: asyncio scheduling, including waking up after each hand-off to a worker thread
- DBOS worker threads, database: SQLAlchemy and the driver, run by DBOS with `asyncio.to_thread`
- DBOS worker threads, other: serialization and bookkeeping around those transactions
- DBOS background threads: pollers for queues, notifications, schedules

The innermost frame that belongs to one of these decides, so a `copy.copy` called by pydantic-ai is
the agent framework's. The shares go to `results/pyspy-<database>.json`, a flame graph of our run to
`results/pyspy-ours-<database>.svg`, and the sampled stacks to `$TMPDIR/pyspy-<variant>-<database>.txt`
(collapsed format, which speedscope and flamegraph.pl read).

    python bench/profile_pyspy.py [--database-url URL] [--seconds 20]

py-spy needs permission to read another process's memory (root, or ptrace allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"
VARIANTS = {
    "plain agent": "run_plain",
    "ours": "run_ours",
    "competitor DBOSAgent": "run_theirs",
    "bare DBOS (10 steps)": "run_bare",
}
N = 10

# A sample whose innermost frame is one of these is a thread waiting, not working.
_WAITING = (
    "_worker (concurrent/futures/thread.py",  # an idle executor thread
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
    "EpollSelector.select (selectors.py",  # the event loop with nothing to do
    "_notification_listener_polling (dbos/_sys_db.py",  # its time.sleep
)
_AGENT_FRAMEWORK = ("pydantic_ai/", "pydantic/", "pydantic_graph/", "pydantic_core/", "anyio/", "genai_prices/")
_FRAME_FILE = re.compile(r"\(([^:)]*)")
BUCKETS = [
    "integration code",
    "agent framework",
    "DBOS on the event loop",
    "event loop",
    "other, on the event loop",
    "DBOS worker threads, database",
    "DBOS worker threads, other",
    "DBOS background threads",
]


def _loop_bucket(files: list[str]) -> str:
    for file in reversed(files):
        if file.startswith(("dbos_pydantic_ai/", "pydantic_ai/durable_exec/")) or "/dbos_pydantic_ai/" in file:
            return "integration code"
        if file.startswith(_AGENT_FRAMEWORK):
            return "agent framework"
        if file.startswith(("dbos/", "sqlalchemy/")):
            return "DBOS on the event loop"
        if file.startswith("asyncio/"):
            return "event loop"
    return "other, on the event loop"


def classify(collapsed: Path) -> Counter[str]:
    """Busy samples per bucket, from py-spy's collapsed ("raw") output."""
    buckets: Counter[str] = Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(_WAITING):
            continue
        files = [match.group(1) if (match := _FRAME_FILE.search(frame)) else "" for frame in frames]
        if any(file.startswith("concurrent/futures/thread.py") for file in files):
            database = any(file.startswith(("sqlalchemy/", "psycopg")) for file in files)
            bucket = "DBOS worker threads, database" if database else "DBOS worker threads, other"
        elif frames[0].startswith("Thread._bootstrap"):
            # anyio's worker threads run a sync model function or tool for pydantic-ai; the rest are DBOS's.
            anyio = any(file.startswith("anyio/") for file in files)
            bucket = "agent framework" if anyio else "DBOS background threads"
        else:  # the event loop thread (a stack py-spy read only in part lacks its root frames)
            bucket = _loop_bucket(files)
        buckets[bucket] += int(count)
    return buckets


# --- The sampled process -------------------------------------------------------------------------


async def _child(variant: str, database_url: str, seconds: float) -> None:
    from dbos import DBOS, SetWorkflowID

    sys.path.insert(0, str(Path(__file__).parent))
    import run as workload
    from dbos_pydantic_ai import dbos_config

    DBOS(config=dbos_config("pyspy", database_url=database_url, application_version="p", log_level="WARNING"))
    DBOS.launch()
    run = getattr(workload, variant)
    for _ in range(20):
        await run(N)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        with SetWorkflowID(uuid.uuid4().hex):
            await run(N)
        runs += 1
    print(f"runs {runs}", flush=True)
    DBOS.destroy()


def _sample(name: str, variant: str, database_url: str, seconds: int, rate: int, svg: bool) -> Counter[str]:
    slug = f"{name.split()[0]}-{database_url.split(':')[0]}"  # e.g. ours-sqlite
    raw = Path(tempfile.gettempdir()) / f"pyspy-{slug}.txt"
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", variant, "--database-url", database_url, "--seconds", str(seconds + 5)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready", "the profiled process did not start"
    spy = ["py-spy", "record", "--pid", str(child.pid), "--duration", str(seconds), "--rate", str(rate)]
    subprocess.run([*spy, "--format", "raw", "--output", str(raw)], check=True, capture_output=True)
    if svg:
        subprocess.run([*spy, "--output", str(RESULTS_DIR / f"pyspy-{slug}.svg")], check=True, capture_output=True)
    child.wait()
    return classify(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file per variant")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.child, args.database_url, args.seconds))
        return

    RESULTS_DIR.mkdir(exist_ok=True)
    shares: dict[str, dict[str, float]] = {}
    for name, variant in VARIANTS.items():
        url = args.database_url or f"sqlite:////tmp/pyspy-{uuid.uuid4().hex[:8]}.sqlite"
        buckets = _sample(name, variant, url, args.seconds, args.rate, svg=name == "ours")
        total = sum(buckets.values())
        shares[name] = {bucket: round(100 * buckets[bucket] / total, 1) for bucket in BUCKETS}
    database = (args.database_url or "sqlite").split(":")[0]
    print(f"Share of busy samples, N={N} runs back to back, {database}, {args.seconds} s each")
    print(f"{'':34s}" + "".join(f"{name:>24s}" for name in shares))
    for bucket in BUCKETS:
        print(f"{bucket:34s}" + "".join(f"{shares[name][bucket]:23.1f}%" for name in shares))
    output = RESULTS_DIR / f"pyspy-{database}.json"
    output.write_text(json.dumps({"n": N, "seconds": args.seconds, "shares_percent": shares}, indent=2) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
