"""Where create_pretraining_data.py spends its time: one round, one core, by stage.

    python benchmarks/profile_create_pretraining_data.py --input_file=build/kjv.txt \
        --vocab_file=VOCAB

Times, for the whole input in chunks as the tool makes them: tokenizing with a cold and
a warm word cache, building and masking the instances of one dupe round, and serializing
them to framed TFRecords.
"""

import argparse
import collections
import os
import random
import sys
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
    documents = cpd.read_documents(
        [args.input_file], collections.Counter(), chunk_bytes // cpd.MIN_DOCUMENTS_PER_CHUNK
    )
    chunks = [chunk for _, chunk, _ in cpd.iter_chunks(documents, chunk_bytes)]

    def timed(label, fn):
        start = time.perf_counter()
        result = fn()
        print(f"{label}: {time.perf_counter() - start:.3f} s", file=sys.stderr)
        return result

    timed("tokenize, cold cache", lambda: [worker.tokenize_documents(c, collections.Counter())
                                           for c in chunks])  # fmt: skip
    tokenized = timed("tokenize, warm cache", lambda: [
        worker.tokenize_documents(c, collections.Counter()) for c in chunks])  # fmt: skip
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
    timed(
        f"serialize {len(instances):,} instances",
        lambda: [cpd.tfrecord_frame(worker.encoder.serialize(x)) for x in instances],
    )


if __name__ == "__main__":
    main()
