"""Writes a benchmark corpus in the input format from the King James Bible.

The text comes from Debian's bible-kjv-text package (public domain), read with its
`bible` command: one verse per line, one chapter per document. `--copies=K` repeats
the text K times (each copy's chapters in a different seeded order) to make larger
corpora for scaling measurements.

    python benchmarks/make_corpus.py --output=build/kjv.txt --copies=2
"""

import argparse
import random
import re
import shutil
import subprocess
import sys


def kjv_chapters() -> list[list[str]]:
    """The Bible as chapters, each a list of verses (one line of text each)."""
    if shutil.which("bible") is None:
        sys.exit("the `bible` command is missing: apt-get install bible-kjv")
    text = subprocess.run(
        ["bible", "Ge1:1-Re22:21"], capture_output=True, text=True, check=True
    ).stdout
    chapters: list[list[str]] = []
    verse: list[str] = []
    for line in text.splitlines():
        if re.fullmatch(r"\S.* \d+", line.strip()) and not line.startswith(" "):
            if verse:
                chapters[-1].append(" ".join(verse))
                verse = []
            chapters.append([])  # a chapter heading such as "Genesis 1"
        elif re.match(r"\s+\d+ ", line):
            if verse:
                chapters[-1].append(" ".join(verse))
            verse = [re.sub(r"^\s+\d+ ", "", line).strip()]
        elif line.strip():
            verse.append(line.strip())
    if verse:
        chapters[-1].append(" ".join(verse))
    return [c for c in chapters if c]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--copies", type=float, default=1.0, help="may be fractional")
    args = parser.parse_args()
    chapters = kjv_chapters()
    rng = random.Random(0)
    wanted = int(len(chapters) * args.copies)
    out = []
    while len(out) < wanted:
        copy = list(chapters)
        rng.shuffle(copy)
        out.extend(copy[: wanted - len(out)])
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(chapter) for chapter in out) + "\n")
    print(f"{args.output}: {len(out)} documents", file=sys.stderr)


if __name__ == "__main__":
    main()
