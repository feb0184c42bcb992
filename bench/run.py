"""goplugin benchmark: the Rust, Go and Python KV plugins through one
go-plugin host (the current release), interleaved run by run; with
--hosts, goplugin's Rust host against go-plugin's Go host, both driving the
same plugins (go-plugin's own Go example plugin and kv-plugin).

Usage: run.py [--runs N] [--calls N] [--out DIR] [--only NAME,...]
              [--extra NAME=PATH ...] [--hosts]

--extra adds another build of kv-plugin (say, linked another way) as a
plugin NAME; --only keeps the named plugins of the usual set (go is always
kept: every ratio is against it), and the extras. Every figure is printed as its median over the runs
with its range (min–max), and every ratio as the median of the run-by-run
ratios with theirs: two rows of the same code (rust, rust-relaxed for Gets)
show the noise, and a ratio whose range crosses a target shows nothing.

Each run measures every plugin once, in turn, starting one further each
run (A B C, B C A, C A B, ...), so machine drift and position effects hit
all alike. The host starts each plugin directly, without a shell, as
Terraform, Vault and Packer do. Per plugin and run the host's `bench` command
reports start-up, latency, throughput at 1/4/16 callers, plugin CPU per
call, RSS and Kill time; the driver adds the whole `kv put` CLI time. The
driver also records how busy the machine was during each measurement
(CPU time of processes other than the host, the plugin and itself) and
flags measurements with foreign load, instead of mixing them in silently.

With --hosts, each plugin runs under the Go test host's `bench` and under
examples/host_bench.rs (the same measurements, on goplugin::Client), and
the figures add the host's own CPU per call and RSS; each ratio is the
Rust host's figure over the Go host's with the same plugin in the same run.
The CLI row times go-plugin's example host (`examples/grpc`) against
goplugin's `kv-host`, both running the plugin with `sh -c` as they do.

Writes DIR/results.json, DIR/results.md and DIR/results.png.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, ".build", "go-hosts", "kv-host-current")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
# A measurement is flagged when foreign processes used more than this share
# of the machine's CPU time while it ran.
FOREIGN_LIMIT = 0.10


def target_dir():
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    return json.loads(meta.stdout)["target_directory"]


def entry(name, plugin, env=None, host=HOST, baseline="go", cli=None):
    """One measured configuration: `host bench` with KV_PLUGIN=`plugin`;
    its ratios are against `baseline`'s in the same run; `cli` is the
    host and environment the CLI row runs `put` with."""
    env = dict(env or {})
    return {"name": name, "plugin": plugin, "env": env, "host": host,
            "baseline": baseline,
            "cli": cli or (host, dict(env, KV_HOST_DIRECT="1"))}


def plugins():
    rust = os.path.join(target_dir(), "release", "kv-plugin")
    python = os.path.join(ROOT, ".build", "venv", "bin", "python")
    return [
        entry("go", os.path.join(ROOT, ".build", "go-hosts", "kv-plugin-go")),
        entry("rust", rust),
        entry("rust-relaxed", rust, {"KV_PLUGIN_DURABILITY": "relaxed"}),
        # The host multiplexes (GRPCBrokerMultiplex): the cost of the yamux bridge.
        entry("rust-mux", rust, {"KV_HOST_MUX": "1"}),
        entry("python", python + " " + os.path.join(ROOT, "tests", "fixtures", "python-kv", "plugin.py")),
    ]


def hosts():
    release = os.path.join(target_dir(), "release")
    rust_host = os.path.join(release, "examples", "host_bench")
    go_cli = (os.path.join(ROOT, ".build", "go-hosts", "examples", "grpc", "grpc"), {"KV_PROTO": "grpc"})
    rust_cli = (os.path.join(release, "kv-host"), {})
    go_plugin = os.path.join(ROOT, ".build", "go-hosts", "examples", "grpc", "plugin-go-grpc")
    rust_plugin = os.path.join(release, "kv-plugin")
    return [
        entry("go-host/go-plugin", go_plugin, cli=go_cli, baseline="go-host/go-plugin"),
        entry("rust-host/go-plugin", go_plugin, host=rust_host, cli=rust_cli,
              baseline="go-host/go-plugin"),
        entry("go-host/rust-plugin", rust_plugin, cli=go_cli, baseline="go-host/rust-plugin"),
        entry("rust-host/rust-plugin", rust_plugin, host=rust_host, cli=rust_cli,
              baseline="go-host/rust-plugin"),
    ]


def machine_ticks():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle


def own_ticks():
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * CLK_TCK


def clean_env(**extra):
    env = dict(os.environ, **extra)
    for key in ("BASIC_PLUGIN", "PLUGIN_CLIENT_CERT", "PLUGIN_MULTIPLEX_GRPC"):
        env.pop(key, None)
    return env


def measure(e, calls, workdir):
    name = e["name"]
    # Started without a shell in between, as Terraform, Vault and Packer do.
    env = clean_env(KV_PLUGIN=e["plugin"], KV_HOST_DIRECT="1", **e["env"])
    # The previous plugin's unsynced writes (the Go and Python plugins do not
    # fsync) would otherwise be flushed during this start-up: the journal
    # commit stalls the unix socket's creation (measured: up to 140 ms).
    os.sync()
    busy0, own0, wall0 = machine_ticks(), own_ticks(), time.monotonic()
    out = subprocess.run([e["host"], "bench", str(calls)], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"{name}: bench failed: {out.stdout}{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    cli = []
    os.sync()
    cli_host, cli_env = e["cli"]
    cli_env = clean_env(KV_PLUGIN=e["plugin"], **cli_env)
    for i in range(5):
        t = time.monotonic()
        subprocess.run([cli_host, "put", "cli", str(i)], cwd=workdir, env=cli_env,
                       capture_output=True, check=True, timeout=60)
        cli.append((time.monotonic() - t) * 1000)
    result["cli_put_ms"] = statistics.median(cli)
    # Our children (the host, and through it the plugin, which the host
    # reaps) are in own_ticks; everything else busy on the machine is foreign.
    wall = time.monotonic() - wall0
    foreign = (machine_ticks() - busy0) - (own_ticks() - own0)
    result["foreign_load"] = max(0.0, foreign / (wall * CLK_TCK * NCPU))
    return result


METRICS = [
    # key, label, unit, how to read a figure from a result, lower is better
    ("start_ms", "launch → handshake", "ms", lambda r: r["start_ms"], True),
    ("ready_ms", "launch → first health check", "ms", lambda r: r["ready_ms"], True),
    ("put_p50_us", "Put p50", "µs", lambda r: r["put_p50_us"], True),
    ("put_p99_us", "Put p99", "µs", lambda r: r["put_p99_us"], True),
    ("get_p50_us", "Get p50", "µs", lambda r: r["get_p50_us"], True),
    ("get_p99_us", "Get p99", "µs", lambda r: r["get_p99_us"], True),
    ("c1_calls_s", "Get calls/s, 1 caller", "/s", lambda r: r["conc"]["1"]["calls_s"], False),
    ("c4_calls_s", "Get calls/s, 4 callers", "/s", lambda r: r["conc"]["4"]["calls_s"], False),
    ("c16_calls_s", "Get calls/s, 16 callers", "/s", lambda r: r["conc"]["16"]["calls_s"], False),
    ("c16_p50_us", "Get p50, 16 callers", "µs", lambda r: r["conc"]["16"]["p50_us"], True),
    ("c16_p99_us", "Get p99, 16 callers", "µs", lambda r: r["conc"]["16"]["p99_us"], True),
    ("cpu_us_per_call", "plugin CPU per call", "µs", lambda r: r["cpu_us_per_call"], True),
    ("rss_mb", "RSS after load", "MB", lambda r: r["rss_kb"] / 1024, True),
    ("peak_rss_mb", "peak RSS", "MB", lambda r: r["peak_rss_kb"] / 1024, True),
    ("kill_ms", "Kill()", "ms", lambda r: r["kill_ms"], True),
    ("cli_put_ms", "whole `kv put` CLI", "ms", lambda r: r["cli_put_ms"], True),
]

# Targets, as ratios to the baseline in the same run: (limit, lower is
# better). A target is met when the whole spread of the ratio over the runs
# is on its good side, missed when all of it is on the other, and not shown
# when the spread crosses it.
PLUGIN_TARGETS = {"rss_mb": 0.5}
HOST_TARGETS = {
    "host_cpu_us_per_call": 0.5,
    "get_p50_us": 0.8,
    "c1_calls_s": 1.2,
    "c16_calls_s": 1.2,
    "ready_ms": 0.8,
    "host_rss_mb": 0.5,
}


def verdict(spread_, limit, lower_better):
    """met, missed or not shown, for a [median, min, max] ratio spread."""
    if not spread_:
        return "–"
    _, low, high = spread_
    if lower_better:
        return "met" if high <= limit else "missed" if low > limit else "not shown"
    return "met" if low >= limit else "missed" if high < limit else "not shown"


# What --hosts adds: the host process's own cost.
HOST_METRICS = [
    ("tls_ready_ms", "launch → first health check, AutoMTLS", "ms",
     lambda r: r["tls_ready_ms"], True),
    ("host_cpu_us_per_call", "host CPU per call", "µs", lambda r: r["host_cpu_us_per_call"], True),
    ("host_rss_mb", "host RSS after load", "MB", lambda r: r["host_rss_kb"] / 1024, True),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--only", help="comma-separated plugin names to measure")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                        help="another kv-plugin binary to measure as NAME")
    parser.add_argument("--hosts", action="store_true",
                        help="the Rust host against the Go host, on the same plugins")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    entries = hosts() if args.hosts else plugins()
    if not args.hosts:
        # AutoMTLS launches are the hosts' comparison (the Python plugin
        # has no TLS).
        for e in entries:
            e["env"]["KV_BENCH_TLS"] = "0"
    metrics = METRICS + HOST_METRICS if args.hosts else METRICS
    if args.only:
        keep = set(args.only.split(",")) | {e["baseline"] for e in entries}
        entries = [e for e in entries if e["name"] in keep]
    for extra in args.extra:
        name, _, path = extra.partition("=")
        if not name or not os.path.isfile(path):
            parser.error(f"--extra {extra!r}: want NAME=PATH of an existing binary")
        entries.append(entry(name, os.path.abspath(path)))
    raw = {e["name"]: [] for e in entries}
    with tempfile.TemporaryDirectory(prefix="goplugin-bench") as workdir:
        for run in range(args.runs):
            # Each run starts with the next plugin (A B C, B C A, ...): a
            # plugin measured right after another's teardown is not always
            # the same one.
            shift = run % len(entries)
            for e in entries[shift:] + entries[:shift]:
                name = e["name"]
                result = measure(e, args.calls, workdir)
                raw[name].append(result)
                flag = " FOREIGN LOAD" if result["foreign_load"] > FOREIGN_LIMIT else ""
                print(f"run {run + 1}/{args.runs} {name:13s} ready {result['ready_ms']:7.1f} ms  "
                      f"get p50 {result['get_p50_us']:7.1f} µs  16 callers "
                      f"{result['conc']['16']['calls_s']:8.0f}/s  foreign load "
                      f"{result['foreign_load']:.0%}{flag}", flush=True)

    summary = {}
    for e in entries:
        name, results, base_runs = e["name"], raw[e["name"]], raw[e["baseline"]]
        clean = [r for r in results if r["foreign_load"] <= FOREIGN_LIMIT] or results
        # Ratios run by run, between measurements of the same run.
        pairs = [(r, g) for r, g in zip(results, base_runs)
                 if r["foreign_load"] <= FOREIGN_LIMIT and g["foreign_load"] <= FOREIGN_LIMIT] \
            or list(zip(results, base_runs))
        summary[name] = {
            "baseline": e["baseline"],
            "runs": len(results),
            "runs_used": len(clean),
            "all_runs_flagged": not any(r["foreign_load"] <= FOREIGN_LIMIT for r in results),
            **{key: statistics.median(get(r) for r in clean) for key, _, _, get, _ in metrics},
            "range": {key: [min(get(r) for r in clean), max(get(r) for r in clean)]
                      for key, _, _, get, _ in metrics},
            "ratio": {key: spread([get(r) / get(g) for r, g in pairs if get(g)])
                      for key, _, _, get, _ in metrics},
        }
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": NCPU, "kernel": os.uname().release},
        "calls_per_phase": args.calls,
        "hosts": args.hosts,
        "targets": HOST_TARGETS if args.hosts else PLUGIN_TARGETS,
        "runs": args.runs,
        "foreign_load_limit": FOREIGN_LIMIT,
        "summary": summary,
        "raw": raw,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    write_markdown(report, metrics, os.path.join(args.out, "results.md"))
    plot(report, metrics, os.path.join(args.out, "results.png"))
    print(open(os.path.join(args.out, "results.md")).read())


def spread(values):
    """[median, min, max] of `values`, or None when there are none."""
    return [statistics.median(values), min(values), max(values)] if values else None


def figure(value, unit):
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def write_markdown(report, metrics, path):
    s = report["summary"]
    names = list(s)
    compared = [n for n in names if s[n]["baseline"] != n]
    if report.get("hosts"):
        what = ("each plugin under the Go test host's `bench` and under goplugin's host "
                "(examples/host_bench.rs); the hosts start each plugin without a shell. "
                "\"launch → handshake\" is each host's start call: go-plugin's `Start()` reads the "
                "handshake line, goplugin's `start()` also connects and checks health. "
                "Ratio = the Rust host's figure ÷ the Go host's with the same plugin in the same run")
    else:
        what = ("the host starts each plugin without a shell. "
                "Ratio = figure ÷ Go plugin's figure in the same run")
    lines = [
        f"Medians (min–max) of {report['runs']} interleaved runs (the order rotated each run), "
        f"{report['calls_per_phase']} calls per phase, {report['date']}, "
        f"{report['machine']['cpus']} CPUs; {what}, median (min–max) over the runs "
        "(for calls/s, higher is better; for everything else, lower is better).",
        "",
        "| metric | " + " | ".join(names) + " | "
        + " | ".join(f"{n} ÷ {s[n]['baseline']}" for n in compared) + " |",
        "|---|" + "---|" * (len(names) + len(compared)),
    ]
    for key, label, unit, _, _ in metrics:
        cells = []
        for n in names:
            low, high = s[n]["range"][key]
            cells.append(f"{figure(s[n][key], unit)} {unit} ({figure(low, unit)}–{figure(high, unit)})")
        ratios = []
        for n in compared:
            r = s[n]["ratio"][key]
            ratios.append(f"{r[0]:.2f}× ({r[1]:.2f}–{r[2]:.2f})" if r else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    targets = report.get("targets") or {}
    if targets:
        better = {key: lower for key, _, _, _, lower in metrics}
        lines += [
            "",
            "Targets (ratio to the baseline in the same run; met: the whole spread over the runs "
            "on the target's good side; missed: all of it on the other; not shown: the spread "
            "crosses the target):",
            "",
            "| metric | target | " + " | ".join(f"{n} ÷ {s[n]['baseline']}" for n in compared) + " |",
            "|---|---|" + "---|" * len(compared),
        ]
        for key, label, _, _, lower in metrics:
            if key not in targets:
                continue
            limit = targets[key]
            cells = []
            for n in compared:
                r = s[n]["ratio"][key]
                cells.append(f"{r[0]:.2f}× ({r[1]:.2f}–{r[2]:.2f}): "
                             f"{verdict(r, limit, better[key])}" if r else "–")
            sign = "≤" if lower else "≥"
            lines.append(f"| {label} | {sign} {limit:g}× | " + " | ".join(cells) + " |")
    flagged = [n for n in names if s[n]["runs_used"] < s[n]["runs"]]
    lines.append("")
    lines.append("Runs with foreign load over "
                 f"{report['foreign_load_limit']:.0%} of the machine were left out: "
                 + (", ".join(f"{n} {s[n]['runs'] - s[n]['runs_used']}" for n in flagged) or "none") + ".")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(report, metrics, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    s = report["summary"]
    targets = report.get("targets") or {}
    names = [n for n in s if s[n]["baseline"] != n]
    shown = [m for m in metrics if m[0] in (
        "start_ms", "ready_ms", "tls_ready_ms", "put_p50_us", "get_p50_us", "get_p99_us",
        "c1_calls_s", "c16_calls_s", "cpu_us_per_call", "rss_mb", "kill_ms", "cli_put_ms",
        "host_cpu_us_per_call", "host_rss_mb")]
    fig, ax = plt.subplots(figsize=(13.5, 5.8))
    width = 0.8 / len(names)
    top = 1.0
    bottom = 1.0
    for i, name in enumerate(names):
        heights, below, above = [], [], []
        for key, _, _, _, lower_better in shown:
            r = s[name]["ratio"][key] or [1.0, 1.0, 1.0]
            # "How many times better than the baseline": > 1 is better, so a
            # lower-is-better ratio is inverted (and its min and max swap).
            med, low, high = (1 / r[0], 1 / r[2], 1 / r[1]) if lower_better else tuple(r)
            heights.append(med)
            below.append(med - low)
            above.append(high - med)
            top, bottom = max(top, high), min(bottom, low)
        ax.bar([x + i * width for x in range(len(shown))], heights, width, label=name,
               yerr=[below, above], capsize=3, error_kw={"elinewidth": 1})
    labelled = False
    for x, (key, _, _, _, lower_better) in enumerate(shown):
        if key in targets:
            goal = 1 / targets[key] if lower_better else targets[key]
            top = max(top, goal)
            ax.hlines(goal, x - width / 2, x + width * (len(names) - 0.5), colors="black",
                      linestyles="dashed", linewidth=1, label=None if labelled else "target")
            labelled = True
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ticks = [t for t in (0.25, 0.5, 0.8, 1, 1.2, 1.5, 2, 3, 4, 6, 8) if bottom / 1.2 <= t <= top * 1.2]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylim(bottom / 1.25, top * 1.25)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(shown))])
    ax.set_xticklabels([label for _, label, _, _, _ in shown], rotation=25, ha="right")
    runs = f"medians and min–max of the per-run ratios over {report['runs']} runs ({report['date']})"
    if report.get("hosts"):
        ax.set_ylabel("advantage over the Go host (×, log scale; > 1 is better)")
        ax.set_title(f"goplugin's host vs go-plugin's, same plugins: {runs}")
    else:
        ax.set_ylabel("advantage over the Go plugin (×, log scale; > 1 is better)")
        ax.set_title(f"KV plugins through go-plugin's host: {runs}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
