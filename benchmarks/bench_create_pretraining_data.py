"""Speed and peak memory of create_pretraining_data.py beside the original release's.

Runs the real commands on corpora made by benchmarks/make_corpus.py (the King James
Bible, Debian's bible-kjv-text) and samples the resident memory of the whole process
tree (the main process plus its workers) every 20 ms. With --original_dir, the original
release's create_pretraining_data.py (a google-research/bert checkout, run under
TensorFlow 2 by benchmarks/run_original_create_pretraining_data.py) runs on the same
corpora in the same run, interleaved with ours, so that the ratios compare like with
like on a shared machine. Prints markdown rows for BENCHMARKS.md.

    git clone https://github.com/google-research/bert build/original_bert
    python benchmarks/bench_create_pretraining_data.py --vocab_file=VOCAB \
        --original_dir=build/original_bert [--repeats=3] [--quick]

Every configuration runs --repeats times; the table gives the median wall time, the
median CPU time of the process tree (user + system, workers included: on a machine
shared with other jobs it varies far less than wall time) and the largest peak RSS.
"vs original" is the median (and range) of the per-repeat ratios to the original's
instances/s (or instances per CPU-second) on the same corpus in the same repeat. Both
tools get --dupe_factor=5 --max_seq_length=128 and otherwise their defaults. The run
stops if our output differs between 1 and 2 workers. A last table compares record
statistics of the two outputs of the 1 MB corpus.
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--dupe_factor=5", "--max_seq_length=128", "--max_predictions_per_seq=20"]


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


def children_cpu_seconds() -> float:
    """User + system time of this process's finished children and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str]) -> tuple[float, int, str, float]:
    """Runs a command; returns (seconds, peak tree RSS in bytes, stderr, CPU seconds).

    The CPU seconds are those of the whole process tree (workers are waited for by
    their parent, so their time is included): unlike wall time, they hardly depend on
    what else runs on the machine.
    """
    cpu = children_cpu_seconds()
    start = time.time()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    err: list[str] = []
    # Drain stderr as it comes (the original logs a lot), while sampling memory.
    reader = threading.Thread(target=lambda: err.extend(process.stderr), daemon=True)
    reader.start()
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(0.02)
    elapsed = time.time() - start
    reader.join()
    text = "".join(err)
    if process.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{text[-3000:]}")
    return elapsed, peak, text, children_cpu_seconds() - cpu


def make_corpus(copies: float, path: str) -> str:
    if not os.path.exists(path):
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", "make_corpus.py"),
             f"--output={path}", f"--copies={copies}"],
            check=True,
        )  # fmt: skip
    return path


def ours(corpus: str, out: str, vocab: str, workers: int) -> tuple[float, int, int, float]:
    """(seconds, peak RSS, instances, CPU seconds) of one run of ours."""
    command = [
        sys.executable, os.path.join(ROOT, "create_pretraining_data.py"),
        f"--input_file={corpus}", f"--output_file={out}", f"--vocab_file={vocab}",
        f"--num_workers={workers}", *FLAGS,
    ]  # fmt: skip
    seconds, peak, _, cpu = run(command)
    with open(out + ".json") as f:
        return seconds, peak, json.load(f)["total_instances"], cpu


def original(corpus: str, out: str, vocab: str, original_dir: str) -> tuple[float, int, int, float]:
    """(seconds, peak RSS, instances, CPU seconds) of one run of the original release."""
    command = [
        sys.executable, os.path.join(ROOT, "benchmarks", "run_original_create_pretraining_data.py"),
        f"--original_dir={original_dir}", "--",
        f"--input_file={corpus}", f"--output_file={out}", f"--vocab_file={vocab}",
        "--do_lower_case=True", "--random_seed=12345", *FLAGS,
    ]  # fmt: skip
    seconds, peak, err, cpu = run(command)
    found = re.findall(r"Wrote (\d+) total instances", err)
    if not found:
        sys.exit(f"the original's output has no 'Wrote N total instances' line:\n{err[-2000:]}")
    return seconds, peak, int(found[-1]), cpu


def record_statistics(path: str) -> dict:
    """Per-record statistics of a TFRecord file of pretraining data."""
    import numpy as np
    import tensorflow as tf

    spec = {
        "input_mask": tf.io.FixedLenFeature([128], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([128], tf.int64),
        "masked_lm_weights": tf.io.FixedLenFeature([20], tf.float32),
        "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
    }
    batch = next(iter(tf.data.TFRecordDataset(path).batch(1 << 30)))
    parsed = {k: v.numpy() for k, v in tf.io.parse_example(batch, spec).items()}
    lengths = parsed["input_mask"].sum(1)
    return {
        "instances": len(lengths),
        "tokens per instance": float(lengths.mean()),
        "full-length share": float(np.mean(lengths == 128)),
        "segment A share": float((parsed["segment_ids"] == 0).sum(1).mean() / lengths.mean()),
        "masked per instance": float(parsed["masked_lm_weights"].sum(1).mean()),
        "random-next share": float(parsed["next_sentence_labels"].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab_file", required=True)
    parser.add_argument("--original_dir", help="a google-research/bert checkout to compare")
    parser.add_argument("--build_dir", default=os.path.join(ROOT, "build", "bench"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="skip the 70 MB rows")
    args = parser.parse_args()
    os.makedirs(args.build_dir, exist_ok=True)
    one = make_corpus(0.25, os.path.join(args.build_dir, "kjv_1mb.txt"))
    seven = make_corpus(1.65, os.path.join(args.build_dir, "kjv_7mb.txt"))
    seventy = (
        None if args.quick else make_corpus(16.5, os.path.join(args.build_dir, "kjv_70mb.txt"))
    )

    # (tool, corpus, workers) in the order of each repeat: the original next to ours.
    configs = []
    for corpus in (seven, one):
        if args.original_dir:
            configs.append(("original", corpus, 1))
        configs += [("ours", corpus, 2), ("ours", corpus, 1)]
    if seventy:
        configs.append(("ours", seventy, 2))
    results = {config: [] for config in configs}
    for repeat in range(args.repeats):
        for config in configs:
            tool, corpus, workers = config
            name = f"{tool}_{os.path.basename(corpus)}_{workers}.tfrecord"
            out = os.path.join(args.build_dir, name)
            if tool == "original":
                result = original(corpus, out, args.vocab_file, args.original_dir)
            else:
                result = ours(corpus, out, args.vocab_file, workers)
            results[config].append(result)
            seconds, peak, instances, cpu = result
            print(
                json.dumps({"repeat": repeat, "tool": tool, "corpus": os.path.basename(corpus),
                            "workers": workers, "seconds": round(seconds, 2),
                            "cpu_seconds": round(cpu, 2), "instances": instances,
                            "peak_rss_mib": round(peak / 2**20),
                            "load_average": round(os.getloadavg()[0], 1)}),
                file=sys.stderr, flush=True,
            )  # fmt: skip

    # The output must not depend on the number of workers.
    for corpus in (seven, one):
        name = os.path.basename(corpus)
        outputs = [os.path.join(args.build_dir, f"ours_{name}_{w}.tfrecord") for w in (1, 2)]
        if open(outputs[0], "rb").read() != open(outputs[1], "rb").read():
            sys.exit(f"different output with 1 and 2 workers: {' '.join(outputs)}")

    print(
        "| tool | corpus | workers | instances | seconds | instances/s | vs original "
        "| CPU s | instances/CPU-s | vs original | peak RSS |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def ratio(runs, baseline, speed) -> str:
        if not baseline:
            return "—"
        ratios = [speed(r) / speed(b) for r, b in zip(runs, baseline)]
        return f"{statistics.median(ratios):.1f}× ({min(ratios):.1f}–{max(ratios):.1f})"

    for config in configs:
        tool, corpus, workers = config
        runs = results[config]
        seconds = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[3] for r in runs)
        instances = runs[0][2]
        baseline = results.get(("original", corpus, 1)) if tool == "ours" else None
        print(
            f"| {tool} | {os.path.getsize(corpus) / 1e6:.1f} MB | {workers} | {instances:,} | "
            f"{seconds:.1f} | {instances / seconds:,.0f} | "
            f"{ratio(runs, baseline, lambda r: r[2] / r[0])} | {cpu:.1f} | "
            f"{instances / cpu:,.0f} | {ratio(runs, baseline, lambda r: r[2] / r[3])} | "
            f"{max(r[1] for r in runs) / 2**20:.0f} MiB |"
        )

    if args.original_dir:
        name = os.path.basename(one)
        ours_stats = record_statistics(os.path.join(args.build_dir, f"ours_{name}_2.tfrecord"))
        original_stats = record_statistics(
            os.path.join(args.build_dir, f"original_{name}_1.tfrecord")
        )
        print()
        print("| statistic (1 MB corpus) | original | ours |")
        print("| --- | ---: | ---: |")
        for key in ours_stats:
            print(f"| {key} | {original_stats[key]:,.3f} | {ours_stats[key]:,.3f} |")


if __name__ == "__main__":
    main()
