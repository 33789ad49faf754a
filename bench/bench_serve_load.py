"""Load check of `tta-run RECIPE serve`: many concurrent API clients on the quickstart run.

    .venv/bin/python bench/bench_serve_load.py [--run runs/quickstart] [--clients 20] [--rounds 10]

Starts the server as its own process (a free loopback port, outputs into a temporary folder),
then, round after round, ``--clients`` threads post to /api/generate at the same moment and
wait for their answers: every fifth request breaks a limit (too many steps), the rest ask for
a generation. Printed per round: how many were generated (200), refused as busy (503, the
queue being full), refused as bad (400), lost (no answer: a connection error or a timeout,
or an answer of another kind), the slowest answer, and the server's resident memory after
the round. Holds when nothing is lost, every "generated" answer has its file and manifest
line on disk, and the server's memory after the last round is within 10% of that after the
first. Exit 1 otherwise. Needs the run `make demo` trains (skipped, saying so, without it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: dict, timeout: float) -> tuple[int | str, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return f"{e.code} (not JSON)", {}
    except Exception as exc:  # no answer
        return f"lost ({type(exc).__name__}: {exc})", {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(REPO / "recipes" / "quickstart.yaml"))
    p.add_argument("--run", default=str(REPO / "runs" / "quickstart"))
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a client waits for its answer")
    args = p.parse_args()
    if not (Path(args.run) / "ldm" / "checkpoints").is_dir():
        print(f"bench_serve_load: skipped: no trained run at {args.run} (make demo trains it)")
        return 0

    out = Path(tempfile.mkdtemp(prefix="tta-serve-load-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "tta_core.cli", args.recipe, "serve", "--run-dir", args.run,
                               "--port", "0", "--out", str(out / "studio"), "--max-queue", str(args.max_queue)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    line = server.stdout.readline()
    if " at http://" not in line:
        server.kill()
        print(f"bench_serve_load: the server did not start: {line}{server.stderr.read()}")
        return 1
    base = line.rsplit(" at ", 1)[1].strip().rstrip("/")
    print(f"server up in {time.perf_counter() - started:.1f} s at {base}, {rss_mb(server.pid):.0f} MB resident; "
          f"{args.clients} clients a round, {args.steps} steps, queue {args.max_queue}")
    print(f"{'round':>5} {'generated':>9} {'busy':>5} {'bad':>4} {'lost':>5} {'slowest s':>10} {'server MB':>10}")
    generated_ids, lost, memory = [], 0, []
    try:
        for r in range(args.rounds):
            answers: dict[int, tuple] = {}
            gate = threading.Barrier(args.clients)

            def client(k: int) -> None:
                body = {"prompt": f"a rising chirp {r}-{k}", "steps": args.steps, "seed": k}
                if k % 5 == 4:
                    body["steps"] = 10_000  # over the limit: a clear refusal, not a lost request
                gate.wait()
                t0 = time.perf_counter()
                status, answer = post(base + "/api/generate", body, args.timeout)
                answers[k] = (status, answer, time.perf_counter() - t0)

            threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            counts = {"generated": 0, "busy": 0, "bad": 0, "lost": 0}
            for k in range(args.clients):
                status, answer, _ = answers.get(k, ("lost (no thread result)", {}, 0))
                if status == 200 and answer.get("status") == "done":
                    counts["generated"] += 1
                    generated_ids.append(answer["id"])
                elif status == 503 and answer.get("status") == "busy" and "busy" in answer.get("error", ""):
                    counts["busy"] += 1
                elif status == 400 and "steps" in answer.get("error", "") and k % 5 == 4:
                    counts["bad"] += 1
                else:
                    counts["lost"] += 1
                    print(f"  client {k}: {status} {answer}")
            lost += counts["lost"]
            memory.append(rss_mb(server.pid))
            slowest = max(a[2] for a in answers.values())
            print(f"{r + 1:>5} {counts['generated']:>9} {counts['busy']:>5} {counts['bad']:>4} {counts['lost']:>5} "
                  f"{slowest:>10.1f} {memory[-1]:>10.0f}")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()

    rows = [json.loads(x) for x in (out / "studio" / "manifest.jsonl").read_text().splitlines()] \
        if (out / "studio" / "manifest.jsonl").is_file() else []
    on_disk = {row["file"].rsplit(".", 1)[0] for row in rows if (out / "studio" / row["file"]).is_file()}
    missing = [i for i in generated_ids if i not in on_disk]
    growth = (memory[-1] - memory[0]) / memory[0] if memory else float("nan")
    print(f"answered {args.clients * args.rounds - lost} of {args.clients * args.rounds} requests; "
          f"{len(generated_ids)} generated, {len(rows)} manifest lines, {len(missing)} without their file")
    print(f"server memory: {memory[0]:.0f} MB after round 1, {memory[-1]:.0f} MB after round {len(memory)} "
          f"({growth:+.1%})")
    ok = lost == 0 and not missing and len(rows) == len(generated_ids) and growth <= 0.10
    print(f"bench_serve_load: {'holds' if ok else 'FAILED'} (outputs in {out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
