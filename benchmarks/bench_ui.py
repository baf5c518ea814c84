"""Throughput of the web UI against the CLI, and the UI server's peak memory (issue 13).

A `pangu-draw ui` server on the bundled models (a separate process, warmed by one request)
gets 8 requests at once from 8 clients (one 64x64 image each, seeds 300..307, 25 Euler
steps, structure + texture); their wall time, until the last image is saved, is set
against one `pangu-draw generate "red apple" --num-images 8 --seed 300` process doing the
same 8 generations as one batch (its start-up and model loading included, as a CLI user
pays them). Runs alternate, so machine noise hits both; the ratio of medians is reported
for each server concurrency. Peak memory: the server's VmHWM after all runs.

    .venv/bin/python benchmarks/bench_ui.py        # writes benchmarks/results/ui.json
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradio_client import Client

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent
ROUNDS = 3
SEEDS = list(range(300, 308))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(seed: int) -> list:
    return ["red apple", "", "structure", "texture", 500, 25, 7.0, "euler", "fixed", seed]


def start(concurrency: int, outputs: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(BIN / "pangu-draw"), "ui", "--port", str(port), "--outputs", str(outputs)]
    server = subprocess.Popen(
        [*command, "--concurrency", str(concurrency)], stdout=subprocess.PIPE, text=True
    )
    line = server.stdout.readline()  # printed once the server listens
    if "http://" not in line:
        server.kill()
        raise SystemExit(f"the UI did not start: {line!r}")
    return server, f"http://127.0.0.1:{port}/"


def ui_round(url: str) -> float:
    clients = [Client(url, verbose=False) for _ in SEEDS]
    tick = time.perf_counter()
    jobs = [
        c.submit(*request(s), 64, 64, 1, False, api_name="/generate")
        for c, s in zip(clients, SEEDS)
    ]
    for job in jobs:
        job.result(timeout=900)
    return time.perf_counter() - tick


def cli_round(folder: Path) -> float:
    out = folder / "cli.png"
    command = [str(BIN / "pangu-draw"), "generate", "red apple", "--num-images", "8"]
    tick = time.perf_counter()
    subprocess.run([*command, "--seed", "300", "-o", str(out)], check=True, capture_output=True)
    return time.perf_counter() - tick


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    report = {"rounds": ROUNDS, "images": len(SEEDS), "steps": 25, "size": 64, "runs": []}
    for concurrency in (1, 2, 4):
        server, url = start(concurrency, folder / f"outputs-{concurrency}")
        try:
            Client(url, verbose=False).predict(
                *request(1), 64, 64, 1, False, api_name="/generate"
            )  # loads the models
            ui, cli = [], []
            for _ in range(ROUNDS):
                ui.append(ui_round(url))
                cli.append(cli_round(folder))
            peak = peak_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
        run = {
            "concurrency": concurrency,
            "ui_s": ui,
            "cli_s": cli,
            "ratio": statistics.median(ui) / statistics.median(cli),
            "server_peak_mib": peak,
        }
        report["runs"].append(run)
        print(json.dumps(run))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ui.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
