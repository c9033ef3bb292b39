"""TFRecord files of pretraining instances → batches for the training loop.

The training input yields GLOBAL batches (batch_size × replicas examples) from one
plain `tf.data` iterator, which can be saved in a `tf.train.Checkpoint` (iterators of
distributed datasets cannot, in TF 2.21). The training step hands each replica its
slice with `split_for_replica`, so replica i of N sees rows [i·B, (i+1)·B) of the global
batch — exactly the rows one device would see with batch N·B.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import TextIO

import tensorflow as tf

from create_pretraining_data import METADATA_FORMAT, feature_spec, metadata_path

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


def _first_record_lengths(path: str) -> dict[str, int] | None:
    """Feature lengths and the largest token id of a file's first record; None if empty."""
    try:
        records = list(tf.data.TFRecordDataset(path).take(1).as_numpy_iterator())
    except tf.errors.OpError as e:
        raise DataMismatchError(f"{path}: not a readable TFRecord file ({e.message})") from e
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


def check_data_files(
    files: Sequence[str],
    max_seq_length: int,
    max_predictions_per_seq: int,
    vocab_size: int,
    flag: str = "--input_file",
    log: TextIO | None = None,
) -> list[DataFile]:
    """Checks that every file fits the model and the flags, before any training.

    Files with our metadata (F.json) are checked from it; files without (e.g. made by
    the original release) from the shapes and ids of their first record. Empty files
    (metadata num_instances 0, or no record at all) are left out, named on `log`.

    Args:
        files: TFRecord paths, e.g. from `expand_record_files`.
        max_seq_length, max_predictions_per_seq: The flags the data must match.
        vocab_size: The model's; every token id must be below it.
        flag: The flag that named the files, for messages.
        log: Where the skipped empty files are reported (None: silent).

    Returns:
        The non-empty files, in the given order.

    Raises:
        DataMismatchError: naming the file, the setting and both values.
        EmptyDataError: if every file is empty (an endless input would wait forever).
    """
    checked, empty = [], []
    for path in files:
        meta_path = metadata_path(path)
        if tf.io.gfile.exists(meta_path):
            with tf.io.gfile.GFile(meta_path) as f:
                try:
                    meta = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataMismatchError(f"{meta_path}: not valid JSON ({e})") from e
            if meta.get("format") != METADATA_FORMAT:
                raise DataMismatchError(f"{meta_path}: not a {METADATA_FORMAT!r} metadata file")
            found = {
                "max_seq_length": meta.get("max_seq_length"),
                "max_predictions_per_seq": meta.get("max_predictions_per_seq"),
                "vocab_size": meta.get("vocab_size"),
            }
            num_instances = meta.get("num_instances")
            if num_instances == 0:  # whatever its settings, it adds nothing
                empty.append(path)
                continue
        else:
            meta, num_instances = None, None
            lengths = _first_record_lengths(path)
            if lengths is None:
                empty.append(path)
                continue
            found = {
                "max_seq_length": lengths["input_ids"],
                "max_predictions_per_seq": lengths["masked_lm_positions"],
            }
            if lengths["max_id"] >= vocab_size:
                raise DataMismatchError(
                    f"{path}: token id {lengths['max_id']} in the first record is outside the "
                    f"model's vocabulary (vocab_size={vocab_size} in the BERT config); the data "
                    "was made with a different vocabulary"
                )
        expected = {
            "max_seq_length": (max_seq_length, "--max_seq_length"),
            "max_predictions_per_seq": (max_predictions_per_seq, "--max_predictions_per_seq"),
            "vocab_size": (vocab_size, "vocab_size in the BERT config"),
        }
        for key, value in found.items():
            want, where = expected[key]
            if value != want:
                raise DataMismatchError(
                    f"{path}: the data has {key}={value} but {where} is {want}; make the data "
                    f"again with matching settings or change {where.split()[0]} to {value}"
                )
        checked.append(DataFile(path, num_instances, meta))
    if not checked:
        raise EmptyDataError(
            f"{flag}: no instances to read: every file holds no records "
            f"({', '.join(empty)}); make the data again or check the path"
        )
    if empty and log is not None:
        print(
            f"{flag}: skipping {len(empty)} empty file(s) (no records): {', '.join(empty)}",
            file=log,
            flush=True,
        )
    return checked


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


def train_dataset(
    files: Sequence[str],
    global_batch_size: int,
    max_seq_length: int,
    max_predictions_per_seq: int,
    seed: int,
    shuffle_buffer: int = 1000,
    cycle_length: int = 4,
) -> tf.data.Dataset:
    """The endless, shuffled training input: one element per global batch.

    Files are shuffled every epoch and read `cycle_length` at a time, interleaved; the
    records are shuffled again in a seeded buffer (the data creator already shuffled
    them within chunks). Everything is deterministic for a given seed, which is what
    lets a resumed run see the same batches as an uninterrupted one.

    Returns:
        A dataset of dicts: input_ids, input_mask, segment_ids [G, S] int32,
        masked_lm_positions, masked_lm_ids [G, P] int32, masked_lm_weights [G, P]
        float32, next_sentence_labels [G] int32, example_weight [G] float32,
        with G = global_batch_size.
    """
    files_ds = tf.data.Dataset.from_tensor_slices(list(files))
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
