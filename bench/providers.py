"""goplugin benchmark: terraform-provider-kv (Rust, goplugin) against the same
provider in Go (terraform-plugin-go, tests/fixtures/go-provider), through
the same OpenTofu (.build/opentofu/tofu), interleaved run by run.

Usage: providers.py [--runs N] [--out DIR]

Per provider and run:
- `tofu plan` wall time with 1 and with 40 applied resources (the median of
  5 plans; each plan starts the provider, reads its schema, refreshes every
  resource and plans, with AutoMTLS as tofu does by default);
- provider start → handshake: the provider run directly with tofu's
  environment (cookie, versions 5,6, ports), until its handshake line
  (the median of 5 launches, without AutoMTLS);
- provider RSS once started (VmRSS after the handshake).

Every figure is printed as its median over the runs with its range
(min–max), and every ratio (Rust ÷ Go, run by run) likewise.

Writes DIR/results.json and DIR/results.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

from run import FOREIGN_LIMIT, NCPU, figure, machine_ticks, own_ticks, spread, target_dir, CLK_TCK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOFU = os.path.join(ROOT, ".build", "opentofu", "tofu")
COOKIE = ("TF_PLUGIN_MAGIC_COOKIE", "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2")
TRIES = 5


def providers():
    return [
        ("go", os.path.join(ROOT, ".build", "go-provider")),
        ("rust", os.path.join(target_dir(), "release")),
    ]


def resources(count):
    return (
        'terraform {\n  required_providers {\n    kv = { source = "goplugin/kv" }\n  }\n}\n\n'
        f'resource "kv_item" "many" {{\n  count = {count}\n  key   = "k${{count.index}}"\n'
        '  value = "v${count.index}"\n}\n'
    )


class Workdir:
    """A directory with `count` resources applied through the provider in `bindir`."""

    def __init__(self, bindir, count, base):
        self.dir = tempfile.mkdtemp(prefix=f"tofu-{count}-", dir=base)
        rc = os.path.join(self.dir, "tofurc")
        with open(rc, "w") as f:
            f.write('provider_installation {\n  dev_overrides {\n'
                    f'    "registry.opentofu.org/goplugin/kv" = "{bindir}"\n  }}\n  direct {{}}\n}}\n')
        with open(os.path.join(self.dir, "main.tf"), "w") as f:
            f.write(resources(count))
        self.env = dict(os.environ, TF_CLI_CONFIG_FILE=rc, HOME=self.dir, TF_IN_AUTOMATION="1",
                        CHECKPOINT_DISABLE="1")
        for key in ("TF_LOG", "TF_REATTACH_PROVIDERS", "TF_DISABLE_PLUGIN_TLS"):
            self.env.pop(key, None)
        self.tofu("apply", "-auto-approve", "-input=false")

    def tofu(self, *args):
        out = subprocess.run([TOFU, *args, "-no-color"], cwd=self.dir, env=self.env,
                             capture_output=True, text=True, timeout=300)
        if out.returncode not in (0, 2):
            raise SystemExit(f"tofu {' '.join(args)} failed in {self.dir}:\n{out.stdout}{out.stderr}")
        return out

    def plan_ms(self):
        times = []
        for _ in range(TRIES):
            t = time.monotonic()
            out = self.tofu("plan", "-input=false", "-detailed-exitcode")
            times.append((time.monotonic() - t) * 1000)
            if out.returncode != 0:
                raise SystemExit(f"plan found changes in {self.dir}:\n{out.stdout}")
        return statistics.median(times)


def start(bindir):
    """Launch → handshake (ms) and RSS (MB) of the provider run as tofu runs it."""
    binary = os.path.join(bindir, "terraform-provider-kv")
    env = dict(os.environ, PLUGIN_PROTOCOL_VERSIONS="5,6", PLUGIN_MIN_PORT="10000",
               PLUGIN_MAX_PORT="25000")
    env[COOKIE[0]] = COOKIE[1]
    env.pop("PLUGIN_CLIENT_CERT", None)
    starts, rss = [], []
    with tempfile.TemporaryDirectory(prefix="provider-start") as cwd:
        for _ in range(TRIES):
            t = time.monotonic()
            p = subprocess.Popen([binary], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            line = p.stdout.readline()
            starts.append((time.monotonic() - t) * 1000)
            if not line.startswith(b"1|"):
                raise SystemExit(f"{binary}: no handshake line: {line!r}")
            with open(f"/proc/{p.pid}/status") as f:
                kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            rss.append(kb / 1024)
            p.terminate()
            p.wait(timeout=10)
            p.stdout.close()
    return statistics.median(starts), statistics.median(rss)


METRICS = [
    ("plan1_ms", "`tofu plan`, 1 resource", "ms"),
    ("plan40_ms", "`tofu plan`, 40 resources", "ms"),
    ("start_ms", "provider start → handshake", "ms"),
    ("rss_mb", "provider RSS once started", "MB"),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results-providers"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    entries = providers()
    raw = {name: [] for name, _ in entries}
    with tempfile.TemporaryDirectory(prefix="goplugin-providers") as base:
        dirs = {name: (Workdir(bindir, 1, base), Workdir(bindir, 40, base)) for name, bindir in entries}
        for run in range(args.runs):
            shift = run % len(entries)
            for name, bindir in entries[shift:] + entries[:shift]:
                busy0, own0, wall0 = machine_ticks(), own_ticks(), time.monotonic()
                one, forty = dirs[name]
                start_ms, rss_mb = start(bindir)
                result = {"plan1_ms": one.plan_ms(), "plan40_ms": forty.plan_ms(),
                          "start_ms": start_ms, "rss_mb": rss_mb}
                wall = time.monotonic() - wall0
                foreign = (machine_ticks() - busy0) - (own_ticks() - own0)
                result["foreign_load"] = max(0.0, foreign / (wall * CLK_TCK * NCPU))
                raw[name].append(result)
                print(f"run {run + 1}/{args.runs} {name:5s} plan {result['plan1_ms']:6.0f} ms, "
                      f"40: {result['plan40_ms']:6.0f} ms, start {start_ms:5.1f} ms, "
                      f"RSS {rss_mb:5.1f} MB, foreign load {result['foreign_load']:.0%}", flush=True)
        for one, forty in dirs.values():
            one.tofu("destroy", "-auto-approve", "-input=false")
            forty.tofu("destroy", "-auto-approve", "-input=false")

    summary = {}
    for name, results in raw.items():
        clean = [r for r in results if r["foreign_load"] <= FOREIGN_LIMIT] or results
        pairs = [(r, g) for r, g in zip(results, raw["go"])
                 if r["foreign_load"] <= FOREIGN_LIMIT and g["foreign_load"] <= FOREIGN_LIMIT] \
            or list(zip(results, raw["go"]))
        summary[name] = {
            "runs": len(results), "runs_used": len(clean),
            **{key: statistics.median(r[key] for r in clean) for key, _, _ in METRICS},
            "range": {key: [min(r[key] for r in clean), max(r[key] for r in clean)] for key, _, _ in METRICS},
            "ratio": {key: spread([r[key] / g[key] for r, g in pairs if g[key]]) for key, _, _ in METRICS},
        }
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": {"cpus": NCPU, "kernel": os.uname().release}, "runs": args.runs,
              "tries_per_figure": TRIES, "summary": summary, "raw": raw}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    lines = [
        f"Medians (min–max) of {args.runs} interleaved runs (each figure within a run: the median of "
        f"{TRIES}), {report['date']}, {NCPU} CPUs, OpenTofu v1.10.10. rust = terraform-provider-kv on "
        "goplugin; go = the same provider on terraform-plugin-go v0.31.0. Ratio = rust ÷ go in the "
        "same run, median (min–max) over the runs; lower is better.",
        "",
        "| metric | go | rust | rust ÷ go |",
        "|---|---|---|---|",
    ]
    for key, label, unit in METRICS:
        cells = []
        for name in ("go", "rust"):
            low, high = summary[name]["range"][key]
            cells.append(f"{figure(summary[name][key], unit)} {unit} ({figure(low, unit)}–{figure(high, unit)})")
        r = summary["rust"]["ratio"][key]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {r[0]:.2f}× ({r[1]:.2f}–{r[2]:.2f}) |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
