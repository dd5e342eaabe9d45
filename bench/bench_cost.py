"""What batchops saves beyond the batch discount, on the emulator's accounting (issue 14), and how
close its estimates come to what was billed.

Two workloads:

- `examples`: the example jobs in `jobs/`;
- `shared-prompt`: 10,000 items of one job sharing a 20,000-character system prompt.

Each runs three ways against a fresh emulator (faults off), and its actual cost is what the
emulator billed (stored usage, at batch prices):

- `no help`: every item sent, no caching (`reuse = false`, no cache_control anywhere);
- `reuse`: batchops as it is, without caching (the rename reuses every stored result);
- `reuse + cache`: as `reuse`, with `cache = "auto"` on template jobs (raw requests keep the
  cache_control they were written with).

Each run: (1) plan and apply (no results in the state yet); (2) every job renamed and applied
again (a rename is the everyday way a team pays twice: without reuse, every item is sent again);
(3) every prompt edited (a line added to each user message), planned and applied: every item is
sent again, and now the state holds results, so the plan expects replies as long as those were.
The savings compare (1) + (2); estimate vs actual is shown for (1) and (3), with where the
plan's expected output per reply came from.

    .venv/bin/python bench/bench_cost.py [N]        # N items in the shared-prompt job (10,000)
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from batchops.commands.context import Context, Settings
from batchops.commands.status import actual_costs
from batchops.emulator.config import EmulatorConfig
from batchops.emulator.server import running_emulator
from batchops.pricing import money

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("no help", "reuse", "reuse + cache")
WORDS = "the order arrived late and the box was damaged but support replied quickly".split()


def strip_cache_control(path: Path) -> None:
    """Remove every cache_control from a JSONL file of raw requests."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "cache_control"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    lines = [json.dumps(strip(json.loads(line))) for line in path.read_text().splitlines() if line]
    path.write_text("".join(line + "\n" for line in lines))


def job_settings(spec: Path, settings: dict[str, object]) -> None:
    """Add `settings` to every job of a TOML or JSON spec (template jobs only for `cache`)."""
    if spec.suffix == ".json":
        data = json.loads(spec.read_text())
        for job in data["jobs"].values():
            for key, value in settings.items():
                if key != "cache" or "requests" not in job:
                    job[key] = value
        spec.write_text(json.dumps(data, indent=2))
        return
    text = spec.read_text()
    raw_requests = "requests = " in text
    lines = []
    for key, value in settings.items():
        if key == "cache" and raw_requests:
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    if lines:
        text = re.sub(
            r"(?m)^(\[jobs\.[^\]]+\]\n)", lambda m: m.group(1) + "\n".join(lines) + "\n", text
        )
    spec.write_text(text)


def rename_jobs(jobs: Path) -> None:
    for spec in jobs.glob("*.toml"):
        spec.write_text(re.sub(r"(?m)^\[jobs\.([^\]]+)\]", r"[jobs.\1-v2]", spec.read_text()))
    for spec in jobs.glob("*.json"):
        data = json.loads(spec.read_text())
        data["jobs"] = {f"{name}-v2": job for name, job in data["jobs"].items()}
        spec.write_text(json.dumps(data, indent=2))


def examples(root: Path, variant: str) -> None:
    shutil.copytree(REPO / "jobs", root / "jobs", ignore=shutil.ignore_patterns("out"))
    if variant == "no help":
        strip_cache_control(root / "jobs" / "data" / "judge_requests.jsonl")
    if variant == "reuse":
        strip_cache_control(root / "jobs" / "data" / "judge_requests.jsonl")
    settings: dict[str, object] = {}
    if variant == "no help":
        settings["reuse"] = False
    if variant == "reuse + cache":
        settings["cache"] = "auto"
    for spec in (root / "jobs").glob("*.*"):
        if spec.suffix in (".toml", ".json"):
            job_settings(spec, settings)


def shared_prompt(n: int):
    def make(root: Path, variant: str) -> None:
        jobs = root / "jobs"
        (jobs / "data").mkdir(parents=True)
        rubric = (
            "You triage customer support tickets for an online shop. Policy follows. "
            + " ".join(f"Rule {i}: {' '.join(WORDS[i % 7 :])}." for i in range(400))
        )[:20_000]
        with (jobs / "data" / "tickets.jsonl").open("w") as fh:
            for i in range(n):
                text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(12))
                fh.write(json.dumps({"id": f"t{i:05d}", "text": f"{text} (order {i})"}) + "\n")
        extra = ""
        if variant == "no help":
            extra = "reuse = false\n"
        elif variant == "reuse + cache":
            extra = 'cache = "auto"\n'
        (jobs / "triage.toml").write_text(
            "version = 1\n\n[jobs.triage]\n"
            'model = "claude-haiku-4-5"\nmax_tokens = 8\n'
            f"system = {json.dumps(rubric)}\n"
            'prompt = "Ticket {{ id }}: {{ text }}\\nLabel: refund, shipping or other."\n'
            'input = { path = "data/tickets.jsonl", key = "id" }\n' + extra
        )

    return make


EDIT = "(Second pass: answer as before.)"


def edit_prompts(jobs: Path) -> None:
    """Put a line before every user message (template prompts and raw requests): every item
    changes, so every item is sent again."""
    for spec in jobs.glob("*.toml"):
        text = spec.read_text()
        text = re.sub(r'prompt = "(?!"")', f'prompt = "{EDIT} ', text)
        text = text.replace('prompt = """', f'prompt = """{EDIT}\n')
        spec.write_text(text)
    for spec in jobs.glob("*.json"):
        data = json.loads(spec.read_text())
        for job in data["jobs"].values():
            if "prompt" in job:
                job["prompt"] = f"{EDIT}\n{job['prompt']}"
        spec.write_text(json.dumps(data, indent=2))
    for path in (jobs / "data").glob("*requests*.jsonl"):
        lines = []
        for line in path.read_text().splitlines():
            request = json.loads(line)
            last = request["params"]["messages"][-1]
            last["content"] = f"{EDIT}\n{last['content']}"
            lines.append(json.dumps(request))
        path.write_text("".join(line + "\n" for line in lines))


def run(make, variant: str) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_emulator(EmulatorConfig(processing_seconds=0, faults_enabled=False)) as url,
    ):
        root = Path(tmp)
        make(root, variant)
        ctx = Context(
            Settings(
                jobs_path=root / "jobs",
                state_path=root / "state" / "bench.db",
                root=root,
                base_url=url,
                api_key="bench",
            )
        )
        first_plan, _ = ctx.plan(refresh=False)
        started = time.perf_counter()
        ctx.apply(wait=True, poll_interval=0.05, timeout=600)
        first_actual = total_cost(ctx)
        first_jobs = job_costs(ctx)
        rename_jobs(root / "jobs")
        report = ctx.apply(wait=True, poll_interval=0.05, timeout=600)
        renamed_total = total_cost(ctx)
        seconds = time.perf_counter() - started
        edit_prompts(root / "jobs")
        again_plan, _ = ctx.plan(refresh=False)
        before = job_costs(ctx)
        ctx.apply(wait=True, poll_interval=0.05, timeout=600)
        after = job_costs(ctx)
        return {
            "jobs": per_job(first_plan, first_jobs),
            "again_jobs": per_job(
                again_plan, {j: c - before.get(j, 0.0) for j, c in after.items()}
            ),
            "expected": first_plan.expected_cost_usd,
            "ceiling": first_plan.estimated_cost_usd,
            "cache_saving": first_plan.cache_saving_usd,
            "basis": bases(first_plan),
            "first_actual": first_actual,
            "total_actual": renamed_total,
            "reused": report.reused,
            "seconds": seconds,
            "again_expected": again_plan.expected_cost_usd,
            "again_ceiling": again_plan.estimated_cost_usd,
            "again_basis": bases(again_plan),
            "again_actual": total_cost(ctx) - renamed_total,
            "again_sent": sum(len(j.submits) for j in again_plan.jobs),
        }


def bases(plan) -> list[str]:
    """Where each job's expected output per reply came from, as the plan says."""
    return [f"{j.name}: {j.output_basis}" for j in plan.jobs if j.submits and j.output_basis]


def per_job(plan, actual: dict[str, float]) -> list[tuple[str, float, float]]:
    """(job, expected, actual) of each job the plan sent."""
    return [(j.name, j.expected_usd, actual.get(j.name, 0.0)) for j in plan.jobs if j.submits]


def job_costs(ctx: Context) -> dict[str, float]:
    reader = ctx.reader()
    try:
        costs, _ = actual_costs(reader, ctx.prices)
    finally:
        reader.close()
    return costs


def total_cost(ctx: Context) -> float:
    reader = ctx.reader()
    try:
        costs, _ = actual_costs(reader, ctx.prices)
    finally:
        reader.close()
    return sum(costs.values())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    workloads = (("examples", examples), (f"shared-prompt ({n:,} items)", shared_prompt(n)))
    for name, make in workloads:
        print(f"\n{name}: apply, then every job renamed and applied again")
        rows = {variant: run(make, variant) for variant in VARIANTS}
        base = rows["no help"]["total_actual"]
        print(f"  {'':14} {'actual':>10} {'vs no help':>11} {'reused':>7}")
        for variant, r in rows.items():
            ratio = r["total_actual"] / base if base else 0.0
            print(f"  {variant:14} {money(r['total_actual']):>10} {ratio:>10.1%} {r['reused']:>7}")
        for label, prefix in (
            ("(1) first apply, no results in the state", ""),
            ("(3) every prompt edited, re-planned with the results of (1)-(2)", "again_"),
        ):
            print(f"  {label}: estimate vs actual")
            for variant, r in rows.items():
                expected, actual = (
                    r[f"{prefix}expected"],
                    r[f"{prefix}actual" if prefix else "first_actual"],
                )
                off = (expected - actual) / actual if actual else 0.0
                print(
                    f"    {variant:14} expected {money(expected)} (ceiling"
                    f" {money(r[f'{prefix}ceiling'])}), actual {money(actual)}:"
                    f" expected {off:+.1%}"
                )
            jobs = rows["reuse"][f"{prefix}jobs"]
            if len(jobs) > 1:
                print("    per job (reuse):")
                for job, expected, actual in jobs:
                    off = (expected - actual) / actual if actual else 0.0
                    print(
                        f"      {job:24} expected {money(expected)}, actual {money(actual)}:"
                        f" {off:+.1%}"
                    )
            print("    expected output per reply, as the plan says where it came from:")
            for basis in rows["reuse"][f"{prefix}basis"]:
                print(f"      {basis}")


if __name__ == "__main__":
    main()
