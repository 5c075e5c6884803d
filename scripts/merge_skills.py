"""Merging on real data: two LoRAs of SmolLM2-135M-Instruct, one per skill, merged every way the studio knows.

Adapter A learns GSM8K (grade-school maths with worked answers), adapter B learns E2E NLG
(restaurant attributes -> one-sentence description). Each is then merged with the other by
the studio's merge job (linear average and sum, TIES, DARE, LoRA-LEGO at k = mean r, Σr/2 and
Σr) and by PEFT's ``add_weighted_adapter(combination_type="cat")`` (the studio has no ``cat``
method: the script builds it with PEFT and registers it like a merge), and every model is
scored on HELD-OUT rows of both tasks: the response-token loss of the eval job. The question
a user asks is whether one merged adapter keeps both skills; the table answers it with
numbers, as each task's share of its specialist's gain over the base.

``--skills gsm8k,e2e,alpaca`` adds adapter C, trained on Alpaca (instruction + input -> output),
and merges all three (LEGO at k = mean r, Σr/2 and Σr = 8, 12 and 24); that run writes
``bench/results/merge_skills_three.json`` and its own section of the doc, below the two-skill one.

The embedded studio lives in ``--work`` (kept between runs): specialists, merges and scores
of an identical set-up are reused, so a rerun only does what is missing, and
``scripts/mixture_skills.py`` builds its mixture from the same specialists.

Everything goes through the studio's own path on an embedded registry: datasets imported
by ``DatasetService``, jobs submitted by ``JobService`` and run by ``execute_job`` (what a
worker runs), no queue in between.

    python scripts/merge_skills.py                 # the documented run (docs/results/merging.md)
    python scripts/merge_skills.py --steps 5 --eval-rows 8 --doc /tmp/m.md --out /tmp/m.json   # a quick look
    python scripts/merge_skills.py --render        # rewrite the doc from bench/results/merge_skills.json
    python scripts/merge_skills.py --steps 16 --train-rows 64 --lr 1e-3 --max-length 256 --eval-rows 12 --data DIR   # the 2-core run
    python scripts/merge_skills.py --steps 16 --train-rows 64 --lr 1e-3 --max-length 256 --eval-rows 12 --data DIR \
        --skills gsm8k,e2e,alpaca   # the three-skill run (reuses A and B from --work)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_BASE,
    DOCS_RESULTS_DIR,
    RESULTS_DIR,
    add_run_arguments,
    data_file,
    embedded_settings,
    machine_info,
    markdown_table,
    prepare_env,
    read_jsonl,
    take_rows,
    use_data,
    worker_device,
    write_json,
    write_jsonl,
)

E2E_PROMPT = "Write one sentence describing this restaurant: {mr}"


def gsm8k_rows(name: str, start: int, count: int) -> list[dict[str, str]]:
    rows = take_rows(read_jsonl(data_file("gsm8k", name))[start:], count, f"gsm8k/{name}")
    return [{"prompt": r["question"], "completion": r["answer"]} for r in rows]


def e2e_rows(name: str, start: int, count: int) -> list[dict[str, str]]:
    rows = take_rows(read_jsonl(data_file("e2e_nlg", name))[start:], count, f"e2e_nlg/{name}")
    return [{"prompt": E2E_PROMPT.format(mr=r["mr"]), "completion": r["ref"]} for r in rows]


def alpaca_rows(name: str, start: int, count: int) -> list[dict[str, str]]:
    """Alpaca rows as they are (instruction/input/output): the studio's importer knows the format."""
    rows = take_rows(read_jsonl(data_file("alpaca", name))[start:], count, f"alpaca/{name}")
    return [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in rows]


class Studio:
    """Services on an embedded registry; each submitted job runs here at once, as a worker would run it."""

    def __init__(self, data_dir: Path):
        from models_db.registry import Registry
        from studio.jobs.runner import WorkerIdentity
        from studio.services.container import Services
        from studio.services.jobs import JobService

        self.settings = embedded_settings(data_dir)
        registry = Registry.from_url(self.settings.database_url)
        self.services = Services(settings=self.settings, registry=registry, jobs=JobService(registry, _NoQueue()))
        self.worker = WorkerIdentity("merge-skills", worker_device())

    def dataset(self, path: Path) -> int:
        return self.services.datasets.add(path).id

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        from studio.jobs.runner import execute_job

        job = self.services.jobs.submit(request)
        started = time.perf_counter()
        status = execute_job(job.id, self.services.registry, self.settings, self.worker)
        job = self.services.jobs.get(job.id)
        if status != "succeeded":
            raise SystemExit(f"job {job.id} ({job.kind}) {status}: {job.error}")
        print(f"job {job.id} {job.kind} done in {time.perf_counter() - started:.0f} s", flush=True)
        return {**(job.result or {}), "seconds": time.perf_counter() - started}


class _NoQueue:
    def send(self, job_id: int) -> str:
        return f"inline-{job_id}"

    def revoke(self, task_id: str | None) -> None:
        pass


DEFAULT_WORK = Path(tempfile.gettempdir()) / "merge-skills-work"
SPECIALISTS = {"gsm8k": "A: LoRA on GSM8K", "e2e": "B: LoRA on E2E", "alpaca": "C: LoRA on Alpaca"}
# skill -> its held-out data set (the scored rows)
HELD_OUT = {"gsm8k": "gsm8k-test", "e2e": "e2e-dev", "alpaca": "alpaca-test"}
TASK_NAMES = {"gsm8k": "GSM8K", "e2e": "E2E", "alpaca": "Alpaca"}
TWO_SKILLS = ("gsm8k", "e2e")
TASKS = tuple((skill, HELD_OUT[skill]) for skill in TWO_SKILLS)


def skills_of(args: Any) -> tuple[str, ...]:
    """The run's skills, in expert order (an args namespace or a record's args dict; two skills when unsaid)."""
    value = args.get("skills") if isinstance(args, dict) else getattr(args, "skills", None)
    if not value:
        return TWO_SKILLS
    return tuple(value.split(",")) if isinstance(value, str) else tuple(value)


def settle_run_json(args: Any, skills: tuple[str, ...]) -> None:
    """Point ``args.out`` at this run's JSON: ``--two`` or ``--three`` by the number of skills, or ``--out``
    when given, which then also stands for that run in the page (``args.two`` / ``args.three``)."""
    if args.out is None:
        args.out = args.two if len(skills) == 2 else args.three
    elif len(skills) == 2:
        args.two = args.out
    else:
        args.three = args.out


def merge_prefix(skills: tuple[str, ...]) -> str:
    """``merge of A and B: `` / ``merge of A, B and C: ``: the score label of a merge of these specialists."""
    letters = [SPECIALISTS[s].split(":")[0] for s in skills]
    return f"merge of {', '.join(letters[:-1])} and {letters[-1]}: "


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The specialists' set-up (shared with scripts/mixture_skills.py, which reuses the same specialists)."""
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval-rows", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument(
        "--work", default=str(DEFAULT_WORK), help="the embedded studio, kept: same set-up = reuse what is there"
    )
    parser.add_argument(
        "--skills",
        default=",".join(TWO_SKILLS),
        help="comma-separated specialists to train and combine, in order: gsm8k, e2e, alpaca (not part of the"
        " cache key: a third skill reuses the other two)",
    )
    add_run_arguments(parser)


def setup_key(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the specialists and the held-out rows: a cache made with another key is not reused."""
    keys = ("base", "train_rows", "steps", "lr", "eval_rows", "max_length", "data")
    return {k: str(getattr(args, k)) for k in keys}


class Cache:
    """``work/state.json``: datasets, specialists, merges and scores of one set-up, by label.

    Another ``name`` gives a script its own file, so two scripts can run side by side on one
    set-up without overwriting each other's state (the registry itself is shared).
    """

    def __init__(self, work: Path, key: dict[str, Any], name: str = "state.json"):
        self.path = work / name
        state = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if state.get("key") != key:  # another set-up: start over (the old adapters stay in the registry)
            state = {"key": key}
        self.state = state

    def get(self, section: str, label: str) -> Any:
        return self.state.get(section, {}).get(label)

    def put(self, section: str, label: str, value: Any) -> Any:
        self.state.setdefault(section, {})[label] = value
        self.path.write_text(json.dumps(self.state, indent=2))
        return value


def prepare_specialists(args: argparse.Namespace) -> tuple[Studio, Cache, dict[str, int], dict[str, dict[str, Any]]]:
    """(studio, cache, dataset ids by name, trained specialist results by skill): trained once per set-up."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    studio = Studio(work / "studio")
    cache = Cache(work, setup_key(args))
    makers = {
        "gsm8k-train": lambda: gsm8k_rows("train.jsonl", 0, args.train_rows),
        "e2e-train": lambda: e2e_rows("train.jsonl", 0, args.train_rows),
        "gsm8k-test": lambda: gsm8k_rows("test.jsonl", 0, args.eval_rows),
        "e2e-dev": lambda: e2e_rows("dev.jsonl", 0, args.eval_rows),
        "alpaca-train": lambda: alpaca_rows("train.jsonl", 0, args.train_rows),
        "alpaca-test": lambda: alpaca_rows("test.jsonl", 0, args.eval_rows),
    }
    skills = skills_of(args)
    data = {}
    for name, rows in makers.items():
        if name.split("-")[0] not in skills:
            continue  # a data set of a skill this run does not use: not made (the two-skill cache stays as it was)
        data[name] = cache.get("datasets", name) or cache.put(
            "datasets", name, studio.dataset(write_jsonl(work / f"{name}.jsonl", rows()))
        )
    hyper = {
        "max_steps": args.steps,
        "batch_size": 4,
        "max_length": args.max_length,
        "learning_rate": args.lr,
        "validation_fraction": 0.0,
        "save_every": 100_000,
        "eval_every": 100_000,
    }
    trained = {}
    for skill in skills:
        trained[skill] = cache.get("trained", skill) or cache.put(
            "trained",
            skill,
            _keep(
                studio.run(
                    {
                        "kind": "train",
                        "name": f"lora on {skill}",
                        "dataset_id": data[f"{skill}-train"],
                        "base_model": args.base,
                        "variant": "lora",
                        "hyper": hyper,
                        "seed": 42,
                        "transfer_kit": False,  # minutes of discriminator training this comparison does not use
                    }
                ),
                ("adapter_id", "final_loss", "steps", "seconds"),
            ),
        )
    return studio, cache, data, trained


def score(
    studio: Studio,
    cache: Cache,
    data: dict[str, int],
    label: str,
    target: dict[str, Any],
    rows: int,
    skills: tuple[str, ...] = TWO_SKILLS,
) -> dict:
    """Held-out response-token loss of ``target`` (an adapter or the base) on every skill's task, cached by label.

    A label scored before on fewer tasks (the two-skill run) is only scored on the missing ones.
    """
    losses = dict(cache.get("scores", label) or {})
    missing = [skill for skill in skills if skill not in losses]
    if not missing:
        return losses
    for task in missing:
        result = studio.run(
            {"kind": "eval", "dataset_id": data[HELD_OUT[task]], "metrics": ["loss"], "max_examples": rows, **target}
        )
        losses[task] = result["metrics"]["eval_loss"]
        cache.put("scores", label, losses)  # each task as it is scored: a stopped run keeps what it measured
    return losses


def _keep(result: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: result.get(k) for k in keys}


def peft_cat(studio: Studio, adapter_ids: list[int], name: str) -> dict[str, Any]:
    """PEFT's ``add_weighted_adapter(combination_type="cat")`` of the adapters (weights 1), registered as a merge.

    The studio has no ``cat`` merge method; this builds it with PEFT itself on the bundled
    base and registers the directory the way the merge job registers its results, so it is
    scored by the same eval job. Mathematically it is the exact sum of the parents' changes
    (the same change as ``linear`` with weights 1 + 1), with the parents' ranks concatenated.
    """
    import uuid

    from peft import PeftModel

    from studio.models.base_models import resolve_base_model
    from studio.training.job import dir_size, sha256_file
    from studio.training.models import load_base_model

    started = time.perf_counter()
    registry = studio.services.registry
    parents = [registry.get_adapter(i) for i in adapter_ids]
    base_path = resolve_base_model(parents[0].base_model, studio.settings).path
    model = PeftModel.from_pretrained(load_base_model(base_path, "causal-lm"), parents[0].path, adapter_name="p0")
    for j, parent in enumerate(parents[1:], start=1):
        model.load_adapter(parent.path, adapter_name=f"p{j}")
    names = [f"p{j}" for j in range(len(parents))]
    model.add_weighted_adapter(names, [1.0] * len(parents), "cat", combination_type="cat")
    for adapter in names:
        model.delete_adapter(adapter)
    out_dir = Path(studio.settings.adapters_dir) / uuid.uuid4().hex
    model.save_pretrained(str(out_dir), selected_adapters=["cat"])
    nested = out_dir / "cat"  # PEFT saves a non-default adapter in a sub-folder
    if nested.is_dir():
        for item in nested.iterdir():
            item.rename(out_dir / item.name)
        nested.rmdir()
    config = model.peft_config["cat"]
    rank = int(config.r)
    row = registry.add_adapter(
        name=name,
        variant="merge",
        base_model=parents[0].base_model,
        dataset_id=None,
        ranks={m: rank for m in sorted(config.target_modules)},
        trainable_params=sum(p.numel() for n, p in model.named_parameters() if ".cat." in n),
        size_bytes=dir_size(out_dir),
        path=str(out_dir),
        sha256=sha256_file(out_dir / "adapter_model.safetensors"),
        source_job_id=None,
        parents=[p.id for p in parents],
        metrics={"merge_max_error": 0.0},
    )
    return {
        "adapter_id": row.id,
        "method": "peft cat",
        "weights": [1.0] * len(parents),
        "rank_max": rank,
        "merge_max_error": 0.0,
        "seconds": time.perf_counter() - started,
    }


MERGE_KEYS = ("adapter_id", "method", "weights", "rank_max", "merge_max_error", "seconds")


def adopt(cache: Cache, other: Cache, section: str, label: str) -> None:
    """Take ``label`` of ``section`` from ``other`` (the mixture script's cache) where only it has it: no rework.

    Scores are merged task by task (one cache may hold a label's GSM8K and E2E losses, the other its Alpaca one).
    """
    mine, theirs = cache.get(section, label), other.get(section, label)
    if not theirs:
        return
    if not mine:
        cache.put(section, label, theirs)
    elif section == "scores" and set(theirs) - set(mine):
        cache.put(section, label, theirs | mine)


def merge_plan(args: argparse.Namespace, ranks: list[int]) -> dict[str, dict[str, Any]]:
    """Label -> merge request fields: linear, TIES, DARE and LEGO at k = mean r, Σr/2, Σr (equal ks run once).

    One rank per parent: two parents give the two-skill labels (``linear, 0.5 + 0.5``), three the
    three-skill ones (``linear, 1/3 each``, ``1 + 1 + 1``).
    """
    n = len(ranks)
    ones = " + ".join(["1"] * n)
    mean = "0.5 + 0.5" if n == 2 else f"1/{n} each"
    plan: dict[str, dict[str, Any]] = {
        f"linear, {mean}": {"method": "linear"},
        f"linear, {ones}": {"method": "linear", "weights": [1.0] * n},
    }
    ks = {"mean r": round(sum(ranks) / len(ranks)), "Σr/2": round(sum(ranks) / 2), "Σr": sum(ranks)}
    for k in sorted(set(ks.values())):
        names = " = ".join(n for n, v in ks.items() if v == k)
        plan[f"LEGO, k {k} ({names})"] = {"method": "lego", "rank": k}
    plan[f"TIES, density {args.density:g}"] = {"method": "ties", "density": args.density}
    plan[f"PEFT cat, {ones}"] = {"method": "peft cat"}
    plan[f"DARE-TIES, density {args.density:g}"] = {"method": "dare_ties", "density": args.density, "seed": 0}
    plan[f"DARE-linear, density {args.density:g}, {ones}"] = {
        "method": "dare_linear",
        "density": args.density,
        "weights": [1.0] * n,
        "seed": 0,
    }
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_arguments(parser)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--doc", default=str(DOCS_RESULTS_DIR / "merging.md"))
    parser.add_argument("--two", default=str(RESULTS_DIR / "merge_skills.json"), help="the two-skill run's JSON")
    parser.add_argument(
        "--three", default=str(RESULTS_DIR / "merge_skills_three.json"), help="the three-skill run's JSON"
    )
    parser.add_argument("--out", default=None, help="this run's JSON (default: --two or --three by --skills)")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite --doc from the JSONs of --two, --three and --earlier"
    )
    parser.add_argument(
        "--earlier",
        default=str(RESULTS_DIR / "merge_skills_100steps.json"),
        help="an earlier run's JSON whose held-out table the doc keeps below this run's ('' for none)",
    )
    args = parser.parse_args()
    use_data(args.data)
    skills = skills_of(args)
    settle_run_json(args, skills)
    if args.render:
        Path(args.doc).write_text(render_doc(args.two, args.three, args.earlier), encoding="utf-8")
        return
    prepare_env(threads=args.threads)
    began = time.perf_counter()
    load_before = machine_info()["loadavg_1_5_15"]

    studio, cache, data, trained = prepare_specialists(args)
    ids = [trained[skill]["adapter_id"] for skill in skills]
    registry = studio.services.registry
    ranks = [max(registry.get_adapter(i).ranks.values()) for i in ids]
    references = {"base model": {"base_model": args.base}}
    references.update({SPECIALISTS[skill]: {"adapter_id": trained[skill]["adapter_id"]} for skill in skills})
    other = Cache(Path(args.work), setup_key(args), name="mixture_state.json")  # its linear merges and scores
    for label in references:
        adopt(cache, other, "scores", label)
    scores = {
        label: score(studio, cache, data, label, target, args.eval_rows, skills) for label, target in references.items()
    }
    plan = merge_plan(args, ranks)
    prefix = merge_prefix(skills)
    merged: dict[str, dict[str, Any]] = {}
    # One merge at a time, scored at once, the doc rewritten after each: a run cut short still documents what it
    # measured (labelled partial).
    for label, fields in plan.items():
        name = f"{prefix}{label}"  # the cache key too: "TIES, density 0.5" of two and of three skills differ
        adopt(cache, other, "merges", name)
        adopt(cache, other, "scores", name)
        if not cache.get("merges", name):
            if fields["method"] == "peft cat":
                result = peft_cat(studio, ids, label)
            else:
                result = studio.run({"kind": "merge", "adapter_ids": ids, "name": label, **fields})
            cache.put("merges", name, _keep(result, MERGE_KEYS))
        merged[label] = cache.get("merges", name)
        target = {"adapter_id": merged[label]["adapter_id"]}
        scores[name] = score(studio, cache, data, name, target, args.eval_rows, skills)
        record = {
            "args": {k: v for k, v in vars(args).items() if k not in ("render", "earlier", "two", "three")},
            "machine": machine_info(),
            "loadavg_at_start": load_before,
            "wall_seconds": time.perf_counter() - began,
            "partial": [m for m in plan if m not in merged],
            "ranks": ranks,
            "trained": trained,
            "merges": merged,
            "eval_loss": scores,
        }
        write_json(args.out, record)
        Path(args.doc).write_text(render_doc(args.two, args.three, args.earlier), encoding="utf-8")
        print(f"merged and scored {label}", flush=True)
    print(Path(args.doc).read_text())


def render_doc(two: str, three: str, earlier: str) -> str:
    """docs/results/merging.md: the two-skill run, the three-skill run (when its JSON is there), the earlier run."""
    parts = [render(json.loads(Path(two).read_text()))] if Path(two).is_file() else []
    if three and Path(three).is_file():
        parts.append(render_three(json.loads(Path(three).read_text()), Path(three).name))
    return "".join(parts) + earlier_section(earlier)


def earlier_section(path: str) -> str:
    """The held-out tables of an earlier (longer) run, so a shorter rerun does not hide its numbers."""
    if not path or not Path(path).is_file():
        return ""
    text = render(json.loads(Path(path).read_text()))
    body = text[text.index("## Set-up") :]
    head = f"\n## Earlier run: longer training, three merges\n\nRaw numbers in `bench/results/{Path(path).name}`.\n\n"
    return head + body.replace("## ", "### ")


def share(scores: dict[str, dict[str, float]], label: str, task: str) -> float:
    """(base − model) / (base − specialist) of ``task``'s held-out loss: 1 = the specialist's whole gain."""
    base, specialist = scores["base model"][task], scores[SPECIALISTS[task]][task]
    return (base - scores[label][task]) / (base - specialist)


LOSS_HEADERS = {"gsm8k": "GSM8K test loss", "e2e": "E2E dev loss", "alpaca": "Alpaca test loss"}


def loss_table(record: dict[str, Any]) -> str:
    """Held-out loss of every scored model on every task (change from the base in brackets)."""
    skills, scores = skills_of(record["args"]), record["eval_loss"]
    base = scores["base model"]
    rows = []
    for label, loss in scores.items():
        cells = [label]
        for task in skills:
            change = (loss[task] - base[task]) / base[task] * 100
            cells.append(f"{loss[task]:.3f} ({change:+.1f} %)" if label != "base model" else f"{loss[task]:.3f}")
        rows.append(cells)
    return markdown_table(["model", *(LOSS_HEADERS[t] for t in skills)], rows)


def gains_table(record: dict[str, Any]) -> str:
    """Each merge's share of every specialist's gain, and their mean."""
    skills, scores = skills_of(record["args"]), record["eval_loss"]
    prefix = merge_prefix(skills)
    gains = []
    for label in scores:
        if label.startswith("merge"):
            kept = [share(scores, label, t) * 100 for t in skills]
            gains.append([label.removeprefix(prefix), *(f"{k:.0f} %" for k in kept), f"{sum(kept) / len(kept):.0f} %"])
    headers = [f"{TASK_NAMES[t]} ({SPECIALISTS[t][0]}'s gain)" for t in skills]
    return markdown_table(["merge", *headers, "mean"], gains)


def merges_table(record: dict[str, Any]) -> str:
    """How each merge was made and what it cost."""
    merge_rows = [
        [
            label,
            m["method"],
            ", ".join(f"{w:g}" for w in m["weights"]),
            m["rank_max"],
            f"{m['merge_max_error']:.1e}",
            f"{m['seconds']:.0f} s",
        ]
        for label, m in record["merges"].items()
    ]
    return markdown_table(["merge", "method", "weights", "rank", "largest relative error", "time"], merge_rows)


def render(record: dict[str, Any]) -> str:
    """docs/results/merging.md's two-skill part from the run's record."""
    args, scores = record["args"], record["eval_loss"]
    machine = record["machine"]
    load = record.get("loadavg_at_start")
    load_text = (
        f"load average {load[0]:.1f} at the start, {machine['loadavg_1_5_15'][0]:.1f} at the end" if load else ""
    )
    return "\n".join(
        [
            "# Merging adapters on real data: one skill each, then both",
            "",
            *(
                [f"**Partial run**: not measured (the run was stopped first): {'; '.join(record['partial'])}.", ""]
                if record.get("partial")
                else []
            ),
            "Generated by `scripts/merge_skills.py`; raw numbers in `bench/results/merge_skills.json`.",
            "",
            "## Set-up",
            "",
            f"- Base: `{args['base']}` (bundled). Two LoRA adapters (studio defaults: r 8, alpha 16, all attention"
            f" + MLP linears), {args['steps']} steps × batch 4, lr {args['lr']:g}, max_length"
            f" {args.get('max_length', 320)}, seed 42:",
            f"  - **A** on the first {args['train_rows']} rows of `gsm8k/train.jsonl` (question → worked answer);",
            f"  - **B** on the first {args['train_rows']} rows of `e2e_nlg/train.jsonl` (attributes → one sentence,"
            f' prompt "{E2E_PROMPT.format(mr="…")}").',
            "- Merges by the studio's merge job (A first, B second); ranks default to the sum of the parents' (16)."
            + (
                " LoRA-LEGO's k is its rank; with two rank-8 parents mean r and Σr/2 are both 8, so it ran at k 8"
                " and 16. `PEFT cat` is not a studio method: the script builds it with PEFT's"
                ' `add_weighted_adapter(combination_type="cat")` (weights 1, 1) and registers it as a merge.'
                if any(label.startswith("LEGO") for label in record["merges"])
                else ""
            ),
            f"- Scores: mean response-token loss of the eval job on the first {args['eval_rows']} rows of"
            " `gsm8k/test.jsonl` and of `e2e_nlg/dev.jsonl` (held out from training). Lower is better; the"
            " percentage is the change from the base model.",
            "- Everything ran through `JobService.submit` + `execute_job` on an embedded registry.",
            *(
                f"  - {skill}: {info['note']}."
                for skill, info in record.get("trained", {}).items()
                if isinstance(info, dict) and info.get("note")
            ),
            f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch thread(s),"
            f" torch {machine['versions']['torch']}; wall time {record['wall_seconds'] / 60:.1f} min of this run"
            f" (training a specialist reused from the cache is not in it){'; ' + load_text if load_text else ''}.",
            "",
            "## Held-out loss",
            "",
            loss_table(record),
            "",
            "Share of each specialist's loss reduction that the merged adapter keeps (100 % = as good as the"
            " adapter trained on that task alone):",
            "",
            gains_table(record),
            "",
            lego_verdict(scores, TWO_SKILLS),
            "",
            *(
                [
                    "PEFT `cat` with weights 1, 1 is the exact sum of the two changes, so it scores the same as the"
                    " 1 + 1 linear merge (a check of both). LoRA-LEGO at k = Σr keeps every rank unit as its own"
                    " cluster, so its change is the sum scaled by the output reweighting √(mean r / k) = √(8/16) ≈"
                    " 0.71 (between the 0.5 + 0.5 and 1 + 1 linear merges); at k = mean r it prunes half the units"
                    " and loses more of both gains.",
                    "",
                ]
                if any("LEGO" in label for label in scores) and any("PEFT cat" in label for label in scores)
                else []
            ),
            "## Merges",
            "",
            merges_table(record),
            "",
            "The linear merges are exact (their LoRA equals the weighted sum of the parents' changes to fp32"
            " rounding) and found by the range finder without a full SVD. A TIES result is not low-rank: its"
            " error column is the share of the TIES (or DARE) change that the best LoRA of that rank cannot hold."
            " LoRA-LEGO's result IS its factors (error 0). One seed and"
            f" {args['eval_rows']} held-out rows per task: differences of a few per cent between merges are within"
            " noise.",
            "",
        ]
    )


NUMBERS = {2: "two", 3: "three"}


def small_gain_note(scores: dict[str, dict[str, float]], skills: tuple[str, ...]) -> list[str]:
    """A warning (and a blank line) for a specialist that gained under 10 % on its task: its share is noisy."""
    notes = []
    for skill in skills:
        base, own = scores["base model"][skill], scores[SPECIALISTS[skill]][skill]
        if (base - own) / base < 0.10:
            notes.append(
                f"{SPECIALISTS[skill].split(':')[0]} gained only {(base - own) / base:.1%} on {TASK_NAMES[skill]}"
                f" ({base:.3f} → {own:.3f}), so its share column divides by a small gain: a difference of 0.01 in"
                " loss moves it"
                f" by {0.01 / (base - own):.0%}."
            )
    return [" ".join(notes), ""] if notes else []


def render_three(record: dict[str, Any], json_name: str) -> str:
    """The three-skill section of docs/results/merging.md (the set-up of the two-skill run plus an Alpaca specialist)."""
    args, scores, machine = record["args"], record["eval_loss"], record["machine"]
    skills = skills_of(args)
    ks = sorted(m.get("rank_max") for label, m in record["merges"].items() if label.startswith("LEGO"))
    return "\n".join(
        [
            "",
            "## Three skills: GSM8K, E2E and Alpaca",
            "",
            *(
                [f"**Partial run**: not measured (the run was stopped first): {'; '.join(record['partial'])}.", ""]
                if record.get("partial")
                else []
            ),
            f"Raw numbers in `bench/results/{json_name}`. The same set-up as above ({args['steps']} steps × batch 4,"
            f" lr {args['lr']:g}, max_length {args['max_length']}, seed 42, {args['eval_rows']} held-out rows per"
            " task) with a third specialist:",
            "",
            f"- **C** on the first {args['train_rows']} rows of `alpaca/train.jsonl` (instruction + input → output, the"
            " studio's Alpaca importer), scored on the first"
            f" {args['eval_rows']} rows of `alpaca/test.jsonl`. A and B were trained again from the same rows and"
            " seed (the two-skill run's cache was gone) and came out the same (identical final training loss to the"
            " last digit), so the base model's and their GSM8K and E2E scores are the two-skill run's; every other"
            " number was measured in this run.",
            f"- Merges of A, B and C (in that order): ranks default to Σr = {sum(record['ranks'])}; LoRA-LEGO at k ="
            f" mean r, Σr/2 and Σr ({', '.join(str(k) for k in ks) or 'not run'}); linear at 1/3 each and 1 + 1 + 1;"
            " PEFT `cat` with weights 1, 1, 1.",
            f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch thread(s);"
            f" wall time {record['wall_seconds'] / 60:.1f} min (specialists reused from the cache not counted).",
            "",
            "### Held-out loss",
            "",
            loss_table(record),
            "",
            "Share of each specialist's loss reduction that the merged adapter keeps:",
            "",
            gains_table(record),
            "",
            *small_gain_note(scores, skills),
            lego_verdict(scores, skills),
            "",
            "### Merges",
            "",
            merges_table(record),
            "",
        ]
    )


def lego_verdict(scores: dict[str, dict[str, float]], skills: tuple[str, ...] = TWO_SKILLS) -> str:
    """One plain sentence: did the best LoRA-LEGO merge keep more of the gains than every other training-free merge?"""
    prefix = merge_prefix(skills)
    means = {
        label.removeprefix(prefix): sum(share(scores, label, t) for t in skills) / len(skills)
        for label in scores
        if label.startswith("merge")
    }
    lego = {k: v for k, v in means.items() if k.startswith("LEGO")}
    others = {k: v for k, v in means.items() if not k.startswith("LEGO")}
    if not lego or not others:
        return ""
    best_lego, best_other = max(lego, key=lego.get), max(others, key=others.get)
    gap = (lego[best_lego] - others[best_other]) * 100
    if gap > 0:
        verdict = "Yes, here LoRA-LEGO beat the other training-free merges"
    else:
        verdict = "No, here LoRA-LEGO did not beat the other training-free merges (the paper claims it does)"
    return (
        f"**Did LoRA-LEGO beat the other training-free merges?** {verdict}: its best ({best_lego}) keeps"
        f" {lego[best_lego]:.0%} of the {NUMBERS.get(len(skills), len(skills))} specialists' gains on average, the best other merge ({best_other})"
        f" {others[best_other]:.0%} ({gap:+.0f} points; one seed, so a gap of a few points is within noise)."
    )


if __name__ == "__main__":
    main()
