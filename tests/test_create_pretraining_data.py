"""Tests of create_pretraining_data.py: instance building, masking, records, bad input."""

import collections
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import create_pretraining_data as cpd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NUM_WORDS = 4000


def word(i: int) -> str:
    return f"w{i}"


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    """[PAD] [UNK] [CLS] [SEP] [MASK], words w0..w3999, and a few "##" pieces."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    tokens = SPECIALS + [word(i) for i in range(NUM_WORDS)] + ["un", "##aff", "##able", "."]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


def make_vocab(size=60, continuation=()):
    """A Vocab with ids 0..4 special as in the file above."""
    flags = [False] * size
    for i in continuation:
        flags[i] = True
    return cpd.Vocab(size=size, cls_id=2, sep_id=3, mask_id=4, is_continuation=flags)


def write_corpus(path, documents):
    """documents: list of lists of sentences (strings)."""
    path.write_text("\n\n".join("\n".join(d) for d in documents) + "\n", encoding="utf-8")
    return str(path)


def sequential_corpus(num_docs=30, sentences=(3, 9), words=(3, 12), seed=0):
    """Documents whose sentences are consecutive runs of distinct words w_k, w_k+1, ...

    Every word appears exactly once in the corpus, so any token locates its document
    and position: consecutive text is a run of consecutive word numbers.
    """
    rng = random.Random(seed)
    documents, k = [], 0
    for _ in range(num_docs):
        document = []
        for _ in range(rng.randint(*sentences)):
            n = rng.randint(*words)
            document.append(" ".join(word(k + j) for j in range(n)))
            k += n
        documents.append(document)
    assert k <= NUM_WORDS
    return documents


def children(pid: int) -> list[int]:
    """The child processes of `pid`, from /proc."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def read_records(path, max_seq_length, max_predictions):
    # The original release's feature spec, written out independently of the code.
    spec = {
        "input_ids": tf.io.FixedLenFeature([max_seq_length], tf.int64),
        "input_mask": tf.io.FixedLenFeature([max_seq_length], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([max_seq_length], tf.int64),
        "masked_lm_positions": tf.io.FixedLenFeature([max_predictions], tf.int64),
        "masked_lm_ids": tf.io.FixedLenFeature([max_predictions], tf.int64),
        "masked_lm_weights": tf.io.FixedLenFeature([max_predictions], tf.float32),
        "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
    }
    records = []
    for raw in tf.data.TFRecordDataset(path):
        parsed = tf.io.parse_single_example(raw, spec)
        records.append({k: v.numpy() for k, v in parsed.items()})
    return records


# ---------------------------------------------------------------------------------------
# Pure functions


def test_truncate_seq_pair_keeps_a_window_of_each_segment():
    rng = random.Random(1)
    fronts = backs = 0
    for _ in range(300):
        a = list(range(100, 100 + rng.randint(1, 40)))
        b = list(range(500, 500 + rng.randint(1, 40)))
        original_a, original_b = list(a), list(b)
        limit = rng.randint(2, 50)
        cpd.truncate_seq_pair(a, b, limit, rng)
        assert len(a) + len(b) == min(limit, len(original_a) + len(original_b))
        assert len(a) >= 1 and len(b) >= 1
        for kept, original in ((a, original_a), (b, original_b)):
            start = original.index(kept[0])
            assert original[start : start + len(kept)] == kept  # a contiguous window
            fronts += start > 0
            backs += start + len(kept) < len(original)
        # Removal always hits the longer side: the lengths end up within one of each
        # other unless the shorter one never needed cutting.
        if len(a) < len(original_a) and len(b) < len(original_b):
            assert abs(len(a) - len(b)) <= 1
    assert fronts > 50 and backs > 50  # both ends get cut


def test_num_predictions_and_never_special_tokens():
    vocab = make_vocab(size=200)
    rng = random.Random(3)
    options = cpd.DataOptions(max_seq_length=128, max_predictions_per_seq=20)
    for n_a, n_b in [(1, 1), (3, 4), (10, 20), (60, 65), (2, 120)]:
        tokens = [2] + [rng.randrange(5, 200) for _ in range(n_a)] + [3]
        tokens += [rng.randrange(5, 200) for _ in range(n_b)] + [3]
        out, positions, labels = cpd.create_masked_lm_predictions(tokens, n_a, options, vocab, rng)
        n = len(tokens)
        expected = min(20, max(1, int(round(n * 0.15))))
        assert len(positions) == expected
        assert positions == sorted(set(positions))
        assert not {0, n_a + 1, n - 1} & set(positions)
        assert labels == [tokens[p] for p in positions]
        untouched = set(range(n)) - set(positions)
        assert all(out[i] == tokens[i] for i in untouched)


def test_masking_80_10_10_statistics():
    size = 1000
    vocab = make_vocab(size=size)
    rng = random.Random(7)
    options = cpd.DataOptions(max_seq_length=128, max_predictions_per_seq=20)
    counts = collections.Counter()
    position_hits = collections.Counter()
    for _ in range(3000):
        tokens = [2] + [rng.randrange(5, size) for _ in range(60)] + [3]
        tokens += [rng.randrange(5, size) for _ in range(63)] + [3]
        out, positions, _ = cpd.create_masked_lm_predictions(tokens, 60, options, vocab, rng)
        for p in positions:
            position_hits[p] += 1
            if out[p] == 4:
                counts["mask"] += 1
            elif out[p] == tokens[p]:
                counts["same"] += 1
            else:
                counts["random"] += 1
    total = sum(counts.values())
    assert total == 3000 * 19  # 126 tokens: round(126 * 0.15) = 19
    assert abs(counts["mask"] / total - 0.8) < 0.01
    assert abs(counts["same"] / total - 0.1) < 0.007
    assert abs(counts["random"] / total - 0.1) < 0.007
    # Every ordinary position (123 of them) is equally likely: 19/123 each.
    assert set(position_hits) == set(range(1, 125)) - {61}
    rates = np.array([position_hits[p] for p in range(1, 125) if p != 61]) / 3000
    assert abs(rates.mean() - 19 / 123) < 1e-9 and rates.min() > 0.12 and rates.max() < 0.19


def test_masked_lm_prob_changes_the_rate():
    vocab = make_vocab(size=100)
    rng = random.Random(0)
    tokens = [2] + list(range(5, 55)) + [3] + list(range(5, 55)) + [3]  # 103 tokens
    for prob, max_pred, expected in [(0.15, 20, 15), (0.5, 80, 52), (0.5, 20, 20), (0.001, 5, 1)]:
        options = cpd.DataOptions(
            max_seq_length=128, max_predictions_per_seq=max_pred, masked_lm_prob=prob
        )
        _, positions, _ = cpd.create_masked_lm_predictions(tokens, 50, options, vocab, rng)
        assert len(positions) == expected


def test_whole_word_masking_keeps_word_groups_together():
    # ids 5..29 word starts, 30..59 "##" continuations
    vocab = make_vocab(size=60, continuation=range(30, 60))
    rng = random.Random(11)
    options = cpd.DataOptions(
        max_seq_length=128, max_predictions_per_seq=20, do_whole_word_mask=True
    )
    whole = partial = 0
    for _ in range(500):
        segments = []
        for _ in range(2):
            seg = []
            while len(seg) < 40:
                seg.append(rng.randrange(5, 30))
                seg.extend(rng.randrange(30, 60) for _ in range(rng.choice([0, 0, 1, 2, 3])))
            segments.append(seg)
        # A segment may start with a "##" piece (after truncation): a group of its own.
        segments[1].insert(0, 45)
        tokens = [2, *segments[0], 3, *segments[1], 3]
        num_a = len(segments[0])
        out, positions, _ = cpd.create_masked_lm_predictions(tokens, num_a, options, vocab, rng)
        # Groups computed independently: a start token and its following "##" pieces,
        # never across [CLS]/[SEP].
        group_of = {}
        group = -1
        for i, t in enumerate(tokens):
            if t in (2, 3):
                group += 1
                continue
            if not (30 <= t < 60) or tokens[i - 1] in (2, 3):
                group += 1
            group_of[i] = group
        masked = set(positions)
        members = collections.defaultdict(set)
        for i, g in group_of.items():
            members[g].add(i)
        for g in {group_of[p] for p in positions}:
            if members[g] <= masked:
                whole += 1
            else:
                partial += 1
        assert len(positions) <= 20
        assert not {0, num_a + 1, len(tokens) - 1} & masked
    assert partial == 0 and whole > 1000


def _restore(record):
    """input_ids with the masked positions given back their original ids."""
    ids = list(record["input_ids"])
    for p, t, w in zip(
        record["masked_lm_positions"], record["masked_lm_ids"], record["masked_lm_weights"]
    ):
        if w > 0:
            ids[p] = t
    return ids


def test_records_nsp_labels_and_consecutive_text(tmp_path, vocab_file):
    documents = sequential_corpus()
    corpus = write_corpus(tmp_path / "corpus.txt", documents)
    out = str(tmp_path / "out.tfrecord")
    options = cpd.DataOptions(max_seq_length=48, max_predictions_per_seq=8, dupe_factor=20)
    cpd.create_pretraining_data(corpus, out, cpd.TokenizerSpec(vocab_file), options, log=None)
    records = read_records(out, 48, 8)
    assert len(records) > 500
    # Which document and position each word id is at.
    where = {}
    for d, document in enumerate(documents):
        for sentence in document:
            for w in sentence.split():
                where[5 + int(w[1:])] = d
    labels = collections.Counter()
    for r in records:
        ids = _restore(r)
        n = int(r["input_mask"].sum())
        assert list(r["input_mask"]) == [1] * n + [0] * (48 - n)
        assert ids[0] == 2 and ids[n - 1] == 3 and all(i == 0 for i in ids[n:])
        sep = ids.index(3)
        a, b = ids[1:sep], ids[sep + 1 : n - 1]
        assert list(r["segment_ids"][: sep + 1]) == [0] * (sep + 1)
        assert list(r["segment_ids"][sep + 1 : n]) == [1] * (n - sep - 1)
        assert a and b and len(a) + len(b) <= 45
        # Within A and within B the text is consecutive (truncation cuts only the ends).
        for seg in (a, b):
            assert seg == list(range(seg[0], seg[0] + len(seg)))
        label = int(r["next_sentence_labels"][0])
        labels[label] += 1
        if label == 0:  # B is the true continuation: the same document, right after A
            assert where[a[0]] == where[b[0]]
            assert b[0] > a[-1]
            # Nothing between A and B but what truncation removed from A's end/B's start.
        else:
            assert where[b[0]] != where[a[0]]
    # Single-sentence pairs are always random, so long sentences push the share of
    # label 1 above one half here; the balance itself is tested with short sentences.
    assert 0.45 < labels[1] / sum(labels.values()) < 0.75, labels


def test_label_zero_pairs_are_adjacent_without_truncation(tmp_path, vocab_file):
    # Short sentences and a long max_seq_length: pairs are rarely truncated, so a true
    # continuation must start exactly where A ends.
    documents = sequential_corpus(num_docs=20, sentences=(4, 8), words=(2, 4), seed=5)
    corpus = write_corpus(tmp_path / "c.txt", documents)
    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(max_seq_length=200, max_predictions_per_seq=10, dupe_factor=40)
    cpd.create_pretraining_data(corpus, out, cpd.TokenizerSpec(vocab_file), options, log=None)
    checked = 0
    records = read_records(out, 200, 10)
    # Nearly every pair spans several sentences, where B is random with probability 1/2.
    share = np.mean([r["next_sentence_labels"][0] for r in records])
    assert len(records) > 1000 and 0.45 < share < 0.58, share
    for r in records:
        ids = _restore(r)
        n = int(r["input_mask"].sum())
        sep = ids.index(3)
        a, b = ids[1:sep], ids[sep + 1 : n - 1]
        if r["next_sentence_labels"][0] == 0:
            assert b[0] == a[-1] + 1
            checked += 1
    assert checked > 20


def test_serialized_example_parses_with_tensorflow():
    encoder = cpd.ExampleEncoder(max_seq_length=10, max_predictions_per_seq=4, vocab_size=30000)
    instance = cpd.TrainingInstance(
        token_ids=[2, 29999, 4, 3, 128, 300, 3],
        num_a=2,
        masked_positions=[2, 5],
        masked_ids=[17, 300],
        is_random_next=True,
    )
    raw = encoder.serialize(instance)
    # Parsed by protobuf itself, independently of our encoder.
    example = tf.train.Example.FromString(raw)
    f = example.features.feature
    assert list(f["input_ids"].int64_list.value) == [2, 29999, 4, 3, 128, 300, 3, 0, 0, 0]
    assert list(f["input_mask"].int64_list.value) == [1] * 7 + [0] * 3
    assert list(f["segment_ids"].int64_list.value) == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert list(f["masked_lm_positions"].int64_list.value) == [2, 5, 0, 0]
    assert list(f["masked_lm_ids"].int64_list.value) == [17, 300, 0, 0]
    assert list(f["masked_lm_weights"].float_list.value) == [1.0, 1.0, 0.0, 0.0]
    assert list(f["next_sentence_labels"].int64_list.value) == [1]
    assert set(f.keys()) == set(cpd.feature_spec(10, 4))


def _crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_tfrecord_framing_matches_the_format():
    assert _crc32c_reference(b"123456789") == 0xE3069283  # the standard check value
    data = b"some example bytes \x00\xff"
    frame = cpd.tfrecord_frame(data)
    (length,) = struct.unpack("<Q", frame[:8])
    assert length == len(data) and frame[12 : 12 + length] == data

    def masked(crc):
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    assert struct.unpack("<I", frame[8:12])[0] == masked(_crc32c_reference(frame[:8]))
    assert struct.unpack("<I", frame[-4:])[0] == masked(_crc32c_reference(data))


# ---------------------------------------------------------------------------------------
# The whole tool


def test_identical_records_for_any_number_of_workers(tmp_path, vocab_file):
    documents = sequential_corpus(num_docs=40, seed=2)
    corpus = write_corpus(tmp_path / "corpus.txt", documents)
    options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=3)
    outputs = []
    for workers in (1, 2):
        paths = [str(tmp_path / f"w{workers}_{i}.tfrecord") for i in range(2)]
        summary = cpd.create_pretraining_data(
            corpus, paths, cpd.TokenizerSpec(vocab_file), options,
            num_workers=workers, chunk_bytes=3000, log=None,
        )  # fmt: skip
        outputs.append([open(p, "rb").read() for p in paths])
        # Documents longer than chunk_bytes / MIN_DOCUMENTS_PER_CHUNK are cut in parts.
        stats = summary["stats"]
        assert stats["documents_split"] > 0
        assert stats["documents"] == 40 + stats["documents_split"]
    assert outputs[0] == outputs[1]
    assert all(len(x) > 1000 for x in outputs[0])
    # Another seed gives other records.
    other = str(tmp_path / "seed.tfrecord")
    cpd.create_pretraining_data(
        corpus, other, cpd.TokenizerSpec(vocab_file),
        cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=3,
                        random_seed=99),
        log=None,
    )  # fmt: skip
    assert open(other, "rb").read() != b"".join(outputs[0])


def test_round_robin_outputs_and_metadata(tmp_path, vocab_file):
    corpus = write_corpus(tmp_path / "corpus.txt", sequential_corpus(num_docs=10))
    paths = [str(tmp_path / f"part-{i}.tfrecord") for i in range(3)]
    options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=2)
    summary = cpd.create_pretraining_data(
        corpus, ",".join(paths), cpd.TokenizerSpec(vocab_file), options, log=None
    )
    counts = [len(read_records(p, 32, 5)) for p in paths]
    total = sum(counts)
    assert max(counts) - min(counts) <= 1 and counts[0] == (total + 2) // 3
    assert summary["instances_per_file"] == dict(zip(paths, counts))
    for path, count in zip(paths, counts):
        meta = json.loads(open(path + ".json").read())
        assert meta["num_instances"] == count and meta["total_instances"] == total
        assert meta["max_seq_length"] == 32 and meta["max_predictions_per_seq"] == 5
        assert meta["vocab_size"] == len(open(vocab_file).read().split())
        assert meta["dupe_factor"] == 2 and meta["random_seed"] == 12345
        assert meta["do_lower_case"] is True and meta["do_whole_word_mask"] is False
        assert meta["input_files"] == [corpus]
        import hashlib

        assert meta["vocab_sha256"] == hashlib.sha256(open(vocab_file, "rb").read()).hexdigest()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


def test_invalid_utf8_is_replaced_and_counted(tmp_path, vocab_file, capsys):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"w1 w2 w3 w4\nw5 \xff\xfe w6 w7\nw8 w9\n\nw10 w11 w12\nw13 \xc3 w14\n")
    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(max_seq_length=16, max_predictions_per_seq=3, dupe_factor=2)
    summary = cpd.create_pretraining_data(
        str(corpus), out, cpd.TokenizerSpec(vocab_file), options, log=sys.stderr
    )
    assert summary["stats"]["invalid_utf8_lines"] == 2
    assert "2 lines with invalid UTF-8" in capsys.readouterr().err
    for r in read_records(out, 16, 3):
        assert 1 not in _restore(r)[: int(r["input_mask"].sum())]  # no [UNK] from bad bytes


def test_missing_input_files_are_all_named(tmp_path, vocab_file):
    real = write_corpus(tmp_path / "real.txt", [["w1 w2"]])
    with pytest.raises(FileNotFoundError) as info:
        cpd.create_pretraining_data(
            f"{tmp_path}/nope1.txt,{real},{tmp_path}/nope2*.txt,{tmp_path}",
            str(tmp_path / "o.tfrecord"), cpd.TokenizerSpec(vocab_file), cpd.DataOptions(),
            log=None,
        )  # fmt: skip
    message = str(info.value)
    assert "nope1.txt" in message and "nope2*.txt" in message and "is a directory" in message
    assert "real.txt" not in message
    assert not os.path.exists(tmp_path / "o.tfrecord")


def test_empty_corpus_is_an_error_and_writes_nothing(tmp_path, vocab_file):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n\n   \n\x00\n", encoding="utf-8")
    out = tmp_path / "o.tfrecord"
    with pytest.raises(ValueError, match="no training instances"):
        cpd.create_pretraining_data(
            str(corpus), str(out), cpd.TokenizerSpec(vocab_file), cpd.DataOptions(), log=None
        )
    assert os.listdir(tmp_path) == ["empty.txt"]


def test_vocab_without_special_tokens(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[SEP]\nhello\n", encoding="utf-8")
    corpus = write_corpus(tmp_path / "c.txt", [["hello hello"]])
    with pytest.raises(ValueError) as info:
        cpd.create_pretraining_data(
            corpus, str(tmp_path / "o.tfrecord"), cpd.TokenizerSpec(str(vocab)),
            cpd.DataOptions(), log=None,
        )  # fmt: skip
    assert "[CLS]" in str(info.value) and "[MASK]" in str(info.value)
    assert str(vocab) in str(info.value)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(max_seq_length=4), "--max_seq_length"),
        (dict(max_seq_length=100000), "--max_seq_length"),
        (dict(max_predictions_per_seq=0), "--max_predictions_per_seq"),
        (dict(max_seq_length=16, max_predictions_per_seq=14), "--max_predictions_per_seq"),
        (dict(masked_lm_prob=0.0), "--masked_lm_prob"),
        (dict(masked_lm_prob=1.5), "--masked_lm_prob"),
        (dict(short_seq_prob=-0.1), "--short_seq_prob"),
        (dict(dupe_factor=0), "--dupe_factor"),
    ],
)
def test_out_of_range_options(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        cpd.DataOptions(**kwargs)


def test_unwritable_output_directory(tmp_path, vocab_file):
    corpus = write_corpus(tmp_path / "c.txt", [["w1 w2 w3"], ["w4 w5 w6"]])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot write output file"):
        cpd.create_pretraining_data(
            corpus, str(blocker / "sub" / "o.tfrecord"), cpd.TokenizerSpec(vocab_file),
            cpd.DataOptions(), log=None,
        )  # fmt: skip


def test_failure_midway_leaves_no_output(tmp_path, vocab_file, monkeypatch):
    corpus = write_corpus(tmp_path / "c.txt", sequential_corpus(num_docs=30))
    out = tmp_path / "o.tfrecord"
    calls = []

    def exploding(self, dupe_round, index, docs):
        calls.append(index)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return original(self, dupe_round, index, docs)

    original = cpd.ChunkWorker.process
    monkeypatch.setattr(cpd.ChunkWorker, "process", exploding)
    with pytest.raises(RuntimeError):
        cpd.create_pretraining_data(
            corpus, str(out), cpd.TokenizerSpec(vocab_file),
            cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1),
            chunk_bytes=200, log=None,
        )  # fmt: skip
    assert len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == ["c.txt"]


@pytest.mark.parametrize(
    "sig, workers, status",
    [(signal.SIGTERM, 1, 143), (signal.SIGINT, 2, 130)],  # kill; Ctrl-C to the whole group
)
def test_command_line_stopped_run_leaves_no_file(tmp_path, vocab_file, sig, workers, status):
    documents = sequential_corpus(num_docs=30)
    corpus = write_corpus(tmp_path / "c.txt", documents * 400)  # enough work to interrupt
    out = tmp_path / "out" / "o.tfrecord"
    command = [
        sys.executable, os.path.join(ROOT, "create_pretraining_data.py"),
        f"--input_file={corpus}", f"--output_file={out}", f"--vocab_file={vocab_file}",
        "--max_seq_length=32", "--max_predictions_per_seq=5", "--dupe_factor=50",
        f"--num_workers={workers}", "--chunk_mb=0.05",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True
    )
    # Wait until the run is writing and its worker processes (plus the resource tracker
    # that the spawn start method adds; none with 1 worker, which works in-process)
    # exist, then give them time to start up.
    expected_children = workers + 1 if workers > 1 else 0
    deadline = time.time() + 60
    while time.time() < deadline and not (
        out.parent.exists()
        and os.listdir(out.parent)
        and len(children(process.pid)) >= expected_children
    ):
        time.sleep(0.05)
    time.sleep(2.0)
    if sig == signal.SIGINT:
        os.killpg(process.pid, sig)  # as a terminal's Ctrl-C: main process and workers
    else:
        process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert "Traceback" not in err
    assert os.listdir(out.parent) == []  # neither final nor temporary files


def test_command_line_reports_errors(tmp_path, vocab_file):
    command = [
        sys.executable, os.path.join(ROOT, "create_pretraining_data.py"),
        f"--input_file={tmp_path}/missing.txt", f"--output_file={tmp_path}/o.tfrecord",
        f"--vocab_file={vocab_file}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "missing.txt" in result.stderr and "Traceback" not in result.stderr


def test_sentencepiece_model_and_whole_word_masking(tmp_path):
    import build_vocab

    documents = [
        [f"the {w}ing of the river near town number {d} was slow and quiet." for w in ("walk",
         "sing", "read", "build")] for d in range(12)
    ]  # fmt: skip
    corpus = write_corpus(tmp_path / "c.txt", documents)
    prefix = str(tmp_path / "spm")
    build_vocab.build_vocab([corpus], 60, str(tmp_path / "v.txt"), True, spm_model_prefix=prefix)
    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(
        max_seq_length=64, max_predictions_per_seq=10, dupe_factor=3, do_whole_word_mask=True
    )
    spec = cpd.TokenizerSpec(spm_model_file=prefix + ".model", do_lower_case=True)
    cpd.create_pretraining_data(corpus, out, spec, options, log=None)
    tokenizer = spec.build()
    special = tokenizer.special_token_ids()
    starts_word = [not c for c in tokenizer.continuation_mask()]
    meta = json.loads(open(out + ".json").read())
    import sentencepiece

    pieces = sentencepiece.SentencePieceProcessor(model_file=prefix + ".model").get_piece_size()
    assert meta["spm_model_file"] == prefix + ".model" and meta["vocab_size"] == pieces
    records = read_records(out, 64, 10)
    checked = 0
    for r in records:
        ids = _restore(r)
        n = int(r["input_mask"].sum())
        assert ids[0] == special["[CLS]"] and ids[n - 1] == special["[SEP]"]
        masked = {int(p) for p, w in zip(r["masked_lm_positions"], r["masked_lm_weights"]) if w}
        sep = ids.index(special["[SEP]"])
        # Whole words: a masked continuation piece has its word's previous piece masked.
        for p in masked:
            if p not in (1, sep + 1) and not starts_word[ids[p]]:
                assert p - 1 in masked
                checked += 1
    assert checked > 50


def test_each_dupe_round_is_a_pass_over_the_corpus(tmp_path, vocab_file):
    # Round r of every chunk is written after round r-1 of all chunks, so the copies of a
    # sentence lie a corpus apart, and round 0 is exactly the dupe_factor=1 output.
    corpus = write_corpus(tmp_path / "c.txt", sequential_corpus(num_docs=40, seed=3))
    spec = cpd.TokenizerSpec(vocab_file)
    outputs = {}
    for dupe in (1, 3):
        out = str(tmp_path / f"d{dupe}.tfrecord")
        options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=dupe)
        cpd.create_pretraining_data(corpus, out, spec, options, chunk_bytes=2000, log=None)
        outputs[dupe] = open(out, "rb").read()
    assert len(outputs[3]) > 2.5 * len(outputs[1])
    assert outputs[3].startswith(outputs[1])


def test_corpus_without_blank_lines_is_cut_into_documents(tmp_path, vocab_file, capsys):
    # One huge "document": cut into parts, so memory stays bounded and next-sentence
    # negatives come from other parts rather than from the same text.
    lines = [" ".join(word(i * 5 + j) for j in range(5)) for i in range(600)]
    corpus = tmp_path / "one.txt"
    corpus.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1)
    summary = cpd.create_pretraining_data(
        str(corpus), out, cpd.TokenizerSpec(vocab_file), options, chunk_bytes=8000, log=None
    )
    stats = summary["stats"]
    assert stats["documents"] > 8 and stats["documents_split"] == stats["documents"] - 1
    assert stats.get("random_next_same_document", 0) == 0
    # A corpus of a single short document has no other document to draw from: counted
    # and reported.
    small = write_corpus(tmp_path / "small.txt", [lines[:20]])
    summary = cpd.create_pretraining_data(
        small, out, cpd.TokenizerSpec(vocab_file), options, log=sys.stderr
    )
    assert summary["stats"]["random_next_same_document"] > 0
    assert "came from their own document" in capsys.readouterr().err


def test_stale_temporary_files_and_metadata_are_replaced(tmp_path, vocab_file):
    corpus = write_corpus(tmp_path / "c.txt", sequential_corpus(num_docs=10))
    out = tmp_path / "o.tfrecord"
    stale = tmp_path / ".o.tfrecord.tmp-999999999"  # no such process
    stale.write_bytes(b"x" * 1000)
    (tmp_path / "o.tfrecord.json").write_text('{"max_seq_length": 999}')
    options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1)
    cpd.create_pretraining_data(corpus, str(out), cpd.TokenizerSpec(vocab_file), options, log=None)
    assert not stale.exists()
    assert json.loads((tmp_path / "o.tfrecord.json").read_text())["max_seq_length"] == 32


def test_output_path_that_is_a_directory_fails_before_any_work(tmp_path, vocab_file):
    corpus = write_corpus(tmp_path / "c.txt", sequential_corpus(num_docs=5))
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="is a directory"):
        cpd.create_pretraining_data(
            corpus, str(tmp_path / "out"), cpd.TokenizerSpec(vocab_file), cpd.DataOptions(),
            log=None,
        )  # fmt: skip


def test_a_worker_killed_by_the_system_stops_the_run_with_an_error(tmp_path, vocab_file):
    corpus = write_corpus(tmp_path / "c.txt", sequential_corpus(num_docs=30) * 300)
    out = tmp_path / "out" / "o.tfrecord"
    command = [
        sys.executable, os.path.join(ROOT, "create_pretraining_data.py"),
        f"--input_file={corpus}", f"--output_file={out}", f"--vocab_file={vocab_file}",
        "--max_seq_length=32", "--max_predictions_per_seq=5", "--dupe_factor=50",
        "--num_workers=2", "--chunk_mb=0.05",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    workers = []
    deadline = time.time() + 60
    while time.time() < deadline and len(workers) < 3:  # 2 workers + resource tracker
        time.sleep(0.1)
        workers = children(process.pid)
    time.sleep(2.0)
    # The spawn start method also runs a resource tracker child; kill a real worker.
    for pid in workers:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"resource_tracker" not in f.read():
                os.kill(pid, signal.SIGKILL)
                break
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert "a worker process died" in err and "Traceback" not in err
    assert os.listdir(out.parent) == []


def test_vocab_and_sentencepiece_flags_exclude_each_other(tmp_path, vocab_file):
    command = [
        sys.executable, os.path.join(ROOT, "create_pretraining_data.py"),
        f"--input_file={vocab_file}", f"--output_file={tmp_path}/o.tfrecord",
        f"--vocab_file={vocab_file}", f"--spm_model_file={vocab_file}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "not both" in result.stderr


def test_unreadable_input_files_are_named(tmp_path, vocab_file, monkeypatch):
    # Tests run as root, for whom file permissions do not apply: make os.access say no.
    locked = write_corpus(tmp_path / "locked.txt", [["w1 w2"]])
    fine = write_corpus(tmp_path / "fine.txt", [["w1 w2"]])
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != locked and real_access(p, mode))
    with pytest.raises(FileNotFoundError) as info:
        cpd.expand_input_files(f"{fine},{locked}")
    assert "locked.txt" in str(info.value) and "permission denied" in str(info.value)
    assert "fine.txt" not in str(info.value)
