"""TFRecord files of pretraining instances → batches for the training loop.

The training input yields GLOBAL batches (batch_size × replicas examples) from one
plain `tf.data` iterator, which can be saved in a `tf.train.Checkpoint` (iterators of
distributed datasets cannot, in TF 2.21). The training step hands each replica its
slice with `split_for_replica`, so replica i of N sees rows [i·B, (i+1)·B) of the global
batch — exactly the rows one device would see with batch N·B.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from typing import TextIO

import tensorflow as tf

import data_format
from data_format import feature_spec, metadata_path

# Eval batches are padded to a full global batch; padded rows carry weight 0.
EXAMPLE_WEIGHT = "example_weight"


class DataMismatchError(ValueError):
    """The data does not fit the model or the flags."""


class EmptyDataError(ValueError):
    """Every input file is empty: there is nothing to train or evaluate on."""


@dataclasses.dataclass(frozen=True)
class DataFile:
    """One TFRecord file and what is known of it."""

    path: str
    num_instances: int | None  # None for files without our metadata (original release)
    metadata: dict | None
    max_seq_length: int
    max_predictions_per_seq: int
    # The file's identity, to notice a file rebuilt under the same name: its size and
    # the SHA-256 of its metadata file (or of its first MiB when it has none).
    size: int = 0
    fingerprint: str = ""

    @property
    def vocab(self) -> str | None:
        """How the data's vocabulary is described in messages (None: unknown)."""
        if not self.metadata:
            return None
        source = self.metadata.get("vocab_file") or self.metadata.get("spm_model_file")
        size = f"{self.metadata['vocab_size']:,} tokens"
        return f"{source} ({size})" if source else f"of {size} (its file is not recorded)"


def expand_record_files(patterns: str | Sequence[str], flag: str = "--input_file") -> list[str]:
    """Expands comma-separated globs into TFRecord files, sorted.

    Our metadata files (F.json) and hidden files (temporary outputs of a running or
    killed data creation) are passed over, so `data/train*` means the record files.

    Raises:
        FileNotFoundError: naming every pattern that matched no record file.
    """
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise FileNotFoundError(f"{flag} is empty: give one or more comma-separated globs")
    files, unmatched = [], []
    for pattern in patterns:
        matches = [
            path
            for path in tf.io.gfile.glob(pattern)
            if not path.endswith(".json")
            and not os.path.basename(path).startswith(".")
            and not tf.io.gfile.isdir(path)
        ]
        if not matches:
            unmatched.append(pattern)
        files.extend(matches)
    if unmatched:
        raise FileNotFoundError(
            f"{flag}: no TFRecord files match {', '.join(map(repr, unmatched))}; create them "
            "with create_pretraining_data.py or check the path"
        )
    return sorted(set(files))


def parsing_spec(max_seq_length: int, max_predictions_per_seq: int) -> dict:
    """`tf.io.FixedLenFeature`s built from the one feature spec of the data writer."""
    dtypes = {"int64": tf.int64, "float32": tf.float32}
    return {
        name: tf.io.FixedLenFeature([length], dtypes[dtype])
        for name, (dtype, length) in feature_spec(max_seq_length, max_predictions_per_seq).items()
    }


NOT_A_TFRECORD_HINT = (
    "make training data from text with create_pretraining_data.py, and give its output "
    "files (not the text, not the .json metadata) to --input_file"
)


def _read_head(path: str, size: int) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(size)


def check_tfrecord_header(path: str, head: bytes) -> None:
    """Raises DataMismatchError unless `head` starts with a valid TFRecord frame header.

    A TFRecord starts with the record's length (8 bytes) and the masked CRC-32C of those
    8 bytes: a text or other binary file fails the checksum at once.
    """
    if not head:
        return
    if len(head) >= 12:
        length = head[:8]
        (stored,) = struct.unpack("<I", head[8:12])
        if data_format.masked_crc32c(length) == stored:
            return
    sample = head[:40].decode("utf-8", errors="replace")
    looks = "text" if sample.isprintable() or "\n" in sample else "binary data"
    raise DataMismatchError(
        f"{path}: not a TFRecord file (its first bytes are not a TFRecord header; it looks "
        f"like {looks}: {sample[:30]!r}); {NOT_A_TFRECORD_HINT}"
    )


def _first_record_lengths(path: str) -> dict[str, int] | None:
    """Feature lengths and the largest token id of a file's first record; None if empty."""
    check_tfrecord_header(path, _read_head(path, 12))
    try:
        records = list(tf.data.TFRecordDataset(path).take(1).as_numpy_iterator())
    except tf.errors.OpError as e:
        raise DataMismatchError(
            f"{path}: the first record cannot be read ({_last_line(e.message)}); "
            "the file is damaged or not a TFRecord file"
        ) from e
    if not records:
        return None
    example = tf.train.Example.FromString(records[0])
    feature = example.features.feature
    lengths = {}
    for name in ("input_ids", "masked_lm_positions", "masked_lm_ids"):
        if name not in feature:
            raise DataMismatchError(
                f"{path}: the first record has no feature {name!r}; expected BERT pretraining "
                "data made by create_pretraining_data.py"
            )
        lengths[name] = len(feature[name].int64_list.value)
    lengths["max_id"] = max(
        max(feature["input_ids"].int64_list.value), max(feature["masked_lm_ids"].int64_list.value)
    )
    return lengths


def _last_line(message: str) -> str:
    """TensorFlow's messages carry function-node prefixes; keep what speaks to a user."""
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", message)
    return message.strip().splitlines()[-1].strip() if message.strip() else message


def _describe_file(path: str) -> tuple[DataFile, int | None]:
    """Reads what is known of one file: (DataFile, largest id of its first record or None).

    Raises:
        DataMismatchError: if the file is not a TFRecord file or its metadata is bad.
    """
    meta_path = metadata_path(path)
    size = tf.io.gfile.stat(path).length
    head = _read_head(path, 12)
    if tf.io.gfile.exists(meta_path):
        with tf.io.gfile.GFile(meta_path) as f:
            text = f.read()
        try:
            meta = data_format.validate_metadata(json.loads(text), meta_path)
        except json.JSONDecodeError as e:
            raise DataMismatchError(f"{meta_path}: not valid JSON ({e})") from e
        except ValueError as e:
            raise DataMismatchError(str(e)) from e
        if meta["num_instances"]:
            check_tfrecord_header(path, head)
        fingerprint = hashlib.sha256(text.encode()).hexdigest()
        data = DataFile(
            path,
            meta["num_instances"],
            meta,
            meta["max_seq_length"],
            meta["max_predictions_per_seq"],
            size,
            fingerprint,
        )
        return data, None
    lengths = _first_record_lengths(path)
    fingerprint = hashlib.sha256(_read_head(path, 1 << 20)).hexdigest()
    if lengths is None:
        return DataFile(path, 0, None, 0, 0, size, fingerprint), None
    data = DataFile(
        path,
        None,
        None,
        lengths["input_ids"],
        lengths["masked_lm_positions"],
        size,
        fingerprint,
    )
    return data, lengths["max_id"]


def check_data_files(
    files: Sequence[str],
    max_seq_length: int | None,
    max_predictions_per_seq: int | None,
    vocab_size: int,
    flag: str = "--input_file",
    log: TextIO | None = None,
) -> list[DataFile]:
    """Checks that every file fits the model and the flags, before any training.

    Files with our metadata (F.json) are checked from it; files without (e.g. made by
    the original release) from the shapes and ids of their first record. Empty files
    (metadata num_instances 0, or no record at all) are left out, named on `log`.
    Every problem of every file is reported at once.

    Args:
        files: TFRecord paths, e.g. from `expand_record_files`.
        max_seq_length, max_predictions_per_seq: The flags the data must match; None
            takes them from the data (whose files must then agree with each other).
        vocab_size: The model's; every token id must be below it. A larger vocab_size
            than the data's (rows padded to a multiple of 8, say) is fine.
        flag: The flag that named the files, for messages.
        log: Where the skipped empty files and padding rows are reported (None: silent).

    Returns:
        The non-empty files, in the given order.

    Raises:
        DataMismatchError: naming each file, the setting and both values.
        EmptyDataError: if every file is empty (an endless input would wait forever).
    """
    checked, empty, problems = [], [], []
    wanted = {"max_seq_length": max_seq_length, "max_predictions_per_seq": max_predictions_per_seq}
    for path in files:
        try:
            data, max_id = _describe_file(path)
        except DataMismatchError as e:
            problems.append(str(e))
            continue
        if data.num_instances == 0:  # whatever its settings, it adds nothing
            empty.append(path)
            continue
        for key, want in wanted.items():
            value = getattr(data, key)
            if want is not None and value != want:
                problems.append(
                    f"{path}: the data has {key}={value} but --{key} is {want}; drop --{key} "
                    "(it defaults to the data's) or make the data again with matching settings"
                )
        if data.metadata is not None and data.metadata["vocab_size"] > vocab_size:
            problems.append(
                f"{path}: the data was made with the vocabulary {data.vocab}, larger than the "
                f"model's vocab_size={vocab_size:,} (BERT config): train with the config of "
                "that vocabulary, or make the data with the vocabulary this model was built for"
            )
        elif max_id is not None and max_id >= vocab_size:
            problems.append(
                f"{path}: token id {max_id:,} in the first record is outside the model's "
                f"vocabulary (vocab_size={vocab_size:,} in the BERT config); the data was made "
                "with another vocabulary"
            )
        checked.append(data)
    if not problems:
        # Without the flags, the files must agree with each other.
        for key, want in wanted.items():
            values = sorted({getattr(f, key) for f in checked})
            if want is None and len(values) > 1:
                examples = {getattr(f, key): f.path for f in checked}
                problems.append(
                    f"{flag}: the files disagree on {key}: "
                    + ", ".join(f"{v} ({examples[v]})" for v in values)
                    + "; train on files made with the same settings"
                )
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise DataMismatchError("the data does not fit:\n  " + "\n  ".join(shown))
    if not checked:
        raise EmptyDataError(
            f"{flag}: no instances to read: every file holds no records "
            f"({', '.join(empty)}); make the data again or check the path"
        )
    if log is not None:
        if empty:
            print(
                f"{flag}: skipping {len(empty)} empty file(s) (no records): {', '.join(empty)}",
                file=log,
                flush=True,
            )
        data_vocab = max((f.metadata["vocab_size"] for f in checked if f.metadata), default=None)
        if data_vocab is not None and data_vocab < vocab_size:
            print(
                f"{flag}: the model's vocab_size {vocab_size:,} exceeds the data's vocabulary "
                f"({data_vocab:,} tokens): embedding rows {data_vocab:,}-{vocab_size - 1:,} are "
                "padding that no example uses",
                file=log,
                flush=True,
            )
    return checked


def check_same_vocabulary(files: Sequence[DataFile]) -> None:
    """All files must have been made with one vocabulary (by the metadata's SHA-256).

    Raises:
        DataMismatchError: naming two files and their vocabularies.
    """
    seen: dict[str, DataFile] = {}
    for data in files:
        if data.metadata is None or not data.metadata.get("vocab_sha256"):
            continue
        seen.setdefault(data.metadata["vocab_sha256"], data)
        if len(seen) > 1:
            a, b = list(seen.values())[:2]
            raise DataMismatchError(
                f"the data was made with different vocabularies: {a.path} with {a.vocab}, "
                f"sha256 {a.metadata['vocab_sha256'][:12]}…, and {b.path} with {b.vocab}, "
                f"sha256 {b.metadata['vocab_sha256'][:12]}…; token ids mean different words "
                "in them: make all train and eval data with one vocabulary"
            )


def find_corrupt_record(paths: Sequence[str]) -> str | None:
    """Walks the files' TFRecord framing and checksums; describes the first fault found.

    Used after TensorFlow reported a damaged record without saying in which file.

    Returns:
        "PATH: <what> at byte N (record #k)", or None if every file is sound.
    """
    header = struct.Struct("<QI")
    for path in paths:
        offset = index = 0
        with tf.io.gfile.GFile(path, "rb") as f:
            while True:
                head = f.read(12)
                if not head:
                    break
                if len(head) < 12:
                    return f"{path}: truncated record header at byte {offset} (record #{index})"
                length, length_crc = header.unpack(head)
                if data_format.masked_crc32c(head[:8]) != length_crc:
                    return (
                        f"{path}: checksum mismatch in the length of record #{index} at byte "
                        f"{offset} (the file is damaged or not a TFRecord file)"
                    )
                body = f.read(length + 4)
                if len(body) < length + 4:
                    return f"{path}: truncated record #{index} at byte {offset}"
                (data_crc,) = struct.unpack("<I", body[length:])
                if data_format.masked_crc32c(body[:length]) != data_crc:
                    return (
                        f"{path}: checksum mismatch in the data of record #{index} at byte {offset}"
                    )
                offset += 12 + length + 4
                index += 1
    return None


def _parse_batch(serialized, max_seq_length: int, max_predictions_per_seq: int) -> dict:
    """Parses a batch of serialized examples; int64 → int32 as the model wants."""
    features = tf.io.parse_example(
        serialized, parsing_spec(max_seq_length, max_predictions_per_seq)
    )
    parsed = {
        name: tf.cast(value, tf.int32) if value.dtype == tf.int64 else value
        for name, value in features.items()
    }
    parsed["next_sentence_labels"] = tf.reshape(parsed["next_sentence_labels"], [-1])
    parsed[EXAMPLE_WEIGHT] = tf.ones_like(parsed["next_sentence_labels"], tf.float32)
    return parsed


def shard_files(files: Sequence[str], shard: int, num_shards: int) -> list[str]:
    """The files of input shard `shard` of `num_shards`: every num_shards-th, from `shard`.

    Raises:
        DataMismatchError: if there are fewer files than shards (a shard would be empty).
    """
    if len(files) < num_shards:
        raise DataMismatchError(
            f"the training data has {len(files)} file(s), fewer than the {num_shards} input "
            "shards (one per worker): every worker reads its own files. Make the data as "
            f"at least {num_shards} files (create_pretraining_data.py --output_file=a,b,...)"
        )
    return list(files)[shard::num_shards]


def train_dataset(
    files: Sequence[str],
    global_batch_size: int,
    max_seq_length: int,
    max_predictions_per_seq: int,
    seed: int,
    shuffle_buffer: int = 1000,
    cycle_length: int = 4,
    shard: int = 0,
    num_shards: int = 1,
) -> tf.data.Dataset:
    """The endless, shuffled training input: one element per global batch (or share).

    Files are shuffled every epoch and read `cycle_length` at a time, interleaved; the
    records are shuffled again in a seeded buffer (the data creator already shuffled
    them globally). Everything is deterministic for a given seed, which is what lets a
    resumed run see the same batches as an uninterrupted one.

    With `num_shards` > 1 this is input shard `shard`: it reads only its own files
    (`shard_files`), with its own seed, and yields `global_batch_size` rows that are its
    share of each global batch; several workers each read one shard, so none reads what
    another one trains on.

    Returns:
        A dataset of dicts: input_ids, input_mask, segment_ids [G, S] int32,
        masked_lm_positions, masked_lm_ids [G, P] int32, masked_lm_weights [G, P]
        float32, next_sentence_labels [G] int32, example_weight [G] float32,
        with G = global_batch_size.
    """
    files = shard_files(files, shard, num_shards)
    seed = seed + 7919 * shard  # other shards, other orders
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    records = files_ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(cycle_length, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    batches = records.batch(global_batch_size, drop_remainder=True)
    batches = batches.map(
        lambda x: _parse_batch(x, max_seq_length, max_predictions_per_seq),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def merge_shards(shard_batches: Sequence[dict], micro_batches: int) -> dict:
    """One global batch from the shares of several input shards.

    Each shard's batch holds K micro-batches of its replicas' rows, [K·R_s·B]; the global
    batch holds, for each micro-batch k, the rows of shard 0's replicas, then shard 1's,
    ... — the layout `replica_micro_batches` expects, with shard s feeding replicas
    [s·R_s, (s+1)·R_s). This is how one process reproduces the batches of several
    workers.
    """
    if len(shard_batches) == 1:
        return shard_batches[0]
    merged = {}
    for name in shard_batches[0]:
        parts = []
        for batch in shard_batches:
            value = batch[name]
            parts.append(tf.reshape(value, [micro_batches, -1, *value.shape[1:]]))
        joined = tf.concat(parts, axis=1)  # [K, R·B, ...]
        merged[name] = tf.reshape(joined, [-1, *joined.shape[2:]])
    return merged


def _pad_to(batch: dict, global_batch_size: int) -> dict:
    """Pads a short final batch with zero rows; padded rows get example_weight 0."""
    short = global_batch_size - tf.shape(batch["input_ids"])[0]
    padded = {}
    for name, value in batch.items():
        paddings = [[0, short]] + [[0, 0]] * (len(value.shape) - 1)
        padded[name] = tf.pad(value, paddings)
        padded[name].set_shape([global_batch_size, *value.shape[1:]])
    return padded


def eval_dataset(
    files: Sequence[str],
    global_batch_size: int,
    max_seq_length: int,
    max_predictions_per_seq: int,
) -> tf.data.Dataset:
    """One ordered pass over the files, in full global batches.

    The last batch is padded to the global batch size with rows of weight 0 (their
    masked_lm_weights and example_weight are 0), so every example counts exactly once
    and the shapes stay static for XLA.
    """
    batches = tf.data.TFRecordDataset(list(files)).batch(global_batch_size)
    batches = batches.map(lambda x: _parse_batch(x, max_seq_length, max_predictions_per_seq))
    batches = batches.map(lambda b: _pad_to(b, global_batch_size))
    return batches.prefetch(tf.data.AUTOTUNE)


def split_for_replica(global_batch: dict, replica_id, num_replicas: int) -> dict:
    """Replica `replica_id`'s rows of a global batch: [i·B, (i+1)·B) with B = G / N."""
    batch_size = global_batch["input_ids"].shape[0] // num_replicas
    start = replica_id * batch_size
    return {name: value[start : start + batch_size] for name, value in global_batch.items()}


def replica_micro_batches(
    global_batch: dict, replica_id, num_replicas: int, micro_batches: int
) -> dict:
    """Replica `replica_id`'s K micro-batches of a global batch of K·R·B rows.

    Micro-batch k of replica r is rows [(k·R + r)·B, (k·R + r + 1)·B): the global batch
    is K consecutive blocks of R·B rows, each split over the replicas as
    `split_for_replica` does. With K = 1 this is `split_for_replica` with a leading
    axis of 1.

    Returns:
        Every feature of `global_batch`, shaped [K, B, ...].
    """
    rows = global_batch["input_ids"].shape[0]
    batch_size = rows // (num_replicas * micro_batches)
    split = {}
    for name, value in global_batch.items():
        blocks = tf.reshape(value, [micro_batches, num_replicas, batch_size, *value.shape[1:]])
        split[name] = tf.gather(blocks, replica_id, axis=1)  # [K, B, ...]
    return split
