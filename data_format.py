"""The pretraining data format, declared once for the writer and the reader.

- `feature_spec`: the TFRecord features of one instance (the original release's names,
  dtypes and lengths). `create_pretraining_data.py` writes them; `input_pipeline.py`
  builds its parsing spec from the same function.
- The metadata file `F.json` beside every record file `F`: `metadata_path`,
  `make_metadata` (the writer) and `validate_metadata` (a reader's checks).
- The record encoder: `ExampleEncoder` serializes instances to `tf.train.Example` bytes
  by hand, and `tfrecord_frame` frames them as TFRecords; `iter_frames` walks framed
  records in a buffer.

TensorFlow is not imported here, so the data writer and its worker processes stay light.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping
from operator import itemgetter

import google_crc32c

# ----------------------------------------------------------------------------------------
# Features


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


# ----------------------------------------------------------------------------------------
# Metadata

METADATA_FORMAT = "bert-gpu pretraining data"
# 2: records globally shuffled; document and shuffle settings, [UNK] rate and corpus
# counts recorded. Readers need only the fields of READER_FIELDS, present since 1.
METADATA_VERSION = 2


def metadata_path(record_path: str) -> str:
    """The JSON file that describes how the TFRecord file `record_path` was made."""
    return record_path + ".json"


_OPTIONAL_STR = (str, type(None))
_NUMBER = (int, float)

# What a reader relies on: the settings the model must match and the file's size.
READER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "max_seq_length": int,
    "max_predictions_per_seq": int,
    "vocab_size": int,
    "num_instances": int,
}

# Everything the writer records, with its JSON type.
WRITER_FIELDS: dict[str, type | tuple[type, ...]] = {
    **READER_FIELDS,
    "created_by": str,
    "feature_spec": dict,
    "masked_lm_prob": _NUMBER,
    "short_seq_prob": _NUMBER,
    "dupe_factor": int,
    "do_whole_word_mask": bool,
    "random_seed": int,
    "do_lower_case": bool,
    "vocab_file": _OPTIONAL_STR,
    "spm_model_file": _OPTIONAL_STR,
    "vocab_sha256": str,
    "input_files": list,
    "output_files": list,
    "total_instances": int,
    "chunk_bytes": int,
    "shuffle_bytes": int,
    "document_buckets": int,
    "record_buckets": int,
    "documents": int,
    "tokens": int,
    "unknown_token_rate": _NUMBER,
}


def _type_problems(meta: Mapping, fields: Mapping[str, type | tuple[type, ...]]) -> list[str]:
    problems = []
    for key, kind in fields.items():
        if key not in meta:
            problems.append(f"{key!r} is missing")
            continue
        value = meta[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a number field must not accept true/false.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            problems.append(f"{key!r} is {value!r}, expected {expected}")
    return problems


def make_metadata(**fields) -> dict:
    """The metadata dict of one record file, checked against the schema.

    Args:
        **fields: Every key of WRITER_FIELDS ("format" and "version" are added).

    Returns:
        The metadata, ready for `json.dump`.

    Raises:
        ValueError: naming every missing, unknown or mistyped field, or a feature spec
            that does not match max_seq_length / max_predictions_per_seq.
    """
    problems = _type_problems(fields, WRITER_FIELDS)
    problems += [f"{key!r} is not a metadata field" for key in fields if key not in WRITER_FIELDS]
    if not problems:
        expected_spec = feature_spec(fields["max_seq_length"], fields["max_predictions_per_seq"])
        if {k: list(v) for k, v in fields["feature_spec"].items()} != {
            k: list(v) for k, v in expected_spec.items()
        }:
            problems.append("'feature_spec' does not match max_seq_length/max_predictions_per_seq")
    if problems:
        raise ValueError("invalid pretraining-data metadata: " + "; ".join(problems))
    return {"format": METADATA_FORMAT, "version": METADATA_VERSION, **fields}


def validate_metadata(meta, source: str) -> dict:
    """Checks a loaded metadata file before a reader trusts it.

    Args:
        meta: The parsed JSON.
        source: The metadata file's path, for messages.

    Returns:
        `meta`.

    Raises:
        ValueError: naming `source` and what is wrong (not our format, a version newer
            than this code, a field a reader needs missing or mistyped).
    """
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise ValueError(f"{source}: not a {METADATA_FORMAT!r} metadata file")
    version = meta.get("version", 1)
    if not isinstance(version, int) or version > METADATA_VERSION:
        raise ValueError(
            f"{source}: metadata version {version!r}, but this code reads versions up to "
            f"{METADATA_VERSION}; update bert-gpu"
        )
    problems = _type_problems(meta, READER_FIELDS)
    if problems:
        raise ValueError(f"{source}: invalid metadata: " + "; ".join(problems))
    return meta


# ----------------------------------------------------------------------------------------
# Records: tf.train.Example protocol buffers and TFRecord framing, by hand.


def varint(value: int) -> bytes:
    """The protobuf base-128 varint of a non-negative integer."""
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
    return tag + varint(len(payload)) + payload


class ExampleEncoder:
    """Serializes training instances to `tf.train.Example` bytes.

    An instance is anything with the attributes `token_ids` ([n] ids, n <=
    max_seq_length), `num_a` (length of segment A), `masked_positions`, `masked_ids` and
    `is_random_next` (see create_pretraining_data.TrainingInstance).

    Wire format (proto3): Example{features=1: Features{feature=1: map<string, Feature>}},
    Feature{float_list=2: FloatList{value=1 packed float}, int64_list=3:
    Int64List{value=1 packed int64}}. Each map entry is a message {key=1, value=2}.
    """

    def __init__(self, max_seq_length: int, max_predictions_per_seq: int, vocab_size: int):
        self.max_seq_length = max_seq_length
        self.max_predictions = max_predictions_per_seq
        self.spec = feature_spec(max_seq_length, max_predictions_per_seq)
        # Varint bytes of every value an int64 feature can hold: one byte below 2**7, two
        # below 2**14 (low 7 bits with the continuation bit, then the rest).
        size = max(vocab_size, max_seq_length) + 1
        self._varints = [bytes((i,)) for i in range(min(size, 1 << 7))]
        self._varints += [
            bytes((i & 0x7F | 0x80, i >> 7)) for i in range(1 << 7, min(size, 1 << 14))
        ]
        self._varints += [varint(i) for i in range(1 << 14, size)]
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

    def serialize(self, instance) -> bytes:
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
                    b"".join(
                        # itemgetter loops in C, twice as fast; it returns a tuple for n > 1
                        itemgetter(*instance.token_ids)(varints)
                        if n > 1
                        else map(varints.__getitem__, instance.token_ids)
                    )
                    + self._zeros[:pad],
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
                    b"".join(map(varints.__getitem__, instance.masked_positions))
                    + self._zeros[:pad_k],
                ),
                self._prefixed(
                    "masked_lm_ids",
                    int64,
                    b"".join(map(varints.__getitem__, instance.masked_ids)) + self._zeros[:pad_k],
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
        return b"\x0a" + (varints[size] if size < len(varints) else varint(size)) + features


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


def iter_frames(buffer: bytes | memoryview, source: str = "buffer") -> Iterator[tuple[int, int]]:
    """The (start, end) byte offsets of each framed TFRecord in `buffer`.

    Only the lengths are read (the checksums are not verified), so this is a fast walk
    over records this code wrote itself.

    Raises:
        ValueError: naming `source`, if the buffer ends inside a record.
    """
    unpack = struct.Struct("<Q").unpack_from
    size = len(buffer)
    start = 0
    while start < size:
        if start + 12 > size:
            raise ValueError(f"{source}: truncated TFRecord header at byte {start}")
        end = start + 16 + unpack(buffer, start)[0]
        if end > size:
            raise ValueError(f"{source}: truncated TFRecord at byte {start}")
        yield start, end
        start = end


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (the metadata's `vocab_sha256`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
