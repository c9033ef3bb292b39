"""Turn raw text into masked-LM / next-sentence-prediction TFRecord files.

    python create_pretraining_data.py --input_file=corpus.txt --vocab_file=vocab.txt \
        --output_file=data/train.tfrecord

The input format is the original BERT release's: one sentence per line, a blank line
between documents. Each training instance is `[CLS] A [SEP] B [SEP]` where B is the
true continuation of A half of the time and a span of another document otherwise, with
about 15% of the tokens masked for the masked-LM task.

The original release holds the tokenized corpus and every instance in memory, shuffles
the documents, builds the instances of all --dupe_factor rounds and shuffles them all
before writing. This script makes the same kind of data in bounded memory, in three
passes over temporary files kept in a hidden directory beside the first output file:

1. Tokenize. The corpus is read in pieces of a quarter of --chunk_mb of text (documents
   longer than chunk_mb / PARTS_PER_CHUNK are cut into parts, all parts keeping the id
   of their source document); --num_workers processes tokenize them, once per run, and
   every document is scattered into one of about corpus / chunk_mb *document buckets*
   chosen by a seeded generator, so each bucket is a random sample of the corpus's
   documents. A bounded, seeded reservoir of RESERVOIR_DOCUMENTS source documents is
   kept on the side.
2. Build instances. For each round, each bucket (in slices of about --chunk_mb of text)
   is loaded, its documents shuffled and turned into instances; a next-sentence negative
   takes B from a document of the slice (a random sample of the corpus) that is not
   part of A's *source* document, or from the reservoir when the slice holds no other
   source document. The
   serialized records are scattered into *record buckets* chosen by a seeded generator,
   as many as needed for a bucket to hold about --shuffle_mb of records.
3. Shuffle. Each record bucket is loaded, shuffled and written round-robin to the
   output files. Scattering to uniformly random buckets and shuffling each bucket gives
   a uniformly random order of all the records of all the rounds, as the original's
   in-memory shuffle does.

Memory is bounded by the chunk and shuffle sizes whatever the corpus size, the work of
passes 1 and 2 is spread over the worker processes, and the output is byte-identical for
any --num_workers: every random choice comes from a generator seeded by --random_seed and
the position of the work in the corpus, and results are collected in corpus order.

TensorFlow is not imported here: records are serialized with the hand-written
`tf.train.Example` encoder of data_format.py, which keeps start-up fast and the worker
processes light.
"""

from __future__ import annotations

import array
import codecs
import collections
import concurrent.futures
import dataclasses
import glob
import heapq
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

import cli
import data_format
import tokenization

# The data format lives in data_format.py; these names stay importable from here for the
# modules that import them from the data script.
from data_format import (  # noqa: F401 (re-exported)
    METADATA_FORMAT,
    METADATA_VERSION,
    ExampleEncoder,
    feature_spec,
    iter_frames,
    make_metadata,
    masked_crc32c,
    metadata_path,
    tfrecord_frame,
)

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
    unk_id: int
    is_continuation: Sequence[bool]  # [vocab_size]; True for "##" pieces

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocab:
        special = tokenizer.special_token_ids()
        return cls(
            size=tokenizer.vocab_size,
            cls_id=special[tokenization.CLS],
            sep_id=special[tokenization.SEP],
            mask_id=special[tokenization.MASK],
            unk_id=special[tokenization.UNK],
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
    output = list(token_ids)
    mask_id, vocab_size = vocab.mask_id, vocab.size
    # Integers are drawn as int(draw() * n) throughout: uniform (to 2**-53), and several
    # times faster than rng.randrange, which matters in this innermost loop.
    draw = rng.random
    if not options.do_whole_word_mask:
        candidates = [*range(1, sep_a), *range(sep_a + 1, n - 1)]
        # The first k steps of a Fisher-Yates shuffle: a uniform random k-subset. Each
        # chosen position is masked as it is chosen.
        m = len(candidates)
        k = min(num_to_predict, m)
        for i in range(k):
            j = i + int(draw() * (m - i))
            p = candidates[j]
            candidates[j] = candidates[i]
            candidates[i] = p
            r = draw()
            if r < 0.8:
                output[p] = mask_id
            elif r >= 0.9:
                output[p] = int(draw() * vocab_size)
            # else (10%): keep the original token
        positions = sorted(candidates[:k])
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
        for p in positions:
            r = draw()
            if r < 0.8:
                output[p] = mask_id
            elif r >= 0.9:
                output[p] = int(draw() * vocab_size)
    labels = [token_ids[p] for p in positions]
    return output, positions, labels


class RandomDocuments:
    """Draws the document that the B segment of a next-sentence negative comes from.

    The draw is uniform over the documents of the slice that belong to another source
    document than A's (all parts of a cut document are one source; the original draws
    uniformly over the other documents of the corpus, and a slice is a random sample of
    them). When the slice has none, it is uniform over the reservoir's documents of
    another source; only when neither has one (the corpus is a single document) does B
    come from A's own document, and that is counted.

    Args:
        documents: The slice's documents; each a list of sentences of token ids.
        sources: Source document id of each document; None: each its own source.
        reservoir: Fallback documents: an object with `documents` and `sources` lists
            (read only when needed), or None.
    """

    def __init__(self, documents: Sequence[Sequence[list[int]]], sources=None, reservoir=None):
        self.documents = documents
        self.sources = sources if sources is not None else range(len(documents))
        self.reservoir = reservoir
        self._others: dict[int, list[int]] = {}
        self._reservoir_sources: set[int] | None = None

    def draw(
        self, document_index: int, rng: random.Random, stats: collections.Counter | None = None
    ) -> Sequence[list[int]]:
        """A random document of another source than `documents[document_index]`.

        Counts "random_next_from_reservoir" and "random_next_same_document" in `stats`.
        """
        documents, sources = self.documents, self.sources
        own = sources[document_index]
        # Ten tries first, as the original: nearly always enough, and cheap.
        draw = rng.random  # integers as int(draw() * n): see create_masked_lm_predictions
        for _ in range(10):
            index = int(draw() * len(documents))
            if sources[index] != own:
                return documents[index]
        # Then uniformly among the other sources' documents (still uniform overall).
        others = self._others.get(own)
        if others is None:
            others = self._others[own] = [i for i, s in enumerate(sources) if s != own]
        if others:
            return documents[others[int(draw() * len(others))]]
        reservoir = self.reservoir
        if reservoir is not None and self._reservoir_sources is None:
            self._reservoir_sources = set(reservoir.sources)  # loads the reservoir
        if reservoir is not None and self._reservoir_sources - {own}:
            while True:  # at most one entry is `own`: a few tries at most
                index = int(draw() * len(reservoir.sources))
                if reservoir.sources[index] != own:
                    if stats is not None:
                        stats["random_next_from_reservoir"] += 1
                    return reservoir.documents[index]
        if stats is not None:
            stats["random_next_same_document"] += 1
        return documents[document_index]


def create_instances_from_document(
    documents: Sequence[Sequence[list[int]]],
    document_index: int,
    options: DataOptions,
    vocab: Vocab,
    rng: random.Random,
    stats: collections.Counter | None = None,
    negatives: RandomDocuments | None = None,
) -> list[TrainingInstance]:
    """Builds the instances of one document, as the original release does.

    Sentences are accumulated until they reach a target length (max_seq_length - 3, or
    with probability short_seq_prob a random length from 2, drawn once per document);
    the accumulated sentences are split at a random sentence boundary into A and B. Half
    of the time (always when there is a single sentence) B is replaced by a span of a
    random document of another source (drawn by `negatives`), and the sentences that
    were not used for A are put back to start the next instance.

    Args:
        documents: Documents of the current slice; each a list of sentences, each a list
            of token ids.
        document_index: Which document to build instances from.
        options: Data options.
        vocab: Special ids and vocabulary facts.
        rng: The random generator.
        stats: Optional counter for "truncated_pairs", "random_next" and the counters
            of `RandomDocuments.draw`.
        negatives: Where the B of a negative comes from; by default the other
            documents of `documents`, each its own source.

    Returns:
        The document's instances, in order.
    """
    document = documents[document_index]
    if negatives is None:
        negatives = RandomDocuments(documents)
    max_num_tokens = options.max_seq_length - 3
    # Usually fill the whole sequence; sometimes use shorter ones to reduce the mismatch
    # between pretraining and fine-tuning on short inputs.
    target_seq_length = max_num_tokens
    draw = rng.random  # integers as int(draw() * n): see create_masked_lm_predictions
    if draw() < options.short_seq_prob:
        target_seq_length = 2 + int(draw() * (max_num_tokens - 1))  # 2..max_num_tokens

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
                a_end = 1 + int(draw() * (len(current_chunk) - 1))  # 1..len - 1
            tokens_a = [t for sentence in current_chunk[:a_end] for t in sentence]

            tokens_b: list[int] = []
            is_random_next = len(current_chunk) == 1 or draw() < 0.5
            if is_random_next:
                target_b_length = target_seq_length - len(tokens_a)
                random_document = negatives.draw(document_index, rng, stats)
                for sentence in random_document[int(draw() * len(random_document)) :]:
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
# Input: files → documents → chunks.

# A document is cut into parts of chunk_bytes / PARTS_PER_CHUNK at most, so that a
# document bucket (a random sample of parts) stays near --chunk_mb, and memory stays
# bounded even for a corpus without blank lines. All parts keep their source document.
PARTS_PER_CHUNK = 8

# Input whose first TEXT_SAMPLE_BYTES hold more than NON_TEXT_LIMIT of characters that
# cannot be text (bytes that are not UTF-8, control characters other than whitespace)
# is refused. Measured (non_text_fraction of the first 64 KB): UTF-8 text 0 (KJV);
# French and German text dense in accents, saved as Latin-1 (each accented letter an
# invalid byte, repaired and counted), 6.5% and 8.6%; UTF-16 text 50%; gzip or random
# bytes 55%; TFRecords of this tool 72-76%; an ELF executable 75%. 25% lies between.
TEXT_SAMPLE_BYTES = 1 << 16
NON_TEXT_LIMIT = 0.25
_NON_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufffd]")


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


def non_text_fraction(sample: bytes) -> float:
    """The fraction of the characters of `sample` that cannot be text.

    Counted: each byte that is not part of valid UTF-8 (decoded as U+FFFD) and each
    control character other than tab, line feed, vertical tab, form feed and carriage
    return. A multi-byte character cut at the end of the sample is not counted.
    """
    # An incremental decoder leaves out a character cut at the end of the sample.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(sample)
    if not text:
        return 0.0
    return len(_NON_TEXT.findall(text)) / len(text)


def check_text_files(paths: Iterable[str]) -> None:
    """Refuses input files that are mostly not text, naming them.

    Raises:
        ValueError: naming each file whose first TEXT_SAMPLE_BYTES are more than
            NON_TEXT_LIMIT non-text, with the fraction found.
    """
    problems = []
    for path in paths:
        with open(path, "rb") as f:
            sample = f.read(TEXT_SAMPLE_BYTES)
        fraction = non_text_fraction(sample)
        if fraction > NON_TEXT_LIMIT:
            problems.append(
                f"{path!r}: {fraction:.0%} of its first {len(sample):,} bytes are not text "
                "(control bytes or invalid UTF-8)"
            )
    if problems:
        raise ValueError(
            "input files that are not UTF-8 text:\n  "
            + "\n  ".join(problems)
            + "\nexpected plain UTF-8 text, one sentence per line (is it a TFRecord, "
            "compressed, or in another encoding? convert it with iconv)"
        )


def read_documents(
    paths: Iterable[str], stats: collections.Counter, max_document_bytes: int | None = None
) -> Iterator[tuple[list[str], int, int, int]]:
    """Streams documents from text files in the original release's format.

    One sentence per line, documents separated by blank lines; a file's end also ends a
    document. Bytes that are not valid UTF-8 are replaced by U+FFFD (which the
    tokenizer drops) and counted in `stats["invalid_utf8_lines"]`. A document longer
    than `max_document_bytes` is cut into parts of about that size (each cut counted in
    `stats["documents_split"]`); the parts share their source document's id.

    Yields:
        (lines, bytes read for them, source document id, part index within the source
        document). Source ids count documents from 0 over all files; blank lines after
        the last document of a file come as a part without lines.

    Raises:
        ValueError: naming a file of which more than NON_TEXT_LIMIT is not text (NUL
            bytes, or invalid UTF-8 and control characters in lines that are not
            UTF-8): binary data that the first-bytes check of `check_text_files` missed.
    """
    source = -1
    for path in paths:
        document: list[str] = []
        num_bytes = 0
        document_bytes = 0
        part = 0
        in_document = False
        file_bytes = non_text = invalid = 0
        with open(path, "rb") as f:
            for raw in f:
                num_bytes += len(raw)
                file_bytes += len(raw)
                try:
                    line = raw.decode("utf-8").strip()
                    non_text += raw.count(0)  # NUL: valid UTF-8, but a sign of binary data
                except UnicodeDecodeError:
                    invalid += 1
                    line = raw.decode("utf-8", errors="replace")
                    non_text += len(_NON_TEXT.findall(line))
                    line = line.strip()
                if line:
                    if not in_document:
                        source, part, in_document = source + 1, 0, True
                    elif not document:
                        stats["documents_split"] += 1  # the first line of a next part
                    document.append(line)
                    document_bytes += len(raw)
                    if max_document_bytes and document_bytes >= max_document_bytes:
                        yield document, num_bytes, source, part
                        document, num_bytes, document_bytes, part = [], 0, 0, part + 1
                else:
                    in_document = False
                    if document:
                        yield document, num_bytes, source, part
                        document, num_bytes, document_bytes = [], 0, 0
        if document or num_bytes:
            yield document, num_bytes, source, part
        stats["invalid_utf8_lines"] += invalid
        if non_text > NON_TEXT_LIMIT * file_bytes:
            raise ValueError(
                f"{path!r}: {non_text / file_bytes:.0%} of it is not text (control bytes or "
                "invalid UTF-8); expected plain UTF-8 text, one sentence per line (is it a "
                "binary file?)"
            )


def iter_chunks(
    parts: Iterable[tuple[list[str], int, int, int]], chunk_bytes: int
) -> Iterator[tuple[int, list[tuple[int, int, list[str]]], int]]:
    """Groups document parts into consecutive chunks of at least `chunk_bytes` of text.

    Yields:
        (chunk index, [(source id, part index, lines)], bytes of text).
    """
    chunk: list[tuple[int, int, list[str]]] = []
    size = 0
    index = 0
    for lines, num_bytes, source, part in parts:
        if lines:
            chunk.append((source, part, lines))
        size += num_bytes
        if size >= chunk_bytes:
            yield index, chunk, size
            index += 1
            chunk, size = [], 0
    if chunk or size:
        yield index, chunk, size


def chunk_rng(random_seed: int, *position) -> random.Random:
    """The random generator of one piece of work: a function of the seed and `position`.

    Every random choice is drawn from a generator named by the work's place in the
    corpus (pass, round, chunk), never by the worker that does it, so the output is
    the same for any number of workers.
    """
    return random.Random("bert-gpu/" + "/".join(map(str, (random_seed, *position))))


# ----------------------------------------------------------------------------------------
# Tokenized documents on disk: the document buckets and the reservoir.
#
# A document is stored as int64 (source id, number of sentences), int64 sentence lengths
# and the token ids (uint16 when the vocabulary fits, else uint32), native byte order:
# these files live only for the run, on the machine that wrote them.

_DOCUMENT_HEADER = struct.Struct("<qq")


def token_typecode(vocab_size: int) -> str:
    """The `array` type of the token ids of a vocabulary of `vocab_size` tokens."""
    return "H" if vocab_size <= 1 << 16 else "I"


def encode_document(source: int, sentences: Sequence[Sequence[int]], typecode: str) -> bytes:
    """One tokenized document in the document-bucket format."""
    return (
        _DOCUMENT_HEADER.pack(source, len(sentences))
        + array.array("q", map(len, sentences)).tobytes()
        + array.array(typecode, itertools.chain.from_iterable(sentences)).tobytes()
    )


def decode_documents(buffer: bytes, typecode: str) -> tuple[list[list[list[int]]], list[int]]:
    """Reads back concatenated `encode_document`s.

    Returns:
        (documents: each a list of sentences of token ids, their source ids).
    """
    itemsize = array.array(typecode).itemsize
    documents, sources = [], []
    offset = 0
    view = memoryview(buffer)
    while offset < len(buffer):
        source, num_sentences = _DOCUMENT_HEADER.unpack_from(buffer, offset)
        offset += _DOCUMENT_HEADER.size
        # (array(typecode, memoryview) would read the bytes as values: use frombytes.)
        lengths = array.array("q")
        lengths.frombytes(view[offset : offset + 8 * num_sentences])
        offset += 8 * num_sentences
        total = sum(lengths)
        ids = array.array(typecode)
        ids.frombytes(view[offset : offset + itemsize * total])
        ids = ids.tolist()
        offset += itemsize * total
        document, start = [], 0
        for length in lengths:
            document.append(ids[start : start + length])
            start += length
        documents.append(document)
        sources.append(source)
    return documents, sources


# The reservoir holds one stretch of text of this many source documents, drawn uniformly
# among the corpus's documents (each document one chance, as the original draws the
# document of a negative). It is the fallback source of next-sentence negatives for a
# slice that holds no other document; 1,000 stretches of at most max_seq_length tokens
# are a few MB at most, loaded only by a worker that needs them.
RESERVOIR_DOCUMENTS = 1000


class Reservoir:
    """The reservoir of source documents, loaded from its file when first needed."""

    def __init__(self, path: str, typecode: str):
        self.path = path
        self.typecode = typecode
        self._documents: list[list[list[int]]] | None = None
        self._sources: list[int] = []

    def _load(self) -> None:
        if self._documents is None:
            with open(self.path, "rb") as f:
                self._documents, self._sources = decode_documents(f.read(), self.typecode)

    @property
    def documents(self) -> list[list[list[int]]]:
        self._load()
        return self._documents

    @property
    def sources(self) -> list[int]:
        self._load()
        return self._sources


class ReservoirSample:
    """Keeps the RESERVOIR_DOCUMENTS candidates of smallest key (the main process's side).

    Each source document gets a uniform random key from its chunk's generator; the
    documents of the smallest keys are a uniform sample of the documents, fixed by the
    seed alone. Workers send only candidates below `threshold`, the largest kept key.
    """

    def __init__(self, capacity: int | None = None):
        self.capacity = RESERVOIR_DOCUMENTS if capacity is None else capacity
        self._heap: list[tuple[float, int, bytes]] = []  # (-key, source, document)

    @property
    def threshold(self) -> float:
        return -self._heap[0][0] if len(self._heap) >= self.capacity else 1.0

    def offer(self, key: float, source: int, document: bytes) -> None:
        item = (-key, source, document)
        if len(self._heap) < self.capacity:
            heapq.heappush(self._heap, item)
        elif key < -self._heap[0][0]:
            heapq.heapreplace(self._heap, item)

    def write(self, path: str) -> int:
        """Writes the kept documents (in source order); returns how many."""
        with open(path, "wb") as f:
            for _, _, document in sorted(self._heap, key=lambda item: item[1]):
                f.write(document)
        return len(self._heap)


# ----------------------------------------------------------------------------------------
# Workers: pass 1 (tokenize, scatter documents) and pass 2 (instances, scatter records).


class ChunkWorker:
    """The work of one worker process: tokenizing chunks and turning slices into records."""

    def __init__(self, tokenizer_spec: TokenizerSpec, options: DataOptions):
        self.tokenizer = tokenizer_spec.build()
        self.vocab = Vocab.from_tokenizer(self.tokenizer)
        self.options = options
        self.encoder = ExampleEncoder(
            options.max_seq_length, options.max_predictions_per_seq, self.vocab.size
        )
        self.typecode = token_typecode(self.vocab.size)
        self._reservoirs: dict[str, Reservoir] = {}

    def tokenize_document(self, lines: list[str], stats: collections.Counter) -> list[list[int]]:
        """Lines → token ids; lines without tokens are dropped (and counted)."""
        document = [ids for ids in map(self.tokenizer.tokenize_to_ids, lines) if ids]
        unk = self.vocab.unk_id
        stats["lines"] += len(lines)
        stats["lines_without_tokens"] += len(lines) - len(document)
        stats["tokens"] += sum(map(len, document))
        stats["unknown_tokens"] += sum(ids.count(unk) for ids in document)
        return document

    def tokenize_documents(
        self, raw_documents: list[list[str]], stats: collections.Counter
    ) -> list[list[list[int]]]:
        """Tokenizes documents; those left without tokens are dropped."""
        return [d for d in (self.tokenize_document(r, stats) for r in raw_documents) if d]

    def tokenize_chunk(
        self,
        chunk_index: int,
        parts: list[tuple[int, int, list[str]]],
        num_buckets: int,
        reservoir_below: float,
    ):
        """Pass 1 for one chunk: tokenizes its document parts and scatters them.

        Args:
            chunk_index: The chunk's place in the corpus (seeds its generator).
            parts: (source id, part index, lines) of each document part.
            num_buckets: Number of document buckets.
            reservoir_below: Send reservoir candidates whose key is below this.

        Returns:
            ({bucket: (encoded documents, bytes of text)}, [(key, source, encoded
            stretch)] reservoir candidates, stats).
        """
        stats: collections.Counter = collections.Counter()
        rng = chunk_rng(self.options.random_seed, "documents", chunk_index)
        max_num_tokens = self.options.max_seq_length - 3
        blobs: dict[int, list[bytes]] = collections.defaultdict(list)
        text_bytes: collections.Counter = collections.Counter()
        candidates = []
        for source, part, lines in parts:
            document = self.tokenize_document(lines, stats)
            if not document:
                stats["empty_documents"] += part == 0
                continue
            stats["document_parts"] += 1
            stats["documents"] += part == 0
            bucket = rng.randrange(num_buckets)
            blobs[bucket].append(encode_document(source, document, self.typecode))
            text_bytes[bucket] += sum(map(len, lines))
            if part == 0:
                # Both drawn whatever the threshold (which depends on the work in flight),
                # so that the draws after them do not depend on the number of workers.
                key = rng.random()
                first = rng.randrange(len(document))
                if key < reservoir_below:
                    # A stretch from a random sentence on, enough for any segment B.
                    stretch, length = [], 0
                    for sentence in document[first:]:
                        stretch.append(sentence[:max_num_tokens])
                        length += len(stretch[-1])
                        if length >= max_num_tokens:
                            break
                    candidates.append(
                        (key, source, encode_document(source, stretch, self.typecode))
                    )
        return (
            {b: (b"".join(blob), text_bytes[b]) for b, blob in blobs.items()},
            candidates,
            stats,
        )

    def _reservoir(self, path: str) -> Reservoir:
        if path not in self._reservoirs:
            self._reservoirs = {path: Reservoir(path, self.typecode)}
        return self._reservoirs[path]

    def make_records(
        self,
        dupe_round: int,
        slice_index: int,
        path: str,
        start: int,
        end: int,
        reservoir_path: str,
        num_buckets: int,
    ):
        """Pass 2 for one slice of a document bucket in one round.

        Loads the slice, shuffles its documents, builds their instances and scatters the
        framed records over the record buckets.

        Returns:
            ([framed records of bucket k, concatenated] for k < num_buckets, stats).
        """
        stats: collections.Counter = collections.Counter()
        with open(path, "rb") as f:
            f.seek(start)
            documents, sources = decode_documents(f.read(end - start), self.typecode)
        seed = self.options.random_seed
        rng = chunk_rng(seed, dupe_round, slice_index)
        order = list(range(len(documents)))
        rng.shuffle(order)  # the original shuffles documents before building instances
        documents = [documents[i] for i in order]
        sources = [sources[i] for i in order]
        negatives = RandomDocuments(documents, sources, self._reservoir(reservoir_path))
        instances: list[TrainingInstance] = []
        for document_index in range(len(documents)):
            instances.extend(
                create_instances_from_document(
                    documents, document_index, self.options, self.vocab, rng, stats, negatives
                )
            )
        stats["instances"] += len(instances)
        stats["masked_tokens"] += sum(len(x.masked_positions) for x in instances)
        # A generator of its own: the instances do not depend on the number of buckets.
        scatter = chunk_rng(seed, "records", dupe_round, slice_index).random
        buckets: list[list[bytes]] = [[] for _ in range(num_buckets)]
        serialize = self.encoder.serialize
        for instance in instances:
            bucket = int(scatter() * num_buckets)  # uniform over the buckets
            buckets[bucket].append(tfrecord_frame(serialize(instance)))
        return [b"".join(bucket) for bucket in buckets], stats


_WORKER: ChunkWorker | None = None  # one per worker process, built by its initializer


def _init_worker(tokenizer_spec: TokenizerSpec, options: DataOptions) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group; the main process handles it (stops the
    # pool, removes the temporary files), so the workers ignore it. They start with
    # SIGINT blocked (see Workers._submit), so one that arrives before this line is
    # discarded here rather than killing a worker during start-up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _WORKER = ChunkWorker(tokenizer_spec, options)


def _run_in_worker(method: str, args: tuple):
    return getattr(_WORKER, method)(*args)


class Workers:
    """Runs ChunkWorker methods over tasks in worker processes; results come in order.

    With one worker the work is done in this process. At most 2 × num_workers tasks are
    in flight, so memory stays bounded however many tasks there are.
    """

    def __init__(self, tokenizer_spec: TokenizerSpec, options: DataOptions, num_workers: int):
        self.num_workers = num_workers
        self._local = ChunkWorker(tokenizer_spec, options) if num_workers <= 1 else None
        self._pool = None
        if num_workers > 1:
            # "spawn": workers must not inherit a parent that may have TensorFlow's
            # threads. A ProcessPoolExecutor (unlike multiprocessing.Pool) notices a
            # worker that dies, e.g. killed for lack of memory, instead of waiting for
            # its result forever.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(tokenizer_spec, options),
            )

    def _submit(self, method: str, args: tuple) -> concurrent.futures.Future:
        # Worker processes are started inside submit(). They inherit this thread's
        # signal mask: with SIGINT blocked they cannot be killed by a Ctrl-C before
        # _init_worker makes them ignore it. Here a Ctrl-C is only delayed.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return self._pool.submit(_run_in_worker, method, args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def map(self, method: str, tasks: Iterable[tuple]) -> Iterator:
        """Yields `ChunkWorker.<method>(*task)` for each task, in the order of the tasks."""
        if self._local is not None:
            for task in tasks:
                yield getattr(self._local, method)(*task)
            return
        pending: collections.deque = collections.deque()
        try:
            for task in tasks:
                pending.append(self._submit(method, task))
                if len(pending) >= 2 * self.num_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except concurrent.futures.process.BrokenProcessPool as e:
            raise RuntimeError(
                "a worker process died (killed by the system, perhaps for lack of memory); "
                "try fewer --num_workers or a smaller --chunk_mb"
            ) from e
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------
# Temporary files: buckets, and the outputs under temporary names until complete.

# At most this many bucket files are open at once (document buckets in pass 1, record
# buckets in pass 2), well under the usual limit of 1,024 open files. A corpus that
# needs more record buckets gets larger ones, which pass 3 splits again.
MAX_DOCUMENT_BUCKETS = 256
MAX_RECORD_BUCKETS = 512


class BucketFiles:
    """`count` temporary files in `directory`, filled by appending."""

    def __init__(self, directory: str, name: str, count: int):
        self.paths = [os.path.join(directory, f"{name}-{i:05d}") for i in range(count)]
        self.sizes = [0] * count
        self.files = []
        for path in self.paths:
            self.files.append(open(path, "wb"))  # noqa: SIM115 (closed in close())

    def append(self, index: int, data: bytes) -> None:
        self.files[index].write(data)
        self.sizes[index] += len(data)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def remove(self) -> None:
        self.close()
        for path in self.paths:
            if os.path.exists(path):
                os.remove(path)


def _file_frames(f) -> Iterator[bytes]:
    """The framed TFRecords of an open file, one by one (for files too large to load)."""
    while header := f.read(12):
        (length,) = struct.unpack_from("<Q", header)
        yield header + f.read(length + 4)


def shuffle_records(path: str, rng: random.Random, limit_bytes: int, write, depth: int = 0) -> None:
    """Pass 3 for one record bucket: writes its framed records in a random order.

    A bucket of at most `limit_bytes` is loaded and shuffled in memory. A larger one
    (the size estimate was low, or the corpus needs more buckets than may be open at
    once) is first scattered into smaller buckets, each then shuffled: the order is
    uniformly random either way.

    Args:
        path: The bucket file; removed when done.
        rng: The bucket's random generator.
        limit_bytes: The memory budget (--shuffle_mb).
        write: Called with lists of records, in order.
    """
    size = os.path.getsize(path)
    if size > limit_bytes and depth < 3:
        count = min(math.ceil(size / limit_bytes) + 1, MAX_RECORD_BUCKETS)
        smaller = BucketFiles(os.path.dirname(path), os.path.basename(path) + "-split", count)
        try:
            with open(path, "rb") as f:
                for record in _file_frames(f):
                    smaller.append(rng.randrange(count), record)
            smaller.close()
            os.remove(path)
            for smaller_path in smaller.paths:
                shuffle_records(smaller_path, rng, limit_bytes, write, depth + 1)
        finally:
            smaller.remove()
        return
    with open(path, "rb") as f:
        buffer = f.read()
    starts = array.array("q", (start for start, _ in iter_frames(buffer, path)))
    starts.append(len(buffer))
    order = list(range(len(starts) - 1))
    rng.shuffle(order)
    view = memoryview(buffer)
    batch = 8192  # records per write call: bounded extra memory for the views
    for i in range(0, len(order), batch):
        write([view[starts[j] : starts[j + 1]] for j in order[i : i + batch]])
    del view
    os.remove(path)


def _temp_prefix(path: str) -> str:
    # Dot-prefixed, so a training glob such as data/train* never matches it.
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-")


class RecordFiles:
    """The output TFRecord files, filled round-robin, committed all at once.

    Everything a run writes lives under hidden temporary names holding its process id
    until the commit: `.F.tmp-PID` for each output F, `.F.tmp-PID.json` for its metadata
    and the work directory `.F0.tmp-PID.work/` (the buckets) beside the first output.
    """

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
        self.work_dir = _temp_prefix(self.paths[0]) + f"{os.getpid()}.work"
        try:
            for path in self.paths:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self._remove_stale_temporaries(path, log)
                temp = _temp_prefix(path) + str(os.getpid())
                self.temp_paths.append(temp)
                self.files.append(open(temp, "wb"))  # noqa: SIM115 (closed in commit/abort)
            path = self.work_dir
            os.mkdir(self.work_dir)
        except OSError as e:
            self.abort()
            raise OSError(
                f"cannot write output file {path!r}: {e.strerror or e}; check that the "
                "directory exists or can be created and is writable"
            ) from e

    @staticmethod
    def _remove_stale_temporaries(path: str, log) -> None:
        """Deletes what killed runs (SIGKILL) left behind for `path`."""
        prefix = _temp_prefix(path)
        for leftover in glob.glob(glob.escape(prefix) + "*"):
            pid = re.match(r"\d+", leftover[len(prefix) :])
            if pid and not cli.pid_alive(int(pid.group())):
                if os.path.isdir(leftover):
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    os.remove(leftover)
                if log is not None:
                    print(f"removed {leftover}, left by a killed run", file=log)

    def write(self, records: Sequence[bytes]) -> None:
        """Appends framed records, record i to the file after the one of record i-1."""
        n = len(self.files)
        for k in range(min(n, len(records))):
            f = (self._next + k) % n
            mine = records[k::n]
            self.files[f].write(b"".join(mine))
            self.counts[f] += len(mine)
        self._next = (self._next + len(records)) % n

    def commit(self, metadata: dict) -> None:
        """Closes the files, moves them to their final names and writes their metadata.

        Every metadata file is written under a temporary name first; then, with
        SIGINT/SIGTERM held off, the previous outputs are removed, the metadata files
        renamed, and last the record files: a record file under its final name always
        has its own metadata beside it, never an older one.
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
            for path in self.paths:
                for old in (path, metadata_path(path)):
                    if os.path.lexists(old):
                        os.remove(old)
            for path, temp in zip(self.paths, self.temp_paths):
                os.replace(temp + ".json", metadata_path(path))
            for path, temp in zip(self.paths, self.temp_paths):
                os.replace(temp, path)
            self.temp_paths = []
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def abort(self) -> None:
        """Closes and deletes the temporary files; nothing appears under a final name."""
        for f in self.files:
            f.close()
        for temp in self.temp_paths:
            for leftover in (temp, temp + ".json"):
                if os.path.exists(leftover):
                    os.remove(leftover)
        self.temp_paths = []
        shutil.rmtree(self.work_dir, ignore_errors=True)


def format_duration(seconds: float) -> str:
    """H:MM:SS for progress lines and ETAs; "?" when the time is not finite."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# A vocabulary that fits the text leaves few tokens unknown: the released uncased BERT
# vocabulary with lower-casing leaves none of the King James Bible's 1,005,183 tokens
# [UNK] (benchmarks/make_corpus.py's text). With --nodo_lower_case the same vocabulary
# leaves 9.8% of them unknown (every capitalised word it lacks as such; 12.9% on the
# evaluation's corpus). 1% is far above the first and far below the second; a corpus
# above it is worth a look whatever the cause (casing, another language or script, a
# wrong file).
UNKNOWN_TOKEN_WARNING = 0.01


def _has_upper_case_tokens(tokenizer) -> bool:
    """Whether any ordinary token of the vocabulary has upper-case letters (a cased one)."""
    for token in tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size)):
        if token[:1] in "[<" and token[-1:] in "]>":  # [CLS], [unused0], <unk>, ...
            continue
        if token != token.lower():
            return True
    return False


def unknown_token_advice(tokenizer, do_lower_case: bool) -> str:
    """What to check when too many tokens are [UNK], knowing the vocabulary's casing."""
    cased_vocabulary = _has_upper_case_tokens(tokenizer)
    if not do_lower_case and not cased_vocabulary:
        return (
            "the vocabulary has no upper-case tokens (an uncased vocabulary) but "
            "--nodo_lower_case keeps the text's case: use --do_lower_case"
        )
    return (
        "check the casing flag against the vocabulary (--do_lower_case for an uncased "
        "vocabulary, --nodo_lower_case for a cased one) and that the vocabulary covers "
        "the corpus's language and script"
    )


def record_bucket_count(
    stats: collections.Counter, options: DataOptions, vocab: Vocab, shuffle_bytes: int
) -> int:
    """How many record buckets pass 2 fills, for buckets of at most about shuffle_bytes.

    The records' size is estimated from pass 1's counts, erring on the large side: an
    instance uses about 0.7 max_num_tokens tokens of its document on corpora of long
    documents (KJV, max_seq_length 128: 91 of 125; a random B comes from elsewhere), so
    half of max_num_tokens per instance, plus one instance per document part for short
    documents, and every record as long as the largest possible one (KJV: about twice
    the records' real size). Too many buckets only means smaller ones; a bucket that
    still outgrows the budget is split again in pass 3.
    """
    max_num_tokens = options.max_seq_length - 3
    per_round = stats["tokens"] / (max_num_tokens / 2) + stats["document_parts"]
    largest = TrainingInstance(
        token_ids=[vocab.size - 1] * options.max_seq_length,
        num_a=1,
        masked_positions=[options.max_seq_length - 1] * options.max_predictions_per_seq,
        masked_ids=[vocab.size - 1] * options.max_predictions_per_seq,
        is_random_next=True,
    )
    encoder = ExampleEncoder(options.max_seq_length, options.max_predictions_per_seq, vocab.size)
    record_bytes = len(tfrecord_frame(encoder.serialize(largest)))
    estimate = per_round * options.dupe_factor * record_bytes
    return max(1, min(MAX_RECORD_BUCKETS, math.ceil(estimate / shuffle_bytes)))


class _Progress:
    """Progress lines every `seconds`, with a rate and an ETA for the current pass."""

    def __init__(self, say, seconds: float):
        self.say = say
        self.seconds = seconds

    def start(self, total: float) -> None:
        self.begin = self.last = time.time()
        self.total = total

    def update(self, done: float, message: str) -> None:
        now = time.time()
        if now - self.last < self.seconds:
            return
        self.last = now
        rate = done / max(now - self.begin, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        self.say(f"  {message}, ETA {format_duration(eta)}")


def create_pretraining_data(
    input_files: str | Sequence[str],
    output_files: str | Sequence[str],
    tokenizer_spec: TokenizerSpec,
    options: DataOptions,
    num_workers: int = 1,
    chunk_bytes: int = 1 << 20,
    shuffle_bytes: int = 64 << 20,
    log=sys.stderr,
    progress_seconds: float = 5.0,
) -> dict:
    """Creates pretraining TFRecords from text files.

    Args:
        input_files: Comma-separated globs, or a list of globs.
        output_files: Comma-separated paths, or a list; the shuffled instances are
            spread round-robin over them.
        tokenizer_spec: Which vocabulary or SentencePiece model to use.
        options: How instances are built.
        num_workers: Worker processes (1: work in this process).
        chunk_bytes: Text per chunk and per document slice; see the module docstring.
        shuffle_bytes: Records held in memory at once by the global shuffle (about).
        log: Where progress and the summary go (None: silent).
        progress_seconds: Interval between progress lines.

    Returns:
        A summary: instances per file, elapsed seconds, the [UNK] rate and the counters.

    Raises:
        FileNotFoundError: for missing or unreadable input files.
        ValueError: for input that is not text, an empty corpus, a vocabulary lacking
            special tokens, or out-of-range sizes.
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
    if shuffle_bytes <= 0:
        raise ValueError(f"--shuffle_mb must make a positive number of bytes, got {shuffle_bytes}")
    if num_workers < 1:
        raise ValueError(
            f"--num_workers={num_workers}: expected at least 1 (0 on the "
            "command line means one per CPU core)"
        )
    check_text_files(paths)
    tokenizer = tokenizer_spec.build()
    vocab = Vocab.from_tokenizer(tokenizer)  # raises if special tokens are missing
    total_bytes = sum(os.path.getsize(p) for p in paths)

    def say(message: str) -> None:
        if log is not None:
            print(message, file=log, flush=True)

    say(
        f"create_pretraining_data: {len(paths)} input file(s), {total_bytes / 1e6:.2f} MB; "
        f"vocabulary {tokenizer_spec.path} ({vocab.size} tokens); {num_workers} worker(s); "
        f"max_seq_length={options.max_seq_length} dupe_factor={options.dupe_factor}"
    )
    progress = _Progress(say, progress_seconds)
    stats: collections.Counter = collections.Counter()
    outputs = None
    try:
        outputs = RecordFiles(output_files, log)
        work = outputs.work_dir
        with Workers(tokenizer_spec, options, num_workers) as workers:
            # Pass 1: tokenize, scatter the documents, sample the reservoir.
            num_document_buckets = max(
                1, min(MAX_DOCUMENT_BUCKETS, math.ceil(total_bytes / chunk_bytes))
            )
            say(
                f"pass 1/3: tokenizing {total_bytes / 1e6:.2f} MB into "
                f"{num_document_buckets} document bucket(s)"
            )
            document_buckets = BucketFiles(work, "documents", num_document_buckets)
            reservoir = ReservoirSample()
            # Each bucket is cut into slices of about chunk_bytes of text: (bucket, start, end).
            slices: list[tuple[int, int, int]] = []
            slice_start = [0] * num_document_buckets
            slice_text = [0] * num_document_buckets
            parts = read_documents(paths, stats, max(chunk_bytes // PARTS_PER_CHUNK, 1))
            # Quarter chunks: work enough to share evenly among the workers, even for a
            # corpus of a few chunks.
            chunks = iter_chunks(parts, max(chunk_bytes // 4, 1))
            sizes = {}

            def pass1_tasks():
                for index, chunk, size in chunks:
                    sizes[index] = size
                    yield index, chunk, num_document_buckets, reservoir.threshold

            progress.start(total_bytes)
            done = 0
            for index, (blobs, candidates, chunk_stats) in enumerate(
                workers.map("tokenize_chunk", pass1_tasks())
            ):
                for bucket, (blob, text) in sorted(blobs.items()):
                    document_buckets.append(bucket, blob)
                    slice_text[bucket] += text
                    if slice_text[bucket] >= chunk_bytes:
                        end = document_buckets.sizes[bucket]
                        slices.append((bucket, slice_start[bucket], end))
                        slice_start[bucket], slice_text[bucket] = end, 0
                for key, source, document in candidates:
                    reservoir.offer(key, source, document)
                stats.update(chunk_stats)
                done += sizes.pop(index)
                progress.update(
                    done,
                    f"tokenizing: {done / 1e6:.1f}/{total_bytes / 1e6:.1f} MB, "
                    f"{stats['documents']:,} documents",
                )
            document_buckets.close()
            for bucket in range(num_document_buckets):
                end = document_buckets.sizes[bucket]
                if end == slice_start[bucket]:
                    continue
                previous = [i for i, s in enumerate(slices) if s[0] == bucket]
                if previous and slice_text[bucket] < chunk_bytes // 2:
                    slices[previous[-1]] = (bucket, slices[previous[-1]][1], end)  # a tail
                else:
                    slices.append((bucket, slice_start[bucket], end))
            slices.sort()
            if stats["tokens"] == 0:
                raise ValueError(
                    "the corpus produced no training instances: the input files "
                    f"({', '.join(paths)}) contain no text the tokenizer turns into tokens"
                )
            unknown_rate = stats["unknown_tokens"] / stats["tokens"]
            reservoir_path = os.path.join(work, "reservoir")
            reservoir.write(reservoir_path)

            # Pass 2: instances of every round, scattered over the record buckets.
            num_record_buckets = record_bucket_count(stats, options, vocab, shuffle_bytes)
            say(
                f"pass 2/3: {options.dupe_factor} round(s) of instances from {len(slices)} "
                f"document slice(s) into {num_record_buckets} record bucket(s)"
            )
            record_buckets = BucketFiles(work, "records", num_record_buckets)
            tasks = [
                (dupe_round, index, document_buckets.paths[bucket], begin, end,
                 reservoir_path, num_record_buckets)
                for dupe_round in range(options.dupe_factor)
                for index, (bucket, begin, end) in enumerate(slices)
            ]  # fmt: skip
            progress.start(len(tasks))
            for done, (blobs, chunk_stats) in enumerate(workers.map("make_records", tasks), 1):
                for bucket, blob in enumerate(blobs):
                    if blob:
                        record_buckets.append(bucket, blob)
                stats.update(chunk_stats)
                dupe_round = (done - 1) // len(slices)
                progress.update(
                    done,
                    f"instances: round {dupe_round + 1}/{options.dupe_factor}, "
                    f"{stats['instances']:,} instances",
                )
            record_buckets.close()
        document_buckets.remove()

        # Pass 3: each record bucket shuffled into the outputs.
        record_bytes = sum(record_buckets.sizes)
        say(
            f"pass 3/3: shuffling {stats['instances']:,} instances ({record_bytes / 1e6:.1f} MB) "
            f"in {num_record_buckets} bucket(s) into {len(output_files)} output file(s)"
        )
        progress.start(record_bytes)
        done = 0
        for bucket, path in enumerate(record_buckets.paths):
            rng = chunk_rng(options.random_seed, "shuffle", bucket)
            shuffle_records(path, rng, shuffle_bytes, outputs.write)
            done += record_buckets.sizes[bucket]
            progress.update(done, f"shuffling: {done / 1e6:.1f}/{record_bytes / 1e6:.1f} MB")
        metadata = make_metadata(
            created_by="create_pretraining_data.py",
            feature_spec=feature_spec(options.max_seq_length, options.max_predictions_per_seq),
            **dataclasses.asdict(options),
            do_lower_case=tokenizer_spec.do_lower_case,
            vocab_file=tokenizer_spec.vocab_file,
            spm_model_file=tokenizer_spec.spm_model_file,
            vocab_size=vocab.size,
            vocab_sha256=data_format.file_sha256(tokenizer_spec.path),
            input_files=paths,
            output_files=list(output_files),
            num_instances=0,  # set per file by commit()
            total_instances=stats["instances"],
            chunk_bytes=chunk_bytes,
            shuffle_bytes=shuffle_bytes,
            document_buckets=num_document_buckets,
            record_buckets=num_record_buckets,
            documents=stats["documents"],
            tokens=stats["tokens"],
            unknown_token_rate=unknown_rate,
        )
        outputs.commit(metadata)
    except BaseException:
        if outputs is not None:
            outputs.abort()
        raise

    elapsed = time.time() - start
    summary = {
        "instances_per_file": dict(zip(output_files, outputs.counts)),
        "elapsed_seconds": elapsed,
        "unknown_token_rate": unknown_rate,
        "stats": dict(stats),
    }
    say(
        f"wrote {stats['instances']:,} instances in {elapsed:.1f} s "
        f"({stats['instances'] / max(elapsed, 1e-9):,.0f} instances/s), shuffled:"
    )
    for path, count in zip(output_files, outputs.counts):
        say(f"  {path}: {count:,} instances (metadata: {metadata_path(path)})")
    num = max(stats["instances"], 1)
    say(
        f"  documents {stats['documents']:,}, tokens {stats['tokens']:,} "
        f"([UNK] {unknown_rate:.2%}), next-sentence random {stats['random_next'] / num:.1%} "
        f"({stats['random_next_from_reservoir']:,} from the reservoir, "
        f"{stats['random_next_same_document']:,} from their own document), masked tokens "
        f"per instance {stats['masked_tokens'] / num:.1f}, truncated pairs "
        f"{stats['truncated_pairs']:,}"
    )
    say(
        f"  skipped or repaired: {stats['invalid_utf8_lines']:,} lines with invalid UTF-8 "
        f"(bytes replaced), {stats['lines_without_tokens']:,} lines without tokens, "
        f"{stats['empty_documents']:,} documents without tokens, "
        f"{stats['documents_split']:,} cuts in long documents"
    )
    if unknown_rate > UNKNOWN_TOKEN_WARNING:
        say(
            f"  warning: {unknown_rate:.1%} of the tokens are [UNK] (more than "
            f"{UNKNOWN_TOKEN_WARNING:.0%}): the vocabulary does not fit the text; "
            + unknown_token_advice(tokenizer, tokenizer_spec.do_lower_case)
        )
    if stats["random_next_same_document"]:
        say(
            f"  warning: {stats['random_next_same_document']:,} next-sentence negatives came "
            "from their own document: the corpus holds a single document (no blank lines "
            "between documents?)"
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
        "Output TFRecord file(s), comma-separated; the shuffled instances are spread "
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
        "Megabytes of text per unit of work: a worker's memory, and the size of the "
        "random sample of the corpus that next-sentence negatives are drawn from.",
    )
    flags.DEFINE_float(
        "shuffle_mb",
        64.0,
        "Megabytes of records the global shuffle holds in memory at once; the records "
        "wait in temporary files (about the size of the output) beside the first output.",
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
            shuffle_bytes=int(FLAGS.shuffle_mb * (1 << 20)),
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
