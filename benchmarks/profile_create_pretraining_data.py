"""Where create_pretraining_data.py spends its time: one round, one core, by stage.

    python benchmarks/profile_create_pretraining_data.py --input_file=build/kjv.txt \
        --vocab_file=VOCAB

Times, for the whole input in chunks as the tool makes them: tokenizing with a cold and
a warm word cache (pass 1, once per run), storing and reading back the tokenized
documents (pass 2 reads them once per round), building and masking the instances of one
round, serializing them to framed TFRecords, and the shuffle pass over one round's
records (parse the frames, shuffle, write).
"""

import argparse
import collections
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import create_pretraining_data as cpd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--vocab_file", required=True)
    parser.add_argument("--chunk_mb", type=float, default=1.0)
    args = parser.parse_args()
    chunk_bytes = int(args.chunk_mb * (1 << 20))
    worker = cpd.ChunkWorker(cpd.TokenizerSpec(args.vocab_file), cpd.DataOptions())
    parts = cpd.read_documents(
        [args.input_file], collections.Counter(), chunk_bytes // cpd.PARTS_PER_CHUNK
    )
    chunks = [
        [lines for _, _, lines in chunk] for _, chunk, _ in cpd.iter_chunks(parts, chunk_bytes)
    ]

    def timed(label, fn):
        start = time.perf_counter()
        result = fn()
        print(f"{label}: {time.perf_counter() - start:.3f} s", file=sys.stderr)
        return result

    stats = collections.Counter()
    timed("tokenize, cold cache", lambda: [worker.tokenize_documents(c, stats) for c in chunks])
    tokenized = timed(
        "tokenize, warm cache", lambda: [worker.tokenize_documents(c, stats) for c in chunks]
    )
    encoded = timed(
        "encode documents",
        lambda: [
            b"".join(cpd.encode_document(i, d, worker.typecode) for i, d in enumerate(docs))
            for docs in tokenized
        ],
    )
    timed("decode documents", lambda: [cpd.decode_documents(b, worker.typecode) for b in encoded])
    rng = random.Random(0)

    def build():
        return [
            instance
            for docs in tokenized
            for i in range(len(docs))
            for instance in cpd.create_instances_from_document(
                docs, i, worker.options, worker.vocab, rng
            )
        ]

    instances = timed("build and mask instances", build)
    records = timed(
        f"serialize {len(instances):,} instances",
        lambda: [cpd.tfrecord_frame(worker.encoder.serialize(x)) for x in instances],
    )
    with tempfile.TemporaryDirectory() as tmp:
        bucket = os.path.join(tmp, "records")
        with open(bucket, "wb") as f:
            f.write(b"".join(records))
        size = os.path.getsize(bucket)
        with open(os.path.join(tmp, "out"), "wb") as out:
            timed(
                f"shuffle pass over {size / 1e6:.1f} MB of records",
                lambda: cpd.shuffle_records(
                    bucket, random.Random(0), size, lambda batch: out.write(b"".join(batch))
                ),
            )


if __name__ == "__main__":
    main()
