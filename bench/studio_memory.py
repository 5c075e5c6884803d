"""Memory of the whole studio: web process + one worker training the bundled model + the playground answering.

Starts ``studio run`` (web UI and its embedded worker) on a throw-away data directory,
submits a training job on the bundled SmolLM2-135M with ``studio train`` (the CLI, which
also prints the memory estimate), and while the job trains asks the playground for chat
replies through the web process's own Gradio API (``studio/serving`` holds the model in the
web process). After the job finishes it asks once more with the new adapter. All the while
it samples the resident memory of the whole process tree under ``studio run`` (VmRSS from
``/proc/<pid>/status``, summed over every descendant; PSS from ``smaps_rollup`` too, which
does not count shared pages twice) every ``--interval`` seconds.

Target: the peak of the summed RSS stays under 8 GB.

    python bench/studio_memory.py [--rows 120] [--interval 0.5] [--out bench/results/studio_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# --data (or STUDIO_SHARED_DATA): one folder per data set; default the samples shipped in data/samples.
DATA = Path(os.environ.get("STUDIO_SHARED_DATA") or REPO / "data" / "samples")
ALPACA = DATA / "alpaca" / "train.jsonl"
GB = 1000**3
GIB = 1024**3
LIMIT_BYTES = 8 * GB


# -- /proc ----------------------------------------------------------------------------------------


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids, for every process on the machine."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def tree(root: int) -> list[int]:
    kids = children_map()
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(kids.get(pid, []))
    return pids


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def describe(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return str(pid)
    for marker in ("studio run", "studio worker", "celery", "studio train"):
        if marker in raw:
            return marker
    return raw[:60]


class Sampler(threading.Thread):
    """Samples the summed RSS/PSS of the process tree under ``root`` until stopped."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.samples: list[dict[str, Any]] = []
        self.peak: dict[str, Any] = {"rss_bytes": 0}
        self.phase = "starting"
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.is_set():
            per = {pid: status_kib(pid, "VmRSS") * 1024 for pid in tree(self.root)}
            rss = sum(per.values())
            sample = {"t": round(time.monotonic() - start, 2), "phase": self.phase, "rss_bytes": rss}
            if rss > self.peak["rss_bytes"]:
                pss = sum(pss_kib(pid) * 1024 for pid in per)
                breakdown = {f"{pid} {describe(pid)}": value for pid, value in per.items() if value}
                self.peak = {**sample, "pss_bytes": pss, "processes": breakdown}
            self.samples.append(sample)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# -- driving the studio -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"studio run exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the studio did not answer at {url} within {timeout:.0f} s")


def alpaca_file(rows: int, path: Path) -> Path:
    with open(ALPACA, encoding="utf-8") as source, open(path, "w", encoding="utf-8") as out:
        for i, line in enumerate(source):
            if i == rows:
                break
            out.write(line)
    return path


class Playground:
    """Chat through the web process's Gradio API: the handler the playground's Send button calls.

    The UI binds inputs positionally, so parameters are matched by their labels (Base model,
    Panes, Message, Pane N, the chat boxes, Max new tokens).
    """

    def __init__(self, url: str, max_new_tokens: int):
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        self.max_new_tokens = max_new_tokens
        api = self.client.view_api(return_format="dict", print_info=False)
        for name, info in api["named_endpoints"].items():
            labels = {p.get("label") for p in info["parameters"]}
            if {"Base model", "Panes", "Message"} <= labels:
                self.endpoint, self.params = name, info["parameters"]
                break
        else:
            raise SystemExit("no playground endpoint (Base model, Panes, Message) in the web app's API")

    def refresh_targets(self, base_model: str) -> None:
        """Let this API session see the current adapters as pane targets (what choosing a base does)."""
        api = self.client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        for name, info in api.items():
            if [p.get("label") for p in info["parameters"]] == ["Base model"] and name.startswith("/change_base"):
                self.client.predict(base_model, api_name=name)
                return

    def ask(self, prompt: str, base_model: str, target: str | None = None) -> str:
        values = []
        for p in self.params:
            label, component = p.get("label") or "", p.get("component")
            if label == "Base model":
                values.append(base_model)
            elif label == "Panes":
                values.append(2)
            elif label == "Message":
                values.append(prompt)
            elif label == "Pane 1":
                values.append(target)  # None = the base model
            elif label.startswith("Pane "):
                values.append(None)
            elif component == "Chatbot":
                values.append([])
            elif label == "Max new tokens":
                values.append(self.max_new_tokens)
            else:
                values.append(p.get("parameter_default"))
        result = self.client.predict(*values, api_name=self.endpoint)
        for chat in result if isinstance(result, (list, tuple)) else [result]:
            for message in reversed(chat if isinstance(chat, list) else []):
                if isinstance(message, dict) and message.get("role") == "assistant":
                    content = message.get("content")
                    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                        content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
                    return str(content)
        return str(result)[:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=120, help="Alpaca rows the job trains on (1 epoch)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"folder of the data sets (default {DATA})")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="length of each playground reply")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "studio_memory.json"))
    args = parser.parse_args()
    global ALPACA
    ALPACA = args.data / "alpaca" / "train.jsonl"

    data_dir = Path(tempfile.mkdtemp(prefix="studio-memory-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "STUDIO_AUTH")}
    env.update(
        STUDIO_DATA_DIR=str(data_dir),
        STUDIO_PORT=str(port),
        STUDIO_HOST="127.0.0.1",
        STUDIO_MODELS_DIR=env.get("STUDIO_MODELS_DIR", "/tmp/studio-models"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    studio_bin = [sys.executable, "-m", "studio"]
    log = open(data_dir / "studio-run.log", "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [*studio_bin, "run"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    sampler = Sampler(process.pid, args.interval)
    sampler.start()
    events: list[dict[str, Any]] = []
    started = time.monotonic()

    def event(what: str, **extra: Any) -> None:
        events.append({"t": round(time.monotonic() - started, 1), "event": what, **extra})
        print(f"[{events[-1]['t']:7.1f}s] {what} {json.dumps(extra) if extra else ''}", flush=True)

    url = f"http://127.0.0.1:{port}/"
    train_output = ""
    replies: list[dict[str, Any]] = []
    try:
        wait_http(url, 300, process)
        event("web up", url=url)
        sampler.phase = "idle"
        playground = Playground(url, args.max_new_tokens)
        base = "smollm2-135m-instruct"
        sampler.phase = "playground"
        replies.append({"target": "base", "reply": playground.ask("Name three primary colours.", base)[:200]})
        event("playground answered (base, before training)")

        dataset = alpaca_file(args.rows, data_dir / "alpaca.jsonl")
        train = subprocess.Popen(
            [*studio_bin, "train", "--dataset", str(dataset), "--name", "memory bench", "--wait"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        event("training job submitted with `studio train --wait`")
        sampler.phase = "training"
        while train.poll() is None:
            if time.monotonic() - started > args.timeout:
                train.kill()
                raise SystemExit("timed out waiting for the training job")
            sampler.phase = "training + playground"
            replies.append({"target": "base", "reply": playground.ask("Write a haiku about memory.", base)[:200]})
            event("playground answered while training")
            sampler.phase = "training"
            time.sleep(5)
        train_output = train.stdout.read() if train.stdout else ""
        event("training job finished", exit_code=train.returncode)
        if train.returncode != 0:
            raise SystemExit(f"studio train failed:\n{train_output}")
        sampler.phase = "playground (adapter)"
        try:
            playground.refresh_targets(base)
            reply = playground.ask("Give me a tip for sleeping well.", base, "adapter:1")
            replies.append({"target": "adapter:1", "reply": reply[:200]})
            event("playground answered with the new adapter")
        except Exception as exc:  # noqa: BLE001 - recorded: the base-model replies are the measurement
            replies.append({"target": "adapter:1", "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            event("the playground API did not accept the adapter target", error=str(exc)[:120])
        sampler.phase = "idle after"
        time.sleep(3)
    finally:
        sampler.stop()
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()

    peak = sampler.peak
    by_phase: dict[str, int] = {}
    for sample in sampler.samples:
        by_phase[sample["phase"]] = max(by_phase.get(sample["phase"], 0), sample["rss_bytes"])
    report = {
        "limit_bytes": LIMIT_BYTES,
        "peak_rss_bytes": peak["rss_bytes"],
        "peak_rss_gib": round(peak["rss_bytes"] / GIB, 3),
        "peak_pss_bytes": peak.get("pss_bytes"),
        "peak_phase": peak.get("phase"),
        "peak_processes": peak.get("processes"),
        "under_limit": peak["rss_bytes"] < LIMIT_BYTES,
        "peak_rss_by_phase": by_phase,
        "events": events,
        "replies": replies,
        "studio_train_output": [line for line in train_output.splitlines() if "\r" not in line][-12:],
        "memory_estimate_line": next(
            (line for line in train_output.splitlines() if line.startswith("memory estimate")), None
        ),
        "samples": sampler.samples[:: max(1, len(sampler.samples) // 400)],
        "rows": args.rows,
        "load_avg_end": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print()
    print(
        f"peak RSS of the studio tree: {peak['rss_bytes'] / GIB:.2f} GiB ({peak['rss_bytes'] / GB:.2f} GB) "
        f"during '{peak.get('phase')}'; PSS {peak.get('pss_bytes', 0) / GIB:.2f} GiB; limit 8 GB: "
        f"{'met' if report['under_limit'] else 'NOT met'}"
    )
    for phase, value in by_phase.items():
        print(f"  {phase:<24} {value / GIB:.2f} GiB")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
