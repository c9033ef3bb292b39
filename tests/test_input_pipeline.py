"""Tests of input_pipeline.py: file checks, the original format, batches, positions."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import create_pretraining_data as cpd
import input_pipeline

SEQ, PRED = 16, 4


def original_style_records(path, num, seq=SEQ, pred=PRED, vocab=50, seed=0):
    """Writes records the way the original release did: tf.train.Example from TF itself.

    Returns the written values, one dict per record.
    """
    rng = np.random.default_rng(seed)
    written = []
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(num):
            values = {
                "input_ids": rng.integers(0, vocab, seq),
                "input_mask": np.array([1] * (seq - i % 3) + [0] * (i % 3)),
                "segment_ids": rng.integers(0, 2, seq),
                "masked_lm_positions": rng.integers(0, seq, pred),
                "masked_lm_ids": rng.integers(0, vocab, pred),
                "masked_lm_weights": rng.integers(0, 2, pred).astype(np.float32),
                "next_sentence_labels": np.array([i % 2]),
            }
            feature = {
                name: (
                    tf.train.Feature(float_list=tf.train.FloatList(value=list(v)))
                    if v.dtype == np.float32
                    else tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))
                )
                for name, v in values.items()
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
            written.append(values)
    return written


def write_metadata(path, **overrides):
    meta = {
        "format": cpd.METADATA_FORMAT,
        "max_seq_length": SEQ,
        "max_predictions_per_seq": PRED,
        "vocab_size": 50,
        "num_instances": 10,
    }
    meta.update(overrides)
    with open(cpd.metadata_path(path), "w") as f:
        json.dump(meta, f)


def test_expand_record_files_skips_metadata_and_temporary_files(tmp_path):
    for name in ("train-0.tfrecord", "train-1.tfrecord", "train-0.tfrecord.json", ".train-2.tmp-1"):
        (tmp_path / name).write_bytes(b"")
    files = input_pipeline.expand_record_files(f"{tmp_path}/train*")
    assert files == [str(tmp_path / "train-0.tfrecord"), str(tmp_path / "train-1.tfrecord")]
    with pytest.raises(FileNotFoundError) as info:
        input_pipeline.expand_record_files(f"{tmp_path}/train*,{tmp_path}/nothing*,{tmp_path}/x")
    assert "nothing*" in str(info.value) and "/x" in str(info.value)
    assert "train*" not in str(info.value)


def test_original_release_records_are_read_exactly(tmp_path):
    path = str(tmp_path / "orig.tfrecord")
    written = original_style_records(path, 10)
    (checked,) = input_pipeline.check_data_files([path], SEQ, PRED, 50)
    assert checked.num_instances is None and checked.metadata is None
    batches = list(input_pipeline.eval_dataset([path], 4, SEQ, PRED))
    assert len(batches) == 3  # 4 + 4 + 2 padded to 4
    rows = {name: np.concatenate([b[name].numpy() for b in batches]) for name in batches[0]}
    np.testing.assert_array_equal(rows["example_weight"], [1] * 10 + [0, 0])
    for name in written[0]:
        expected = np.stack([w[name] for w in written])
        if name == "next_sentence_labels":
            expected = expected[:, 0]
        np.testing.assert_array_equal(rows[name][:10], expected)
        assert not rows[name][10:].any()  # padding rows are zero (weights included)
    assert rows["input_ids"].dtype == np.int32 and rows["masked_lm_weights"].dtype == np.float32


@pytest.mark.parametrize(
    "setting, value, expected",
    [
        ("max_seq_length", 32, f"max_seq_length=32 but --max_seq_length is {SEQ}"),
        ("max_predictions_per_seq", 5,
         f"max_predictions_per_seq=5 but --max_predictions_per_seq is {PRED}"),
        ("vocab_size", 30522,
         "vocabulary of 30,522 tokens (its file is not recorded), larger than the model's "
         "vocab_size=50"),
    ],
)  # fmt: skip
def test_metadata_mismatch_names_file_and_both_values(tmp_path, setting, value, expected):
    path = str(tmp_path / "data.tfrecord")
    original_style_records(path, 2)
    write_metadata(path, **{setting: value})
    with pytest.raises(input_pipeline.DataMismatchError) as info:
        input_pipeline.check_data_files([path], SEQ, PRED, 50)
    message = str(info.value)
    assert path in message and expected in message


def test_every_mismatch_is_reported_at_once_and_settings_default_to_the_data(tmp_path):
    paths = [str(tmp_path / f"data-{i}.tfrecord") for i in range(2)]
    for path in paths:
        original_style_records(path, 2)
    write_metadata(paths[0], max_seq_length=32)
    write_metadata(paths[1], max_predictions_per_seq=5)
    with pytest.raises(input_pipeline.DataMismatchError) as info:
        input_pipeline.check_data_files(paths, SEQ, PRED, 50)
    message = str(info.value)
    assert f"{paths[0]}: the data has max_seq_length=32" in message
    assert f"{paths[1]}: the data has max_predictions_per_seq=5" in message
    # Without the flags the settings come from the data, which must then agree.
    write_metadata(paths[0])
    write_metadata(paths[1])
    files = input_pipeline.check_data_files(paths, None, None, 50)
    assert {(f.max_seq_length, f.max_predictions_per_seq) for f in files} == {(SEQ, PRED)}
    write_metadata(paths[1], max_seq_length=32)
    with pytest.raises(
        input_pipeline.DataMismatchError, match="the files disagree on max_seq_length"
    ):
        input_pipeline.check_data_files(paths, None, None, 50)


def test_a_text_file_is_named_as_not_a_tfrecord_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("One sentence per line.\nAnother one.\n")
    with pytest.raises(input_pipeline.DataMismatchError) as info:
        input_pipeline.check_data_files([str(text)], SEQ, PRED, 50)
    message = str(info.value)
    assert f"{text}: not a TFRecord file" in message and "looks like text" in message
    assert "create_pretraining_data.py" in message and "function_node" not in message


def test_damaged_records_are_found_with_their_file_and_offset(tmp_path):
    paths = [str(tmp_path / f"data-{i}.tfrecord") for i in range(3)]
    for path in paths:
        original_style_records(path, 4)
    assert input_pipeline.find_corrupt_record(paths) is None
    size = os.path.getsize(paths[1])
    record = size // 4  # the records are all the same length
    with open(paths[1], "r+b") as f:  # one flipped byte in the data of the third record
        f.seek(2 * record + 20)
        byte = f.read(1)
        f.seek(2 * record + 20)
        f.write(bytes([byte[0] ^ 0x01]))
    assert input_pipeline.find_corrupt_record(paths) == (
        f"{paths[1]}: checksum mismatch in the data of record #2 at byte {2 * record}"
    )
    with open(paths[2], "r+b") as f:
        f.truncate(size - 7)
    with open(paths[1], "r+b") as f:  # repair the first fault
        f.seek(2 * record + 20)
        f.write(byte)
    assert input_pipeline.find_corrupt_record(paths) == (
        f"{paths[2]}: truncated record #3 at byte {3 * record}"
    )


def test_files_without_metadata_are_checked_from_their_first_record(tmp_path):
    path = str(tmp_path / "orig.tfrecord")
    original_style_records(path, 2, seq=24)
    with pytest.raises(input_pipeline.DataMismatchError, match="max_seq_length=24"):
        input_pipeline.check_data_files([path], SEQ, PRED, 50)
    original_style_records(path, 2, vocab=50)
    with pytest.raises(input_pipeline.DataMismatchError, match="outside the model's vocabulary"):
        input_pipeline.check_data_files([path], SEQ, PRED, 10)
    empty = str(tmp_path / "empty.tfrecord")
    open(empty, "wb").close()
    with pytest.raises(input_pipeline.EmptyDataError, match="no records"):
        input_pipeline.check_data_files([empty], SEQ, PRED, 50)


def test_empty_files_are_skipped_and_named_and_all_empty_is_an_error(tmp_path):
    good, no_records, zero_meta = (str(tmp_path / f"{n}.tfrecord") for n in "abc")
    original_style_records(good, 3)
    open(no_records, "wb").close()  # no metadata, no record
    original_style_records(zero_meta, 0)
    write_metadata(zero_meta, num_instances=0, max_seq_length=999)  # settings of no matter
    log = io.StringIO()
    checked = input_pipeline.check_data_files(
        [good, no_records, zero_meta], SEQ, PRED, 50, flag="--eval_input_file", log=log
    )
    assert [f.path for f in checked] == [good]
    assert "--eval_input_file: skipping 2 empty file(s)" in log.getvalue()
    assert no_records in log.getvalue() and zero_meta in log.getvalue()
    # Nothing left: an error naming the flag and every file, not an endless wait for data.
    with pytest.raises(input_pipeline.EmptyDataError) as info:
        input_pipeline.check_data_files([no_records, zero_meta], SEQ, PRED, 50)
    message = str(info.value)
    assert message.startswith("--input_file: no instances")
    assert no_records in message and zero_meta in message


def _ids(batch):
    return [tuple(row) for row in batch["input_ids"].numpy()]


def test_train_dataset_is_seeded_and_covers_every_record(tmp_path):
    paths = [str(tmp_path / f"part-{i}.tfrecord") for i in range(3)]
    written = [original_style_records(p, 8, seed=i) for i, p in enumerate(paths)]
    all_ids = sorted(tuple(w["input_ids"]) for part in written for w in part)

    def first_batches(seed, n, buffer=100):
        dataset = input_pipeline.train_dataset(
            paths, 6, SEQ, PRED, seed=seed, shuffle_buffer=buffer
        )
        return [_ids(b) for b in dataset.take(n)]

    a, b, c = first_batches(1, 8), first_batches(1, 8), first_batches(2, 8)
    assert a == b and a != c
    # Without the record shuffle (which mixes epochs), 24 records are exactly one epoch,
    # and the next epoch visits the files in another order.
    unshuffled = first_batches(1, 8, buffer=1)
    assert sorted(row for batch in unshuffled[:4] for row in batch) == all_ids
    assert sorted(row for batch in unshuffled[4:] for row in batch) == all_ids
    assert unshuffled[:4] != unshuffled[4:]


def test_iterator_position_survives_a_checkpoint(tmp_path):
    path = str(tmp_path / "data.tfrecord")
    original_style_records(path, 40)
    dataset = input_pipeline.train_dataset([path], 4, SEQ, PRED, seed=3, shuffle_buffer=16)
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    checkpoint = tf.train.Checkpoint(data=iterator)
    saved = checkpoint.save(str(tmp_path / "ckpt"))
    expected = [_ids(next(iterator)) for _ in range(12)]
    fresh = iter(input_pipeline.train_dataset([path], 4, SEQ, PRED, seed=3, shuffle_buffer=16))
    tf.train.Checkpoint(data=fresh).restore(saved).assert_consumed()
    assert [_ids(next(fresh)) for _ in range(12)] == expected


def _as_numpy(batch):
    return {name: value.numpy() for name, value in batch.items()}


def _assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert sorted(a) == sorted(e)
        for name in e:
            np.testing.assert_array_equal(a[name], e[name], err_msg=f"batch {i}: {name}")


def test_iterator_position_over_several_files_survives_a_checkpoint(tmp_path):
    # 4 files of different lengths, 3 read at a time (interleaved), records shuffled in a
    # buffer of 8: the saved position includes the file order of the epoch, the readers in
    # flight, the shuffle buffer and the prefetched batches. 40 records = 10 batches of 4.
    sizes = [7, 9, 11, 13]
    paths = [str(tmp_path / f"part-{i}.tfrecord") for i in range(len(sizes))]
    origin = {}
    for i, (path, size) in enumerate(zip(paths, sizes)):
        for j, values in enumerate(original_style_records(path, size, seed=10 + i)):
            origin[tuple(values["input_ids"])] = (i, j)
    assert len(origin) == sum(sizes)  # every record is recognisable

    def dataset():
        return input_pipeline.train_dataset(
            paths, 4, SEQ, PRED, seed=5, shuffle_buffer=8, cycle_length=3
        )

    iterator = iter(dataset())
    first = [_as_numpy(next(iterator)) for _ in range(7)]
    saved = tf.train.Checkpoint(data=iterator).save(str(tmp_path / "mid-epoch"))
    # The next 13 batches run into the second epoch (batch 10 on) and its new file order.
    after_first = [_as_numpy(next(iterator)) for _ in range(13)]
    saved_later = tf.train.Checkpoint(data=iterator).save(str(tmp_path / "second-epoch"))
    after_later = [_as_numpy(next(iterator)) for _ in range(5)]

    # More than one file was in flight: the first two batches mix records of several.
    files_seen = {origin[tuple(row)][0] for b in first[:2] for row in b["input_ids"]}
    assert len(files_seen) >= 2
    # Every record of the files appears among the 25 batches (100 rows, 2.5 epochs).
    rows = [tuple(r) for b in first + after_first + after_later for r in b["input_ids"]]
    assert set(rows) == set(origin)

    fresh = iter(dataset())
    tf.train.Checkpoint(data=fresh).restore(saved).assert_consumed()
    _assert_same_batches([_as_numpy(next(fresh)) for _ in range(18)], after_first + after_later)
    fresh = iter(dataset())
    tf.train.Checkpoint(data=fresh).restore(saved_later).assert_consumed()
    _assert_same_batches([_as_numpy(next(fresh)) for _ in range(5)], after_later)
    # Without the restore, a fresh iterator starts over: the restore is what did it.
    unrestored = _as_numpy(next(iter(dataset())))
    np.testing.assert_array_equal(unrestored["input_ids"], first[0]["input_ids"])
    assert not np.array_equal(unrestored["input_ids"], after_first[0]["input_ids"])


def test_split_for_replica_gives_consecutive_rows():
    batch = {"input_ids": tf.reshape(tf.range(24), [6, 4]), "w": tf.range(6)}
    parts = [input_pipeline.split_for_replica(batch, i, 3) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate([p["w"] for p in parts]), np.arange(6))
    np.testing.assert_array_equal(parts[1]["input_ids"], batch["input_ids"][2:4])


def test_records_of_create_pretraining_data_round_trip(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                               [f"w{i}" for i in range(200)]) + "\n")  # fmt: skip
    corpus = tmp_path / "c.txt"
    docs = [[" ".join(f"w{(d * 7 + s * 3 + k) % 200}" for k in range(6)) for s in range(5)]
            for d in range(8)]  # fmt: skip
    corpus.write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    out = str(tmp_path / "data.tfrecord")
    options = cpd.DataOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=2)
    cpd.create_pretraining_data(str(corpus), out, cpd.TokenizerSpec(str(vocab)), options, log=None)
    (checked,) = input_pipeline.check_data_files([out], SEQ, PRED, 205)
    total = sum(1 for _ in tf.data.TFRecordDataset(out))
    assert checked.num_instances == total > 0
    rows = 0
    for batch in input_pipeline.eval_dataset([out], 8, SEQ, PRED):
        weight = batch["example_weight"].numpy()
        rows += int(weight.sum())
        mask = batch["input_mask"].numpy()
        ids = batch["input_ids"].numpy()
        for i in np.flatnonzero(weight):
            n = mask[i].sum()
            assert ids[i, 0] == 2 and ids[i, n - 1] == 3 and (ids[i, n:] == 0).all()
    assert rows == total
