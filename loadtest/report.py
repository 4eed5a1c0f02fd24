"""Turns loadtest/bench's CSV into a markdown report (tables and the targets of the serving
issue, each met or not with its ratio) and an SVG with throughput and p99 latency against
concurrency.

    report.py bench.csv overload_rss.txt bench.md bench.svg
"""

import csv
import math
import platform
import subprocess
import sys

PROTOCOLS = ["json", "binary", "grpc"]
CONCURRENCY = [1, 8, 32, 128]
COLORS = {"json": "#1f77b4", "binary": "#2ca02c", "grpc": "#d62728", "stack": "#7f7f7f"}


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in row:
            if key not in ("target", "model", "protocol"):
                row[key] = float(row[key])
    return rows


def find(rows, **match):
    for row in rows:
        if all(row[k] == v for k, v in match.items()):
            return row
    return None


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(rows, rss):
    out = [f"Machine: {cpu_name()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
           f"client and server on the same machine.", ""]
    out += ["### In process (ONNX Runtime, 1 thread)", "",
            "| model | batch | calls/s | rows/s | p50 µs | p99 µs |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row["target"] == "inprocess":
            out.append(f"| {row['model']} | {row['protocol'][5:]} | {row['req_per_s']:.0f} | {row['rows_per_s']:.0f} "
                       f"| {row['p50_us']:.0f} | {row['p99_us']:.0f} |")
    out += ["", "### HTTP-stack limit (fixed response, no model)", "",
            "| concurrency | req/s | p50 µs | p99 µs |", "|---|---|---|---|"]
    for row in rows:
        if row["target"] == "stack":
            out.append(f"| {row['concurrency']:.0f} | {row['req_per_s']:.0f} | {row['p50_us']:.0f} | {row['p99_us']:.0f} |")
    out += ["", "### Gateway", "",
            "| model | protocol | concurrency | req/s | p50 µs | p90 µs | p99 µs | 429 | errors |",
            "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["target"] == "gateway":
            out.append(f"| {row['model']} | {row['protocol']} | {row['concurrency']:.0f} | {row['req_per_s']:.0f} "
                       f"| {row['p50_us']:.0f} | {row['p90_us']:.0f} | {row['p99_us']:.0f} | {row['rejected']:.0f} "
                       f"| {row['errors']:.0f} |")

    torch_rows = [row for row in rows if row["target"] == "torchscript"]
    if torch_rows:
        out += ["", "### mlp version 2 (TorchScript on libtorch), HTTP JSON", "",
                "| concurrency | req/s | p50 µs | p90 µs | p99 µs | errors |", "|---|---|---|---|---|---|"]
        for row in torch_rows:
            out.append(f"| {row['concurrency']:.0f} | {row['req_per_s']:.0f} | {row['p50_us']:.0f} "
                       f"| {row['p90_us']:.0f} | {row['p99_us']:.0f} | {row['errors']:.0f} |")

    variants = [("telemetry-off", "metrics off"), ("telemetry-metrics", "metrics on (default)"),
                ("telemetry-traces10", "+ traces, 10% sampled"), ("telemetry-traces100", "+ traces, all sampled")]
    if find(rows, target="telemetry-off"):
        out += ["", "### Telemetry cost (HTTP JSON, requests/s and p50 µs)", "",
                "| model | concurrency | " + " | ".join(label for _, label in variants) + " |",
                "|---|---|" + "---|" * len(variants)]
        for model, concurrency in [("mlp", 1.0), ("mlp", 32.0), ("mlp_heavy", 32.0)]:
            cells = []
            base = find(rows, target="telemetry-off", model=model, concurrency=concurrency)
            for target, _ in variants:
                row = find(rows, target=target, model=model, concurrency=concurrency)
                if row and base:
                    cells.append(f"{row['req_per_s']:.0f} ({row['req_per_s'] / base['req_per_s']:.0%}), p50 {row['p50_us']:.0f}")
                else:
                    cells.append("-")
            out.append(f"| {model} | {concurrency:.0f} | " + " | ".join(cells) + " |")

    out += ["", "### Targets", ""]
    heavy_c32 = find(rows, target="gateway", model="mlp_heavy", protocol="json", concurrency=32.0)
    heavy_max = find(rows, target="inprocess", model="mlp_heavy", protocol="batch32")
    if heavy_c32 and heavy_max:
        ratio = heavy_c32["rows_per_s"] / heavy_max["rows_per_s"]
        out.append(f"- mlp_heavy, HTTP JSON, concurrency 32: {heavy_c32['rows_per_s']:.0f} rows/s = {ratio:.0%} of the "
                   f"in-process batch-32 {heavy_max['rows_per_s']:.0f} rows/s (target 85%): "
                   f"{'met' if ratio >= 0.85 else 'NOT met'}")
    mlp_c1 = find(rows, target="gateway", model="mlp", protocol="json", concurrency=1.0)
    mlp_b1 = find(rows, target="inprocess", model="mlp", protocol="batch1")
    if mlp_c1 and mlp_b1:
        gap = mlp_c1["p50_us"] - mlp_b1["p50_us"]
        out.append(f"- mlp, HTTP JSON, concurrency 1: p50 {mlp_c1['p50_us']:.0f} µs = in-process {mlp_b1['p50_us']:.0f} µs "
                   f"+ {gap:.0f} µs (target + 150 µs): {'met' if gap <= 150 else 'NOT met'}")
    mlp_c32 = find(rows, target="gateway", model="mlp", protocol="json", concurrency=32.0)
    stack_c32 = find(rows, target="stack", concurrency=32.0)
    if mlp_c32 and stack_c32:
        ratio = mlp_c32["req_per_s"] / stack_c32["req_per_s"]
        out.append(f"- mlp, HTTP JSON, concurrency 32: {mlp_c32['req_per_s']:.0f} req/s = {ratio:.0%} of the HTTP-stack "
                   f"limit {stack_c32['req_per_s']:.0f} req/s (target 50%): {'met' if ratio >= 0.5 else 'NOT met'}")
    overload = find(rows, target="overload")
    if overload:
        answered = overload["errors"] == 0
        fast = overload["rejected_p99_us"] < 5000
        bound = max(rss) / 1024 if rss else float("nan")
        out.append(f"- overload (mlp_heavy, HTTP JSON, concurrency 512, 10 s): {overload['ok']:.0f} answered 200, "
                   f"{overload['rejected']:.0f} answered 429, {overload['errors']:.0f} unanswered or failed; "
                   f"p99 of the 429s {overload['rejected_p99_us'] / 1000:.2f} ms (target < 5 ms); gateway resident "
                   f"memory {min(rss) / 1024:.0f}-{bound:.0f} MiB while overloaded: "
                   f"{'met' if answered and fast else 'NOT met'}")
    return "\n".join(out) + "\n"


def svg(rows):
    width, height, pad = 1040, 420, 60
    panel = (width - 3 * pad) / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">', '<rect width="100%" height="100%" fill="white"/>']
    metrics = [("req_per_s", "throughput (requests/s)"), ("p99_us", "p99 latency (µs)")]
    xs = {c: i / (len(CONCURRENCY) - 1) for i, c in enumerate(CONCURRENCY)}
    for index, (metric, title) in enumerate(metrics):
        left = pad + index * (panel + pad)
        top, bottom = 40, height - 70
        series = {}
        for row in rows:
            if row["target"] == "gateway":
                series.setdefault((row["model"], row["protocol"]), []).append(row)
            elif row["target"] == "stack":
                series.setdefault(("stack", "stack"), []).append(row)
        values = [r[metric] for s in series.values() for r in s if r[metric] > 0]
        low, high = math.log10(min(values)), math.log10(max(values))
        high = high if high > low else low + 1

        def y_of(v):
            return bottom - (math.log10(max(v, 10 ** low)) - low) / (high - low) * (bottom - top)

        parts.append(f'<text x="{left + panel / 2}" y="20" text-anchor="middle" font-weight="bold">{title} vs concurrency (log scales)</text>')
        parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + panel}" y2="{bottom}" stroke="black"/>')
        parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>')
        for c, fx in xs.items():
            x = left + fx * panel
            parts.append(f'<text x="{x}" y="{bottom + 16}" text-anchor="middle">{c}</text>')
        for exponent in range(math.floor(low), math.ceil(high) + 1):
            if low <= exponent <= high:
                y = y_of(10 ** exponent)
                parts.append(f'<line x1="{left}" y1="{y}" x2="{left + panel}" y2="{y}" stroke="#ddd"/>')
                parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">1e{exponent}</text>')
        for (model, protocol), points in sorted(series.items()):
            points = sorted(points, key=lambda r: r["concurrency"])
            coords = [(left + xs[int(r["concurrency"])] * panel, y_of(r[metric])) for r in points if int(r["concurrency"]) in xs]
            dash = ' stroke-dasharray="6,3"' if model == "mlp_heavy" else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{COLORS[protocol]}" stroke-width="2"{dash}/>')
    legend_y = height - 30
    entries = [(f"mlp {p}", COLORS[p], "") for p in PROTOCOLS] + [(f"mlp_heavy {p}", COLORS[p], "6,3") for p in PROTOCOLS]
    entries.append(("HTTP-stack limit", COLORS["stack"], ""))
    x = pad
    for label, color, dash in entries:
        parts.append(f'<line x1="{x}" y1="{legend_y}" x2="{x + 24}" y2="{legend_y}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
        parts.append(f'<text x="{x + 28}" y="{legend_y + 4}">{label}</text>')
        x += 28 + 7 * len(label) + 14
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    rows = load(sys.argv[1])
    with open(sys.argv[2]) as f:
        rss = [int(line) for line in f if line.strip()]
    with open(sys.argv[3], "w") as f:
        f.write(markdown(rows, rss))
    with open(sys.argv[4], "w") as f:
        f.write(svg(rows))


if __name__ == "__main__":
    main()
