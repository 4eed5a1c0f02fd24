"""One row of loadtest/memory_pool's results from a run's files, or (--table CSV) the markdown
table of them all.

    memory_pool_report.py MODE BUDGET MODELS RUN_DIR DURATION
    memory_pool_report.py --table RESULTS_CSV
"""

import csv
import json
import pathlib
import re
import sys

MIB = 1024 * 1024
SERIES = re.compile(r'^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$')


def prometheus(path: pathlib.Path) -> list[tuple[str, dict, float]]:
    rows = []
    for line in path.read_text().splitlines():
        match = SERIES.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        rows.append((match.group(1), labels, float(match.group(3))))
    return rows


def total(rows, name, **wanted) -> float:
    return sum(v for n, labels, v in rows if n == name and all(labels.get(k) == w for k, w in wanted.items()))


def buckets(rows, name) -> dict[float, float]:
    summed: dict[float, float] = {}
    for n, labels, value in rows:
        if n == name + "_bucket":
            bound = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            summed[bound] = summed.get(bound, 0.0) + value
    return summed


def quantile(counts: dict[float, float], q: float):
    """Linear within the bucket, as Prometheus's histogram_quantile."""
    bounds = sorted(counts)
    if not bounds or counts[bounds[-1]] <= 0:
        return None
    rank = q * counts[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if counts[bound] >= rank:
            if bound == float("inf"):
                return lower
            inside = counts[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, counts[bound]
    return lower


def seconds(duration: str) -> float:
    number, unit = re.match(r"([0-9.]+)(ms|s|m)", duration).groups()
    return float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def row(mode: str, budget: str, models: str, run: pathlib.Path, duration: str) -> list:
    summary = json.loads((run / "k6.json").read_text())
    checks = {c["name"]: c for c in summary["root_group"]["checks"]}
    infer = checks.get("infer is 200", {"passes": 0, "fails": 0})
    requests = infer["passes"] + infer["fails"]
    iteration = summary["metrics"]["iteration_duration"]["values"]
    before, after = prometheus(run / "before.prom"), prometheus(run / "after.prom")
    diff = lambda name, **labels: total(after, name, **labels) - total(before, name, **labels)
    served = diff("switchyard_requests_total")
    waits = diff("switchyard_cold_waits_total")
    cold = diff("switchyard_cold_starts_total", outcome="success")
    histogram_after, histogram_before = buckets(after, "switchyard_cold_start_seconds"), buckets(before, "switchyard_cold_start_seconds")
    histogram = {b: histogram_after[b] - histogram_before.get(b, 0.0) for b in histogram_after}
    p50, p99 = quantile(histogram, 0.5), quantile(histogram, 0.99)
    evictions = diff("switchyard_evictions_total")
    reserved, measured = 0, 0
    for line in (run / "samples.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        sample = json.loads(line)
        cpu = next(d for d in sample["devices"] if d["id"] == "cpu")
        reserved = max(reserved, cpu["reserved"])
        measured = max(measured, cpu["measured"])
    catalogue = 0
    for model in json.loads((run / "models.json").read_text())["models"]:
        for version in model["versions"]:
            catalogue += (version["metadata"].get("measured_memory") or {}).get("bytes_per_replica", 0)
    explicit = mode == "explicit"
    fmt = lambda value, digits=1: "" if value is None else f"{value:.{digits}f}"
    return [
        mode,
        int(budget[:-3]) * (1024 if budget.endswith("GiB") else 1),
        models,
        requests,
        infer["fails"],
        fmt(iteration["med"]),
        fmt(iteration["p(99)"]),
        "" if explicit or served == 0 else f"{1 - waits / served:.4f}",
        "" if explicit else int(cold),
        "" if explicit else fmt(None if p50 is None else p50 * 1000),
        "" if explicit else fmt(None if p99 is None else p99 * 1000),
        fmt(evictions / (seconds(duration) / 60)),
        fmt(reserved / MIB),
        fmt(measured / MIB),
        fmt(catalogue / MIB),
    ]


def table(path: pathlib.Path) -> str:
    rows = list(csv.DictReader(path.open()))
    out = [
        "| run | budget MiB | requests | failed | p50 ms | p99 ms | hit rate | cold starts | cold p50 / p99 ms | evictions/min | max reserved / measured MiB | catalogue measured MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cold = f"{r['cold_p50_ms']} / {r['cold_p99_ms']}" if r["cold_p50_ms"] else "-"
        out.append(
            f"| {r['mode']} | {r['budget_mib']} | {r['requests']} | {r['failed']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['hit_rate'] or '-'} | {r['cold_starts'] or '-'} | {cold} | {r['evictions_per_min']} | "
            f"{r['max_reserved_mib']} / {r['max_measured_mib']} | {r['catalogue_measured_mib']} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        print(table(pathlib.Path(sys.argv[2])))
    else:
        mode, budget, models, run, duration = sys.argv[1:6]
        writer = csv.writer(sys.stdout)
        writer.writerow(row(mode, budget, models, pathlib.Path(run), duration))
