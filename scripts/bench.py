"""Run every benchmark section and rewrite docs/benchmarks.md.

Each section measures its own baseline in the same run on the same machine and reports ratios;
absolute numbers on these shared machines mean little. Usage::

    make bench                         # everything
    make bench ARGS="--only gas,wallet --quick"
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

SECTIONS: dict[str, str] = {
    "gas": "bench_gas",
    "wallet": "bench_wallet",
    "crm": "bench_crm",
    "settlement": "bench_settlement",
    "api": "bench_api",
}
NOTES_MARKER = "<!-- notes: kept across runs -->"
PG_URL = os.environ.get(
    "FOLLOWPAY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    py = platform.python_version()
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {py}, {platform.system()}"


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_section(name: str, quick: bool) -> list[dict[str, Any]]:
    module = importlib.import_module(SECTIONS[name])
    if name == "crm":
        return module.run(PG_URL, scale=0.1 if quick else 1.0)
    if name == "gas":
        return module.run(payments=256)
    return module.run(quick=quick)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--quick", action="store_true", help="smaller data sets (not for docs)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    command = "make bench" + (f' ARGS="{" ".join(sys.argv[1:])}"' if sys.argv[1:] else "")
    out = [
        "# Benchmarks",
        "",
        "Every figure is a ratio to a baseline measured in the same run on the same machine.",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}",
        f"- machine: {machine()}",
        "",
    ]
    for name in names:
        started = time.monotonic()
        print(f"== {name} ==", flush=True)
        rows = run_section(name, args.quick)
        rendered = table(rows)
        print(rendered, flush=True)
        out += [f"## {name}", "", rendered, "", f"({time.monotonic() - started:.0f} s)", ""]
    if not args.no_write and set(names) == set(SECTIONS):
        target = ROOT / "docs" / "benchmarks.md"
        notes = ""  # hand-written analysis below the marker survives a re-run
        if target.exists() and NOTES_MARKER in target.read_text():
            notes = target.read_text().split(NOTES_MARKER, 1)[1]
        target.write_text("\n".join(out) + "\n" + NOTES_MARKER + notes)
        print("wrote docs/benchmarks.md")
    elif not args.no_write:
        print("(partial run: docs/benchmarks.md left unchanged; run all sections to rewrite it)")


if __name__ == "__main__":
    main()
