"""Does the console's runs table stay fast with 10,000 runs? Fill a database with real durable runs, then time the API.

    python bench/console_scale.py                       # SQLite, 10,000 runs
    python bench/console_scale.py --runs 2000 --database-url postgresql://postgres@127.0.0.1:5432/dbos_pai_console

Times (median of 5 requests each, over HTTP to the console served by uvicorn on 127.0.0.1): the first page, a page
deep in the list (reached by following `next_cursor`), a status filter, an agent filter, a text search, and one run's
detail. Results go to bench/results/console_scale.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import uvicorn
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from dbos_pydantic_ai import DBOSAgent, dbos_config
from dbos_pydantic_ai.console.app import create_app

RESULTS = Path(__file__).parent / "results" / "console_scale.json"

agent = DBOSAgent(Agent(TestModel(custom_output_text="ok"), name="scale"))


def fill(runs: int) -> None:
    start = time.perf_counter()
    for index in range(runs):
        with SetWorkflowID(f"scale-{index:05d}-{uuid.uuid4().hex[:6]}"):
            agent.run_sync(f"question {index}")
    print(f"filled {runs} runs in {time.perf_counter() - start:.0f} s")


def serve(database_url: str) -> tuple[str, uvicorn.Server]:
    server = uvicorn.Server(uvicorn.Config(create_app(database_url), host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


def get(url: str) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = json.loads(response.read())
    return (time.perf_counter() - start) * 1000, body


def median_ms(url: str, repeats: int = 5) -> float:
    return round(statistics.median(get(url)[0] for _ in range(repeats)), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--database-url", default=f"sqlite:////tmp/console-scale-{uuid.uuid4().hex[:8]}.sqlite")
    parser.add_argument("--pages", type=int, default=100, help="how deep to follow next_cursor")
    args = parser.parse_args()

    DBOS(
        config=dbos_config(
            "console_scale", database_url=args.database_url, application_version="s", log_level="WARNING"
        )
    )
    DBOS.launch()
    fill(args.runs)
    base, server = serve(args.database_url)
    api = f"{base}/api/runs"

    get(f"{api}?limit=50")  # warm up
    first_page = median_ms(f"{api}?limit=50")
    cursor, walk = None, []
    for _ in range(args.pages):
        elapsed, body = get(f"{api}?limit=50" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else ""))
        walk.append(elapsed)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    deep_page = median_ms(f"{api}?limit=50&cursor={urllib.parse.quote(cursor)}") if cursor else None
    some_run = get(f"{api}?limit=1")[1]["runs"][0]["workflow_id"]
    results = {
        "database": args.database_url.split(":")[0],
        "runs": args.runs,
        "first_page_ms": first_page,
        f"page_{len(walk) + 1}_ms": deep_page,
        "walk_pages_median_ms": round(statistics.median(walk), 1),
        "status_filter_ms": median_ms(f"{api}?limit=50&status=SUCCESS"),
        "agent_filter_ms": median_ms(f"{api}?limit=50&agent=scale"),
        "text_search_ms": median_ms(f"{api}?limit=50&q=scale-09"),
        "run_detail_ms": median_ms(f"{base}/api/runs/{some_run}"),
    }
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing[results["database"]] = results
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n")
    server.should_exit = True
    DBOS.destroy()


if __name__ == "__main__":
    main()
