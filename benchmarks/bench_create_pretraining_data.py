"""Speed and peak memory of create_pretraining_data.py, whole process, start-up included.

Runs the real command on corpora made by benchmarks/make_corpus.py (the King James
Bible, Debian's bible-kjv-text) and samples the resident memory of the whole process
tree (the main process plus its workers) every 20 ms. Prints markdown rows for
BENCHMARKS.md.

    python benchmarks/bench_create_pretraining_data.py --vocab_file=VOCAB [--quick]

Reference figures for the original release on this machine kind are quoted from the
issue tracker (its code is not run here): about 2,800 instances/s on a 7 MB corpus with
dupe_factor=5, max_seq_length=128 (90,692 instances in 33 s, start-up included), and a
peak RSS growing with the corpus from 540 MiB at 1 MB to 820 MiB at 7 MB.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run(command: list[str]) -> tuple[float, int, str]:
    """Runs a command; returns (seconds, peak tree RSS in bytes, stderr)."""
    start = time.time()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(0.02)
    elapsed = time.time() - start
    err = process.stderr.read()
    if process.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{err}")
    return elapsed, peak, err


def make_corpus(copies: float, path: str) -> str:
    if not os.path.exists(path):
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", "make_corpus.py"),
             f"--output={path}", f"--copies={copies}"],
            check=True,
        )  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab_file", required=True)
    parser.add_argument("--build_dir", default=os.path.join(ROOT, "build", "bench"))
    parser.add_argument("--quick", action="store_true", help="skip the 10x memory run")
    args = parser.parse_args()
    os.makedirs(args.build_dir, exist_ok=True)

    rows = []

    def bench(corpus: str, workers: int, label: str) -> dict:
        out = os.path.join(args.build_dir, "out.tfrecord")
        command = [
            sys.executable, os.path.join(ROOT, "create_pretraining_data.py"),
            f"--input_file={corpus}", f"--output_file={out}", f"--vocab_file={args.vocab_file}",
            "--dupe_factor=5", "--max_seq_length=128", f"--num_workers={workers}",
        ]  # fmt: skip
        seconds, peak, _ = run(command)
        with open(out + ".json") as f:
            instances = json.load(f)["total_instances"]
        row = {
            "label": label,
            "corpus_mb": os.path.getsize(corpus) / 1e6,
            "workers": workers,
            "instances": instances,
            "seconds": seconds,
            "instances_per_sec": instances / seconds,
            "peak_rss_mib": peak / 2**20,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        return row

    one = make_corpus(0.25, os.path.join(args.build_dir, "kjv_1mb.txt"))
    seven = make_corpus(1.65, os.path.join(args.build_dir, "kjv_7mb.txt"))
    bench(seven, 1, "7 MB, 1 worker")
    bench(seven, 2, "7 MB, 2 workers")
    bench(one, 2, "1 MB, 2 workers")
    if not args.quick:
        seventy = make_corpus(16.5, os.path.join(args.build_dir, "kjv_70mb.txt"))
        bench(seventy, 2, "70 MB, 2 workers")

    print("| corpus | workers | instances | seconds | instances/s | vs original | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['corpus_mb']:.1f} MB | {r['workers']} | {r['instances']:,} | "
            f"{r['seconds']:.1f} | {r['instances_per_sec']:,.0f} | "
            f"{r['instances_per_sec'] / 2800:.1f}× | {r['peak_rss_mib']:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
