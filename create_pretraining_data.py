"""Turn raw text into masked-LM / next-sentence-prediction TFRecord files.

    python create_pretraining_data.py --input_file=corpus.txt --vocab_file=vocab.txt \
        --output_file=data/train.tfrecord

The input format is the original BERT release's: one sentence per line, a blank line
between documents. Each training instance is `[CLS] A [SEP] B [SEP]` where B is the
true continuation of A half of the time and a span of another document otherwise, with
about 15% of the tokens masked for the masked-LM task.

Unlike the original release, which tokenizes the whole corpus into memory and builds
every instance in one process, this script streams: each of the --dupe_factor rounds is
a pass over the corpus, read in chunks of about --chunk_mb of text (and at least
MIN_DOCUMENTS_PER_CHUNK documents); every chunk is tokenized, turned into instances,
shuffled and serialized by one of --num_workers processes, and the records are written
in (round, chunk) order. Memory is therefore bounded by the chunk size whatever the
corpus size, and the output is identical for any --num_workers because each chunk's
random generator is seeded from (--random_seed, round, chunk index). The trade-off: the
random "B" segments of next-sentence negatives are drawn from the same chunk rather than
the whole corpus, and instances are shuffled within a chunk rather than globally
(training shuffles again across files and records).

TensorFlow is not imported here: records are serialized with a small hand-written
`tf.train.Example` encoder and framed as TFRecords, which keeps start-up fast and the
worker processes light.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import random
import signal
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

import google_crc32c

import tokenization

# ----------------------------------------------------------------------------------------
# The record format. This is the single declaration of the feature spec: the reader in
# input_pipeline.py builds its parsing spec from the same function.


def feature_spec(max_seq_length: int, max_predictions_per_seq: int) -> dict[str, tuple[str, int]]:
    """The TFRecord features of one training instance, as in the original release.

    Args:
        max_seq_length: Tokens per instance, padding included.
        max_predictions_per_seq: Masked-LM predictions per instance, padding included.

    Returns:
        Ordered mapping from feature name to (dtype, length); dtype is "int64" or
        "float32" (a `tf.train.FloatList`).
    """
    return {
        "input_ids": ("int64", max_seq_length),
        "input_mask": ("int64", max_seq_length),
        "segment_ids": ("int64", max_seq_length),
        "masked_lm_positions": ("int64", max_predictions_per_seq),
        "masked_lm_ids": ("int64", max_predictions_per_seq),
        "masked_lm_weights": ("float32", max_predictions_per_seq),
        "next_sentence_labels": ("int64", 1),
    }


METADATA_FORMAT = "bert-gpu pretraining data"
METADATA_VERSION = 1


def metadata_path(record_path: str) -> str:
    """The JSON file that describes how the TFRecord file `record_path` was made."""
    return record_path + ".json"


# ----------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """How instances are built; the flags of the original release with its defaults."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 10
    do_whole_word_mask: bool = False
    random_seed: int = 12345

    def __post_init__(self):
        problems = []
        if not 5 <= self.max_seq_length <= 65536:
            problems.append(
                f"--max_seq_length={self.max_seq_length}: expected an integer from 5 "
                "([CLS] a [SEP] b [SEP]) to 65536"
            )
        if not 1 <= self.max_predictions_per_seq <= max(1, self.max_seq_length - 3):
            problems.append(
                f"--max_predictions_per_seq={self.max_predictions_per_seq}: expected 1 to "
                f"max_seq_length - 3 = {self.max_seq_length - 3}"
            )
        if not 0.0 < self.masked_lm_prob <= 1.0:
            problems.append(f"--masked_lm_prob={self.masked_lm_prob}: expected 0 < p <= 1")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            problems.append(f"--short_seq_prob={self.short_seq_prob}: expected 0 <= p <= 1")
        if self.dupe_factor < 1:
            problems.append(f"--dupe_factor={self.dupe_factor}: expected at least 1")
        if problems:
            raise ValueError("invalid data options:\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """How to build the tokenizer; picklable, so each worker process builds its own."""

    vocab_file: str | None = None
    spm_model_file: str | None = None
    do_lower_case: bool = True

    def build(self):
        if self.spm_model_file:
            return tokenization.SentencePieceTokenizer(
                self.spm_model_file, do_lower_case=self.do_lower_case
            )
        return tokenization.FullTokenizer(self.vocab_file, do_lower_case=self.do_lower_case)

    @property
    def path(self) -> str:
        return self.spm_model_file or self.vocab_file


@dataclasses.dataclass(frozen=True)
class Vocab:
    """What instance building needs to know of the vocabulary, as plain ids."""

    size: int
    cls_id: int
    sep_id: int
    mask_id: int
    is_continuation: Sequence[bool]  # [vocab_size]; True for "##" pieces

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocab:
        special = tokenizer.special_token_ids()
        return cls(
            size=tokenizer.vocab_size,
            cls_id=special[tokenization.CLS],
            sep_id=special[tokenization.SEP],
            mask_id=special[tokenization.MASK],
            is_continuation=tokenizer.continuation_mask(),
        )


# ----------------------------------------------------------------------------------------
# Instances: pure functions over lists of token ids with an explicit random generator.


@dataclasses.dataclass(slots=True)
class TrainingInstance:
    """One `[CLS] A [SEP] B [SEP]` example before padding.

    Attributes:
        token_ids: [n] ids after masking, n <= max_seq_length.
        num_a: Number of tokens of segment A (so segment ids are 0 for the first
            num_a + 2 tokens, 1 for the rest).
        masked_positions: Sorted positions of the masked-LM predictions.
        masked_ids: Original ids at `masked_positions`.
        is_random_next: True when B is a random span of another document.
    """

    token_ids: list[int]
    num_a: int
    masked_positions: list[int]
    masked_ids: list[int]
    is_random_next: bool


def truncate_seq_pair(
    tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random
) -> bool:
    """Truncates a pair in place to at most `max_num_tokens` tokens in total.

    As the original: one token at a time is removed from the longer segment, from its
    front or its back with equal probability, so that truncation does not always cut
    the end of the text.

    Returns:
        True if anything was removed.
    """
    excess = len(tokens_a) + len(tokens_b) - max_num_tokens
    if excess <= 0:
        return False
    # Work on index windows instead of deleting from the front of lists (O(n) each).
    a_start, a_end, b_start, b_end = 0, len(tokens_a), 0, len(tokens_b)
    draw = rng.random
    for _ in range(excess):
        if a_end - a_start > b_end - b_start:
            if draw() < 0.5:
                a_start += 1
            else:
                a_end -= 1
        elif draw() < 0.5:
            b_start += 1
        else:
            b_end -= 1
    tokens_a[:] = tokens_a[a_start:a_end]
    tokens_b[:] = tokens_b[b_start:b_end]
    return True


def create_masked_lm_predictions(
    token_ids: list[int],
    num_a: int,
    options: DataOptions,
    vocab: Vocab,
    rng: random.Random,
) -> tuple[list[int], list[int], list[int]]:
    """Chooses and applies the masked-LM predictions of one `[CLS] A [SEP] B [SEP]`.

    min(max_predictions_per_seq, max(1, round(n * masked_lm_prob))) positions are drawn
    among the non-special tokens (n counts all tokens, as the original); each is replaced
    by [MASK] 80% of the time, by a uniformly random vocabulary id 10% of the time and
    left unchanged 10% of the time. With whole-word masking, the pieces of a word (a
    token and the "##" pieces after it) are chosen together, and a word that would
    overshoot the number of predictions is skipped, as the original does.

    Args:
        token_ids: [n] ids of `[CLS] A [SEP] B [SEP]`.
        num_a: Length of segment A.
        options: Masking options.
        vocab: Special ids, vocabulary size and continuation flags.
        rng: The random generator.

    Returns:
        (masked token ids [n], sorted masked positions [k], original ids there [k]).
    """
    n = len(token_ids)
    num_to_predict = min(options.max_predictions_per_seq, max(1, round(n * options.masked_lm_prob)))
    sep_a = num_a + 1  # position of the first [SEP]
    if not options.do_whole_word_mask:
        candidates = [*range(1, sep_a), *range(sep_a + 1, n - 1)]
        positions = sorted(rng.sample(candidates, min(num_to_predict, len(candidates))))
    else:
        # Group word pieces; a segment's first token always starts a group (even a "##"
        # piece left first by truncation), so no word spans a [SEP].
        is_continuation = vocab.is_continuation
        groups: list[list[int]] = []
        for start, end in ((1, sep_a), (sep_a + 1, n - 1)):
            for i in range(start, end):
                if i > start and is_continuation[token_ids[i]]:
                    groups[-1].append(i)
                else:
                    groups.append([i])
        rng.shuffle(groups)
        positions = []
        for group in groups:
            if len(positions) >= num_to_predict:
                break
            if len(positions) + len(group) <= num_to_predict:
                positions.extend(group)
        positions.sort()

    output = list(token_ids)
    labels = [token_ids[p] for p in positions]
    draw = rng.random
    for p in positions:
        r = draw()
        if r < 0.8:
            output[p] = vocab.mask_id
        elif r >= 0.9:
            output[p] = rng.randrange(vocab.size)
        # else (10%): keep the original token
    return output, positions, labels


def create_instances_from_document(
    documents: Sequence[Sequence[list[int]]],
    document_index: int,
    options: DataOptions,
    vocab: Vocab,
    rng: random.Random,
    stats: collections.Counter | None = None,
) -> list[TrainingInstance]:
    """Builds the instances of one document, as the original release does.

    Sentences are accumulated until they reach a target length (max_seq_length - 3, or
    with probability short_seq_prob a random length from 2, drawn once per document);
    the accumulated sentences are split at a random sentence boundary into A and B. Half
    of the time (always when there is a single sentence) B is replaced by a span of a
    random other document of `documents`, and the sentences that were not used for A are
    put back to start the next instance.

    Args:
        documents: Documents of the current chunk; each a list of sentences, each a list
            of token ids.
        document_index: Which document to build instances from.
        options: Data options.
        vocab: Special ids and vocabulary facts.
        rng: The random generator.
        stats: Optional counter for "truncated_pairs", "random_next" and
            "random_next_same_document" (a negative B that had to come from the same
            document: only when the chunk holds a single document).

    Returns:
        The document's instances, in order.
    """
    document = documents[document_index]
    max_num_tokens = options.max_seq_length - 3
    # Usually fill the whole sequence; sometimes use shorter ones to reduce the mismatch
    # between pretraining and fine-tuning on short inputs.
    target_seq_length = max_num_tokens
    if rng.random() < options.short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances = []
    current_chunk: list[list[int]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            a_end = 1
            if len(current_chunk) >= 2:
                a_end = rng.randint(1, len(current_chunk) - 1)
            tokens_a = [t for sentence in current_chunk[:a_end] for t in sentence]

            tokens_b: list[int] = []
            is_random_next = len(current_chunk) == 1 or rng.random() < 0.5
            if is_random_next:
                target_b_length = target_seq_length - len(tokens_a)
                # Ten tries to draw another document, as the original; a chunk of a
                # single document falls back to itself.
                for _ in range(10):
                    random_index = rng.randint(0, len(documents) - 1)
                    if random_index != document_index:
                        break
                if stats is not None and random_index == document_index:
                    stats["random_next_same_document"] += 1
                random_document = documents[random_index]
                for sentence in random_document[rng.randint(0, len(random_document) - 1) :]:
                    tokens_b.extend(sentence)
                    if len(tokens_b) >= target_b_length:
                        break
                # The unused sentences are put back for the next instance.
                i -= len(current_chunk) - a_end
            else:
                for sentence in current_chunk[a_end:]:
                    tokens_b.extend(sentence)

            truncated = truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            num_a = len(tokens_a)
            token_ids = [vocab.cls_id, *tokens_a, vocab.sep_id, *tokens_b, vocab.sep_id]
            token_ids, positions, labels = create_masked_lm_predictions(
                token_ids, num_a, options, vocab, rng
            )
            instances.append(TrainingInstance(token_ids, num_a, positions, labels, is_random_next))
            if stats is not None:
                stats["truncated_pairs"] += truncated
                stats["random_next"] += is_random_next
            current_chunk = []
            current_length = 0
        i += 1
    return instances


# ----------------------------------------------------------------------------------------
# Serialization: tf.train.Example protocol buffers and TFRecord framing, by hand.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return tag + _varint(len(payload)) + payload


class ExampleEncoder:
    """Serializes TrainingInstances to `tf.train.Example` bytes and TFRecord frames.

    Wire format (proto3): Example{features=1: Features{feature=1: map<string, Feature>}},
    Feature{float_list=2: FloatList{value=1 packed float}, int64_list=3:
    Int64List{value=1 packed int64}}. Each map entry is a message {key=1, value=2}.
    """

    def __init__(self, max_seq_length: int, max_predictions_per_seq: int, vocab_size: int):
        self.max_seq_length = max_seq_length
        self.max_predictions = max_predictions_per_seq
        self.spec = feature_spec(max_seq_length, max_predictions_per_seq)
        # Varint bytes of every value an int64 feature can hold.
        self._varints = [_varint(i) for i in range(max(vocab_size, max_seq_length) + 1)]
        self._zeros = b"\x00" * max(max_seq_length, max_predictions_per_seq)
        self._ones = b"\x01" * max_seq_length
        self._float_one = struct.pack("<f", 1.0)
        self._float_zero = struct.pack("<f", 0.0)
        self._prefixes: dict[tuple[str, bytes, int], bytes] = {}

    @staticmethod
    def _entry(name: str, feature: bytes) -> bytes:
        return _field(b"\x0a", _field(b"\x0a", name.encode()) + _field(b"\x12", feature))

    def _prefixed(self, name: str, kind: bytes, packed: bytes) -> bytes:
        """The map entry of feature `name` whose packed values are `packed`.

        Everything before the packed values (tags, lengths, the key) depends only on
        the name, the kind and len(packed), so it is built once per such triple and
        cached: serialization is then mostly joining precomputed bytes.
        """
        key = (name, kind, len(packed))
        prefix = self._prefixes.get(key)
        if prefix is None:
            placeholder = b"\x00" * len(packed)
            entry = self._entry(name, _field(kind, _field(b"\x0a", placeholder)))
            prefix = self._prefixes[key] = entry[: len(entry) - len(packed)]
        return prefix + packed

    def serialize(self, instance: TrainingInstance) -> bytes:
        """Returns the serialized `tf.train.Example` of one instance, padded."""
        varints = self._varints
        n = len(instance.token_ids)
        pad = self.max_seq_length - n
        k = len(instance.masked_positions)
        pad_k = self.max_predictions - k
        num_segment_a = instance.num_a + 2  # [CLS] A [SEP]
        int64 = b"\x1a"  # Feature.int64_list
        features = b"".join(
            (
                self._prefixed(
                    "input_ids",
                    int64,
                    b"".join([varints[i] for i in instance.token_ids]) + self._zeros[:pad],
                ),
                self._prefixed("input_mask", int64, self._ones[:n] + self._zeros[:pad]),
                self._prefixed(
                    "segment_ids",
                    int64,
                    self._zeros[:num_segment_a]
                    + self._ones[: n - num_segment_a]
                    + self._zeros[:pad],
                ),
                self._prefixed(
                    "masked_lm_positions",
                    int64,
                    b"".join([varints[i] for i in instance.masked_positions]) + self._zeros[:pad_k],
                ),
                self._prefixed(
                    "masked_lm_ids",
                    int64,
                    b"".join([varints[i] for i in instance.masked_ids]) + self._zeros[:pad_k],
                ),
                self._prefixed(
                    "masked_lm_weights",
                    b"\x12",  # Feature.float_list
                    self._float_one * k + self._float_zero * pad_k,
                ),
                self._prefixed(
                    "next_sentence_labels", int64, b"\x01" if instance.is_random_next else b"\x00"
                ),
            )
        )
        size = len(features)
        return b"\x0a" + (varints[size] if size < len(varints) else _varint(size)) + features


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C, rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# ----------------------------------------------------------------------------------------
# Streaming: input files → documents → chunks → (worker processes) → records.


def expand_input_files(patterns: str | Sequence[str]) -> list[str]:
    """Expands comma-separated globs; raises naming every pattern that fails.

    Raises:
        FileNotFoundError: if a pattern matches nothing or a match is not a readable file.
    """
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise FileNotFoundError("--input_file is empty: give one or more comma-separated globs")
    paths, problems = [], []
    for pattern in patterns:
        pattern = pattern.strip()
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            problems.append(f"{pattern!r}: no such file (the glob matched nothing)")
        for path in matches:
            if os.path.isdir(path):
                problems.append(f"{path!r}: is a directory, expected a text file")
            elif not os.access(path, os.R_OK):
                problems.append(f"{path!r}: not readable (permission denied)")
            else:
                paths.append(path)
    if problems:
        raise FileNotFoundError("cannot read the input files:\n  " + "\n  ".join(problems))
    return paths


def read_documents(
    paths: Iterable[str], stats: collections.Counter, max_document_bytes: int | None = None
) -> Iterator[tuple[list[str], int]]:
    """Streams documents from text files in the original release's format.

    One sentence per line, documents separated by blank lines; a file's end also ends a
    document. Bytes that are not valid UTF-8 are replaced by U+FFFD (which the
    tokenizer drops) and counted in `stats["invalid_utf8_lines"]`. A document longer
    than `max_document_bytes` is cut into parts of about that size (counted in
    `stats["documents_split"]`), so that memory stays bounded even for a corpus without
    blank lines.

    Yields:
        (document lines, number of bytes read for it).
    """
    for path in paths:
        document: list[str] = []
        num_bytes = 0
        document_bytes = 0
        cut = False  # the previous part of this document was cut off at the size limit
        with open(path, "rb") as f:
            for raw in f:
                num_bytes += len(raw)
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    stats["invalid_utf8_lines"] += 1
                    line = raw.decode("utf-8", errors="replace").strip()
                if line:
                    stats["documents_split"] += cut
                    cut = False
                    document.append(line)
                    document_bytes += len(raw)
                    if max_document_bytes and document_bytes >= max_document_bytes:
                        yield document, num_bytes
                        document, num_bytes, document_bytes, cut = [], 0, 0, True
                else:
                    cut = False
                    if document:
                        yield document, num_bytes
                        document, num_bytes, document_bytes = [], 0, 0
        if document or num_bytes:
            yield document, num_bytes


# A chunk holds at least this many documents, so that next-sentence negatives come from
# other documents; documents are cut at chunk_bytes / MIN_DOCUMENTS_PER_CHUNK to keep a
# chunk's size near chunk_bytes.
MIN_DOCUMENTS_PER_CHUNK = 8


def iter_chunks(
    documents: Iterable[tuple[list[str], int]], chunk_bytes: int
) -> Iterator[tuple[int, list[list[str]], int]]:
    """Groups documents into chunks of at least `chunk_bytes` of text and at least
    MIN_DOCUMENTS_PER_CHUNK documents.

    A short remainder at the end of the corpus joins the last chunk rather than forming
    a chunk of too few documents. Chunk boundaries depend only on the corpus and
    `chunk_bytes`, never on the number of workers, which is what makes the output
    independent of --num_workers.

    Yields:
        (chunk index, documents, bytes of text).
    """
    held: tuple[list[list[str]], int] | None = None  # a full chunk, yielded one late
    chunk: list[list[str]] = []
    size = 0
    index = 0
    for document, num_bytes in documents:
        if document:
            chunk.append(document)
        size += num_bytes
        if size >= chunk_bytes and len(chunk) >= MIN_DOCUMENTS_PER_CHUNK:
            if held is not None:
                yield index, *held
                index += 1
            held, chunk, size = (chunk, size), [], 0
    if held is not None and len(chunk) < MIN_DOCUMENTS_PER_CHUNK:
        held, chunk, size = (held[0] + chunk, held[1] + size), [], 0
    if held is not None:
        yield index, *held
        index += 1
    if chunk or size:
        yield index, chunk, size


def chunk_rng(random_seed: int, dupe_round: int, chunk_index: int) -> random.Random:
    """The random generator of one chunk in one round: a function of those and the seed."""
    return random.Random(f"bert-gpu/{random_seed}/{dupe_round}/{chunk_index}")


# Counters that describe the corpus rather than the instances: counted in round 0 only.
CORPUS_STATS = ("lines", "lines_without_tokens", "tokens", "documents", "empty_documents")


class ChunkWorker:
    """Tokenizes a chunk of documents and turns it into serialized TFRecords."""

    def __init__(self, tokenizer_spec: TokenizerSpec, options: DataOptions):
        self.tokenizer = tokenizer_spec.build()
        self.vocab = Vocab.from_tokenizer(self.tokenizer)
        self.options = options
        self.encoder = ExampleEncoder(
            options.max_seq_length, options.max_predictions_per_seq, self.vocab.size
        )

    def tokenize_documents(
        self, raw_documents: list[list[str]], stats: collections.Counter
    ) -> list[list[list[int]]]:
        """Lines → token ids; lines without tokens and then-empty documents are dropped."""
        tokenize = self.tokenizer.tokenize_to_ids
        documents = []
        for raw in raw_documents:
            document = [ids for ids in map(tokenize, raw) if ids]
            stats["lines"] += len(raw)
            stats["lines_without_tokens"] += len(raw) - len(document)
            stats["tokens"] += sum(map(len, document))
            if document:
                documents.append(document)
            else:
                stats["empty_documents"] += 1
        stats["documents"] += len(documents)
        return documents

    def process(self, dupe_round: int, chunk_index: int, raw_documents: list[list[str]]):
        """One round of one chunk: (framed TFRecords of its shuffled instances, stats)."""
        stats: collections.Counter = collections.Counter()
        documents = self.tokenize_documents(raw_documents, stats)
        rng = chunk_rng(self.options.random_seed, dupe_round, chunk_index)
        instances: list[TrainingInstance] = []
        for document_index in range(len(documents)):
            instances.extend(
                create_instances_from_document(
                    documents, document_index, self.options, self.vocab, rng, stats
                )
            )
        rng.shuffle(instances)
        stats["instances"] += len(instances)
        stats["masked_tokens"] += sum(len(x.masked_positions) for x in instances)
        serialize = self.encoder.serialize
        return [tfrecord_frame(serialize(x)) for x in instances], stats


_WORKER: ChunkWorker | None = None  # one per worker process, built by its initializer


def _init_worker(tokenizer_spec: TokenizerSpec, options: DataOptions) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group; the main process handles it (stops the
    # pool, removes the temporary outputs), so the workers ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = ChunkWorker(tokenizer_spec, options)


def _process_chunk(dupe_round: int, chunk_index: int, raw_documents: list[list[str]]):
    return _WORKER.process(dupe_round, chunk_index, raw_documents)


def _processed_chunks(tasks, tokenizer_spec, options, num_workers):
    """Processes (round, chunk index, documents, bytes) tasks; yields results in order.

    Yields:
        (round, bytes of text, records, stats). At most 2 × num_workers chunks are in
        flight, so memory stays bounded however large the corpus is.
    """
    if num_workers <= 1:
        worker = ChunkWorker(tokenizer_spec, options)
        for dupe_round, index, documents, size in tasks:
            yield (dupe_round, size, *worker.process(dupe_round, index, documents))
        return
    # "spawn": workers must not inherit a parent that may have TensorFlow's threads. A
    # ProcessPoolExecutor (unlike multiprocessing.Pool) notices a worker that dies, e.g.
    # killed for lack of memory, instead of waiting for its result forever.
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(tokenizer_spec, options),
    )
    try:
        pending: collections.deque = collections.deque()
        for dupe_round, index, documents, size in tasks:
            future = pool.submit(_process_chunk, dupe_round, index, documents)
            pending.append((dupe_round, size, future))
            if len(pending) >= 2 * num_workers:
                dupe_round, size, future = pending.popleft()
                yield (dupe_round, size, *future.result())
        while pending:
            dupe_round, size, future = pending.popleft()
            yield (dupe_round, size, *future.result())
    except concurrent.futures.process.BrokenProcessPool as e:
        raise RuntimeError(
            "a worker process died (killed by the system, perhaps for lack of memory); "
            "try fewer --num_workers or a smaller --chunk_mb"
        ) from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------
# Output: every file is written under a temporary name and renamed when complete.


def _temp_prefix(path: str) -> str:
    # Dot-prefixed, so a training glob such as data/train* never matches it.
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RecordFiles:
    """The output TFRecord files, filled round-robin, committed all at once."""

    def __init__(self, paths: Sequence[str], log=None):
        if len(set(map(os.path.abspath, paths))) != len(paths):
            raise ValueError(f"--output_file names a file twice: {','.join(paths)}")
        for path in paths:
            if os.path.isdir(path):
                raise OSError(f"cannot write output file {path!r}: it is a directory")
        self.paths = list(paths)
        self.temp_paths = []
        self.files = []
        self.counts = [0] * len(paths)
        self._next = 0
        try:
            for path in self.paths:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self._remove_stale_temporaries(path, log)
                temp = _temp_prefix(path) + str(os.getpid())
                self.files.append(open(temp, "wb"))  # noqa: SIM115 (closed in commit/abort)
                self.temp_paths.append(temp)
        except OSError as e:
            self.abort()
            raise OSError(
                f"cannot write output file {path!r}: {e.strerror or e}; check that the "
                "directory exists or can be created and is writable"
            ) from e

    @staticmethod
    def _remove_stale_temporaries(path: str, log) -> None:
        """Deletes temporary outputs that killed runs (SIGKILL) left behind for `path`."""
        for leftover in glob.glob(glob.escape(_temp_prefix(path)) + "*"):
            pid = leftover.rsplit("-", 1)[-1].removesuffix(".json")
            if pid.isdigit() and not _pid_alive(int(pid)):
                os.remove(leftover)
                if log is not None:
                    print(f"removed {leftover}, left by a killed run", file=log)

    def write(self, record: bytes) -> None:
        self.files[self._next].write(record)
        self.counts[self._next] += 1
        self._next = (self._next + 1) % len(self.files)

    def commit(self, metadata: dict) -> None:
        """Closes the files, moves them to their final names and writes their metadata.

        Every metadata file is written (under a temporary name) before anything is
        renamed, and SIGINT/SIGTERM are held off during the renames, so a run never
        leaves a record file beside a stale or missing F.json.
        """
        for f in self.files:
            f.close()
        for temp, count in zip(self.temp_paths, self.counts):
            with open(temp + ".json", "w", encoding="utf-8") as f:
                json.dump(dict(metadata, num_instances=count), f, indent=2, sort_keys=True)
                f.write("\n")
        held = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            for path, temp in zip(self.paths, self.temp_paths):
                if os.path.exists(metadata_path(path)):
                    os.remove(metadata_path(path))  # never pair new records with old metadata
                os.replace(temp, path)
                os.replace(temp + ".json", metadata_path(path))
            self.temp_paths = []
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def abort(self) -> None:
        """Closes and deletes the temporary files; nothing appears under a final name."""
        for f in self.files:
            f.close()
        for temp in self.temp_paths:
            for leftover in (temp, temp + ".json"):
                if os.path.exists(leftover):
                    os.remove(leftover)
        self.temp_paths = []


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def format_duration(seconds: float) -> str:
    """H:MM:SS for progress lines and ETAs; "?" when the time is not finite."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def create_pretraining_data(
    input_files: str | Sequence[str],
    output_files: str | Sequence[str],
    tokenizer_spec: TokenizerSpec,
    options: DataOptions,
    num_workers: int = 1,
    chunk_bytes: int = 1 << 20,
    log=sys.stderr,
    progress_seconds: float = 5.0,
) -> dict:
    """Creates pretraining TFRecords from text files.

    Args:
        input_files: Comma-separated globs, or a list of globs.
        output_files: Comma-separated paths, or a list; instances are spread
            round-robin over them.
        tokenizer_spec: Which vocabulary or SentencePiece model to use.
        options: How instances are built.
        num_workers: Worker processes (1: work in this process).
        chunk_bytes: Text per chunk; see the module docstring.
        log: Where progress and the summary go (None: silent).
        progress_seconds: Interval between progress lines.

    Returns:
        A summary: instances per file, elapsed seconds and the counters.

    Raises:
        FileNotFoundError: for missing or unreadable input files.
        ValueError: for an empty corpus or a vocabulary lacking special tokens.
        OSError: if an output file cannot be written.
    """
    start = time.time()
    paths = expand_input_files(input_files)
    if isinstance(output_files, str):
        output_files = [p.strip() for p in output_files.split(",") if p.strip()]
    if not output_files:
        raise ValueError("--output_file is empty: give one or more comma-separated paths")
    if chunk_bytes <= 0:
        raise ValueError(f"--chunk_mb must make a positive number of bytes, got {chunk_bytes}")
    if num_workers < 1:
        raise ValueError(
            f"--num_workers={num_workers}: expected at least 1 (0 on the "
            "command line means one per CPU core)"
        )
    tokenizer = tokenizer_spec.build()
    vocab = Vocab.from_tokenizer(tokenizer)  # raises if special tokens are missing
    total_bytes = sum(os.path.getsize(p) for p in paths)
    total_work = max(total_bytes * options.dupe_factor, 1)

    def say(message: str) -> None:
        if log is not None:
            print(message, file=log, flush=True)

    say(
        f"create_pretraining_data: {len(paths)} input file(s), {total_bytes / 1e6:.2f} MB; "
        f"vocabulary {tokenizer_spec.path} ({vocab.size} tokens); {num_workers} worker(s); "
        f"max_seq_length={options.max_seq_length} dupe_factor={options.dupe_factor}"
    )
    stats: collections.Counter = collections.Counter()
    outputs = RecordFiles(output_files, log)

    def tasks():
        # Each dupe round is a full pass over the corpus (read again, so memory stays
        # bounded), as in the original, where the copies of a sentence are spread over
        # the whole output rather than clustered around their first appearance.
        for dupe_round in range(options.dupe_factor):
            round_stats = stats if dupe_round == 0 else collections.Counter()
            documents = read_documents(
                paths, round_stats, max(chunk_bytes // MIN_DOCUMENTS_PER_CHUNK, 1)
            )
            for index, chunk, size in iter_chunks(documents, chunk_bytes):
                yield dupe_round, index, chunk, size

    try:
        done_bytes = 0
        last_report = time.time()
        for dupe_round, size, records, chunk_stats in _processed_chunks(
            tasks(), tokenizer_spec, options, num_workers
        ):
            for record in records:
                outputs.write(record)
            if dupe_round > 0:
                for key in CORPUS_STATS:
                    chunk_stats.pop(key, None)
            stats.update(chunk_stats)
            done_bytes += size
            now = time.time()
            if now - last_report >= progress_seconds:
                last_report = now
                rate = done_bytes / max(now - start, 1e-9)
                eta = (total_work - done_bytes) / max(rate, 1e-9)
                say(
                    f"  round {dupe_round + 1}/{options.dupe_factor}: "
                    f"{stats['documents']:,} documents, "
                    f"{stats['instances']:,} instances, {done_bytes / 1e6:.1f}/"
                    f"{total_work / 1e6:.1f} MB ({rate / 1e6:.2f} MB/s), "
                    f"ETA {format_duration(eta)}"
                )
        if stats["instances"] == 0:
            raise ValueError(
                "the corpus produced no training instances: the input files "
                f"({', '.join(paths)}) contain no text the tokenizer turns into tokens"
            )
        metadata = {
            "format": METADATA_FORMAT,
            "version": METADATA_VERSION,
            "created_by": "create_pretraining_data.py",
            "feature_spec": feature_spec(options.max_seq_length, options.max_predictions_per_seq),
            **dataclasses.asdict(options),
            "do_lower_case": tokenizer_spec.do_lower_case,
            "vocab_file": tokenizer_spec.vocab_file,
            "spm_model_file": tokenizer_spec.spm_model_file,
            "vocab_size": vocab.size,
            "vocab_sha256": file_sha256(tokenizer_spec.path),
            "input_files": paths,
            "output_files": list(output_files),
            "total_instances": stats["instances"],
            "chunk_bytes": chunk_bytes,
        }
        outputs.commit(metadata)
    except BaseException:
        outputs.abort()
        raise

    elapsed = time.time() - start
    summary = {
        "instances_per_file": dict(zip(output_files, outputs.counts)),
        "elapsed_seconds": elapsed,
        "stats": dict(stats),
    }
    say(
        f"wrote {stats['instances']:,} instances in {elapsed:.1f} s "
        f"({stats['instances'] / max(elapsed, 1e-9):,.0f} instances/s):"
    )
    for path, count in zip(output_files, outputs.counts):
        say(f"  {path}: {count:,} instances (metadata: {metadata_path(path)})")
    num = max(stats["instances"], 1)
    say(
        f"  documents {stats['documents']:,}, tokens {stats['tokens']:,}, "
        f"next-sentence random {stats['random_next'] / num:.1%}, "
        f"masked tokens per instance {stats['masked_tokens'] / num:.1f}, "
        f"truncated pairs {stats['truncated_pairs']:,}"
    )
    say(
        f"  skipped or repaired: {stats['invalid_utf8_lines']:,} lines with invalid UTF-8 "
        f"(bytes replaced), {stats['lines_without_tokens']:,} lines without tokens, "
        f"{stats['empty_documents']:,} documents without tokens, "
        f"{stats['documents_split']:,} long documents split"
    )
    if stats["random_next_same_document"]:
        say(
            f"  warning: {stats['random_next_same_document']:,} next-sentence negatives came "
            "from their own document (a chunk with a single document: the corpus has too "
            "few documents, or no blank lines between them)"
        )
    empty = [path for path, count in zip(output_files, outputs.counts) if count == 0]
    if empty:
        say(f"  warning: no instances for {', '.join(empty)} (more output files than instances)")
    return summary


# ----------------------------------------------------------------------------------------
# Command line


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("input_file", None, "Input text file(s): comma-separated globs.")
    flags.DEFINE_string(
        "output_file",
        None,
        "Output TFRecord file(s), comma-separated; instances are spread "
        "round-robin over them. Each gets a metadata file beside it, named F.json.",
    )
    flags.DEFINE_string("vocab_file", None, "WordPiece vocabulary the model is trained with.")
    flags.DEFINE_string(
        "spm_model_file",
        None,
        "SentencePiece model to use instead of --vocab_file "
        "(ALBERT-style and multilingual vocabularies).",
    )
    flags.DEFINE_bool("do_lower_case", True, "Lower-case and strip accents (uncased models).")
    flags.DEFINE_bool("do_whole_word_mask", False, "Mask all pieces of a word together.")
    flags.DEFINE_integer("max_seq_length", 128, "Tokens per instance, padding included.")
    flags.DEFINE_integer("max_predictions_per_seq", 20, "Masked-LM predictions per instance.")
    flags.DEFINE_integer("random_seed", 12345, "Seed of the instance generator.")
    flags.DEFINE_integer("dupe_factor", 10, "Times the corpus is used, with different masks.")
    flags.DEFINE_float("masked_lm_prob", 0.15, "Fraction of tokens to mask.")
    flags.DEFINE_float("short_seq_prob", 0.1, "Probability of a shorter-than-maximum instance.")
    flags.DEFINE_integer("num_workers", 0, "Worker processes; 0 means one per CPU core.")
    flags.DEFINE_float(
        "chunk_mb",
        1.0,
        "Megabytes of text per chunk: the scope of the next-sentence "
        "negatives and of the instance shuffle, and the unit of memory use.",
    )


def main(argv: Sequence[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    del argv
    missing = [name for name in ("input_file", "output_file") if not FLAGS[name].value]
    if not FLAGS.vocab_file and not FLAGS.spm_model_file:
        missing.append("vocab_file (or spm_model_file)")
    if missing:
        print(f"error: missing required flag(s): --{', --'.join(missing)}", file=sys.stderr)
        return 2
    if FLAGS.vocab_file and FLAGS.spm_model_file:
        print("error: give --vocab_file or --spm_model_file, not both", file=sys.stderr)
        return 2
    try:
        options = DataOptions(
            max_seq_length=FLAGS.max_seq_length,
            max_predictions_per_seq=FLAGS.max_predictions_per_seq,
            masked_lm_prob=FLAGS.masked_lm_prob,
            short_seq_prob=FLAGS.short_seq_prob,
            dupe_factor=FLAGS.dupe_factor,
            do_whole_word_mask=FLAGS.do_whole_word_mask,
            random_seed=FLAGS.random_seed,
        )
        tokenizer_spec = TokenizerSpec(
            vocab_file=FLAGS.vocab_file,
            spm_model_file=FLAGS.spm_model_file,
            do_lower_case=FLAGS.do_lower_case,
        )
        num_workers = FLAGS.num_workers
        if num_workers == 0:
            num_workers = len(os.sched_getaffinity(0))
        create_pretraining_data(
            FLAGS.input_file,
            FLAGS.output_file,
            tokenizer_spec,
            options,
            num_workers=num_workers,
            chunk_bytes=int(FLAGS.chunk_mb * (1 << 20)),
        )
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":
    from absl import app

    # SIGTERM unwinds like Ctrl-C, so temporary outputs are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    define_flags()
    app.run(main)
