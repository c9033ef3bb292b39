"""Tests of data_format.py: the feature spec, the metadata schema, the record encoder."""

import dataclasses
import os
import random
import struct
import subprocess
import sys

import pytest
import tensorflow as tf
from google.protobuf.internal import encoder as protobuf_encoder

import data_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Instance:
    token_ids: list
    num_a: int
    masked_positions: list
    masked_ids: list
    is_random_next: bool


def test_feature_spec_is_the_original_releases():
    # create_pretraining_data.py of google-research/bert: five int64 features of
    # max_seq_length / max_predictions_per_seq values, float weights, one int64 label.
    assert data_format.feature_spec(128, 20) == {
        "input_ids": ("int64", 128),
        "input_mask": ("int64", 128),
        "segment_ids": ("int64", 128),
        "masked_lm_positions": ("int64", 20),
        "masked_lm_ids": ("int64", 20),
        "masked_lm_weights": ("float32", 20),
        "next_sentence_labels": ("int64", 1),
    }


def complete_fields(**overrides):
    fields = dict(
        max_seq_length=16, max_predictions_per_seq=3, vocab_size=100, num_instances=7,
        created_by="test", feature_spec=data_format.feature_spec(16, 3), masked_lm_prob=0.15,
        short_seq_prob=0.1, dupe_factor=2, do_whole_word_mask=False, random_seed=1,
        do_lower_case=True, vocab_file="v.txt", spm_model_file=None, vocab_sha256="ab",
        input_files=["c.txt"], output_files=["o"], total_instances=7, chunk_bytes=1024,
        shuffle_bytes=4096, document_buckets=1, record_buckets=1, documents=3, tokens=50,
        unknown_token_rate=0.0,
    )  # fmt: skip
    fields.update(overrides)
    return fields


def test_make_metadata_checks_every_field():
    meta = data_format.make_metadata(**complete_fields())
    assert meta["format"] == data_format.METADATA_FORMAT
    assert meta["version"] == data_format.METADATA_VERSION
    assert set(meta) == set(data_format.WRITER_FIELDS) | {"format", "version"}
    fields = complete_fields(max_seq_length=True, tokens="50", extra=1)
    del fields["vocab_sha256"]
    with pytest.raises(ValueError) as info:
        data_format.make_metadata(**fields)
    message = str(info.value)
    assert "'vocab_sha256' is missing" in message
    assert "'max_seq_length' is True, expected int" in message  # a bool is no integer
    assert "'tokens' is '50', expected int" in message
    assert "'extra' is not a metadata field" in message
    with pytest.raises(ValueError, match="'feature_spec' does not match"):
        data_format.make_metadata(**complete_fields(max_predictions_per_seq=4))


def test_validate_metadata_names_the_file_and_the_problem():
    minimal = {  # what version-1 files and hand-written test files hold
        "format": data_format.METADATA_FORMAT,
        "max_seq_length": 16,
        "max_predictions_per_seq": 3,
        "vocab_size": 100,
        "num_instances": 7,
    }
    assert data_format.validate_metadata(minimal, "d.json") is minimal
    with pytest.raises(ValueError, match=r"d.json: not a 'bert-gpu pretraining data'"):
        data_format.validate_metadata(dict(minimal, format="other"), "d.json")
    with pytest.raises(ValueError, match=r"d.json: not a"):
        data_format.validate_metadata([1, 2], "d.json")
    future = data_format.METADATA_VERSION + 1
    with pytest.raises(ValueError, match=rf"d.json: metadata version {future}.*update"):
        data_format.validate_metadata(dict(minimal, version=future), "d.json")
    broken = dict(minimal, vocab_size=False)
    del broken["num_instances"]
    with pytest.raises(ValueError) as info:
        data_format.validate_metadata(broken, "d.json")
    assert "'num_instances' is missing" in str(info.value)
    assert "'vocab_size' is False, expected int" in str(info.value)


def test_varint_matches_protobuf():
    values = [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**35 + 5, 2**63 - 1]
    values += random.Random(0).sample(range(1 << 40), 200)
    for v in values:
        assert data_format.varint(v) == protobuf_encoder._VarintBytes(v)


def test_serialized_example_parses_with_tensorflow():
    encoder = data_format.ExampleEncoder(
        max_seq_length=10, max_predictions_per_seq=4, vocab_size=30000
    )
    instance = Instance(
        token_ids=[2, 29999, 4, 3, 128, 300, 3],
        num_a=2,
        masked_positions=[2, 5],
        masked_ids=[17, 300],
        is_random_next=True,
    )
    # Parsed by protobuf itself, independently of our encoder.
    example = tf.train.Example.FromString(encoder.serialize(instance))
    f = example.features.feature
    assert list(f["input_ids"].int64_list.value) == [2, 29999, 4, 3, 128, 300, 3, 0, 0, 0]
    assert list(f["input_mask"].int64_list.value) == [1] * 7 + [0] * 3
    assert list(f["segment_ids"].int64_list.value) == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert list(f["masked_lm_positions"].int64_list.value) == [2, 5, 0, 0]
    assert list(f["masked_lm_ids"].int64_list.value) == [17, 300, 0, 0]
    assert list(f["masked_lm_weights"].float_list.value) == [1.0, 1.0, 0.0, 0.0]
    assert list(f["next_sentence_labels"].int64_list.value) == [1]
    assert set(f.keys()) == set(data_format.feature_spec(10, 4))


def test_ids_of_one_two_and_three_varint_bytes_parse():
    encoder = data_format.ExampleEncoder(
        max_seq_length=8, max_predictions_per_seq=2, vocab_size=70000
    )
    ids = [2, 127, 128, 16383, 3, 16384, 69999, 3]  # varints of 1, 2 and 3 bytes
    instance = Instance(ids, 3, [1, 6], [16384, 1], False)
    f = tf.train.Example.FromString(encoder.serialize(instance)).features.feature
    assert list(f["input_ids"].int64_list.value) == ids
    assert list(f["masked_lm_ids"].int64_list.value) == [16384, 1]


def test_one_token_examples_parse():
    encoder = data_format.ExampleEncoder(max_seq_length=3, max_predictions_per_seq=1, vocab_size=9)
    f = tf.train.Example.FromString(encoder.serialize(Instance([7], 0, [], [], False)))
    assert list(f.features.feature["input_ids"].int64_list.value) == [7, 0, 0]


def test_long_examples_with_a_small_vocabulary_parse():
    # An Example longer than the cached varints (vocab_size + 1 values) takes the
    # general length path.
    encoder = data_format.ExampleEncoder(
        max_seq_length=512, max_predictions_per_seq=80, vocab_size=10
    )
    rng = random.Random(1)
    tokens = [2] + [rng.randrange(5, 10) for _ in range(508)] + [3, 3]
    instance = Instance(tokens, 300, list(range(1, 81)), tokens[1:81], False)
    f = tf.train.Example.FromString(encoder.serialize(instance)).features.feature
    assert list(f["input_ids"].int64_list.value) == tokens + [0]
    assert list(f["segment_ids"].int64_list.value) == [0] * 302 + [1] * 209 + [0]
    assert list(f["masked_lm_ids"].int64_list.value) == tokens[1:81]
    assert list(f["next_sentence_labels"].int64_list.value) == [0]


def _crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_tfrecord_framing_matches_the_format(tmp_path):
    assert _crc32c_reference(b"123456789") == 0xE3069283  # the standard check value
    data = b"some example bytes \x00\xff"
    frame = data_format.tfrecord_frame(data)
    (length,) = struct.unpack("<Q", frame[:8])
    assert length == len(data) and frame[12 : 12 + length] == data

    def masked(crc):
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    assert struct.unpack("<I", frame[8:12])[0] == masked(_crc32c_reference(frame[:8]))
    assert struct.unpack("<I", frame[-4:])[0] == masked(_crc32c_reference(data))
    # TensorFlow's reader (which checks both CRCs) reads our frames back.
    path = tmp_path / "r.tfrecord"
    payloads = [b"", b"x", bytes(range(256)) * 3]
    path.write_bytes(b"".join(map(data_format.tfrecord_frame, payloads)))
    assert list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()) == payloads


def test_iter_frames_walks_records_written_by_tensorflow(tmp_path):
    path = str(tmp_path / "tf.tfrecord")
    payloads = [bytes([i % 256]) * i for i in range(0, 300, 7)]
    with tf.io.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
    buffer = open(path, "rb").read()
    frames = list(data_format.iter_frames(buffer, path))
    assert [buffer[start + 12 : end - 4] for start, end in frames] == payloads
    assert frames[0][0] == 0 and frames[-1][1] == len(buffer)
    with pytest.raises(ValueError, match="tf.tfrecord: truncated TFRecord at byte"):
        list(data_format.iter_frames(buffer[:-1], path))
    with pytest.raises(ValueError, match="truncated TFRecord header"):
        list(data_format.iter_frames(buffer + b"\x01\x00", path))


def test_neither_the_format_nor_the_data_script_imports_tensorflow():
    code = "import sys, data_format, create_pretraining_data; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
