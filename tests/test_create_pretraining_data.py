"""Tests of create_pretraining_data.py: instance building, masking, records, bad input."""

import collections
import glob
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import create_pretraining_data as cpd
import data_format

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
    return cpd.Vocab(size=size, cls_id=2, sep_id=3, mask_id=4, unk_id=1, is_continuation=flags)


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
    # One batch for the whole file: parsing record by record costs milliseconds each.
    batches = list(tf.data.TFRecordDataset(path).batch(1 << 30))
    if not batches:
        return []
    parsed = {k: v.numpy() for k, v in tf.io.parse_example(batches[0], spec).items()}
    return [{k: v[i] for k, v in parsed.items()} for i in range(len(batches[0]))]


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


def test_random_documents_come_from_other_sources_uniformly():
    documents = [[[i]] for i in range(6)]  # document i is its own marker
    rng = random.Random(0)
    stats = collections.Counter()

    class Reservoir:
        documents = [[[100]], [[105]], [[106]]]
        sources = [0, 5, 6]

    # Parts 0-3 of source 0 and one document each of sources 1 and 2.
    negatives = cpd.RandomDocuments(documents[:6], [0, 0, 0, 0, 1, 2], Reservoir())
    draws = collections.Counter(negatives.draw(1, rng, stats)[0][0] for _ in range(4000))
    # Uniform over the 2 documents of other sources: 2,000 each, binomial sd 32; 5 sd.
    assert set(draws) == {4, 5} and abs(draws[4] - 2000) < 160
    draws = collections.Counter(negatives.draw(4, rng, stats)[0][0] for _ in range(5000))
    # Source 1's negatives: any of the other 5 documents, 1,000 each (sd 28).
    assert set(draws) == {0, 1, 2, 3, 5} and max(abs(c - 1000) for c in draws.values()) < 140
    assert stats == {}
    # A slice of source 0 only: the reservoir's documents of other sources, counted.
    negatives = cpd.RandomDocuments(documents[:3], [0, 0, 0], Reservoir())
    draws = collections.Counter(negatives.draw(0, rng, stats)[0][0] for _ in range(2000))
    assert set(draws) == {105, 106} and abs(draws[105] - 1000) < 112  # sd 22
    assert stats == {"random_next_from_reservoir": 2000}
    # One source in all: its own document, counted.
    negatives = cpd.RandomDocuments(documents[:3], [0, 0, 0], None)
    assert negatives.draw(2, rng, stats) == [[2]]
    assert stats["random_next_same_document"] == 1


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


def expected_random_next_share(sentence_counts):
    """The expected share of random-next pairs when every document fits one pair.

    With pairs far longer than the documents, each pair starts from all the sentences
    left: A takes a uniform 1..n-1 of n >= 2 of them; B is the rest (done) or, with
    probability 1/2, random, and the n - a sentences not used are put back. A single
    sentence left is always a random pair. Exact expectations by recursion.
    """
    instances, randoms = {1: 1.0}, {1: 1.0}
    for n in range(2, max(sentence_counts) + 1):
        rest = [n - a for a in range(1, n)]
        instances[n] = 1 + 0.5 * sum(instances[m] for m in rest) / len(rest)
        randoms[n] = 0.5 + 0.5 * sum(randoms[m] for m in rest) / len(rest)
    return sum(randoms[n] for n in sentence_counts) / sum(instances[n] for n in sentence_counts)


def test_label_zero_pairs_are_adjacent_without_truncation(tmp_path, vocab_file):
    # Short sentences and a long max_seq_length: pairs are never truncated, so a true
    # continuation must start exactly where A ends.
    documents = sequential_corpus(num_docs=20, sentences=(4, 8), words=(2, 4), seed=5)
    corpus = write_corpus(tmp_path / "c.txt", documents)
    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(
        max_seq_length=200, max_predictions_per_seq=10, dupe_factor=40, short_seq_prob=0.0
    )
    cpd.create_pretraining_data(corpus, out, cpd.TokenizerSpec(vocab_file), options, log=None)
    checked = 0
    records = read_records(out, 200, 10)
    # Leftover single sentences are always random pairs, so the share is above 1/2; its
    # expectation comes from the documents' sentence counts (two sentences: 2/3 by hand).
    # The share is a ratio of sums over documents, whose spread exceeds a binomial
    # share's by about 20% (0.0156 against 0.0133, simulated for this corpus): 5
    # binomial standard errors are about 4 true ones.
    assert expected_random_next_share([2]) == pytest.approx(2 / 3)
    share = np.mean([r["next_sentence_labels"][0] for r in records])
    expected = expected_random_next_share([len(d) for d in documents])
    assert 0.55 < expected < 0.6
    assert abs(share - expected) < 5 * np.sqrt(expected * (1 - expected) / len(records))
    for r in records:
        ids = _restore(r)
        n = int(r["input_mask"].sum())
        sep = ids.index(3)
        a, b = ids[1:sep], ids[sep + 1 : n - 1]
        if r["next_sentence_labels"][0] == 0:
            assert b[0] == a[-1] + 1
            checked += 1
    assert checked > 20


def test_data_format_names_stay_importable_from_the_data_script():
    # input_pipeline.py and older code import these from create_pretraining_data.
    for name in ("METADATA_FORMAT", "feature_spec", "metadata_path", "ExampleEncoder",
                 "tfrecord_frame", "masked_crc32c"):  # fmt: skip
        assert getattr(cpd, name) is getattr(data_format, name)


# ---------------------------------------------------------------------------------------
# The whole tool


def test_identical_records_for_any_number_of_workers(tmp_path, vocab_file, monkeypatch):
    # A reservoir smaller than the corpus: it fills, and its threshold falls as the
    # chunks come back, so the workers see other thresholds than a single process does.
    monkeypatch.setattr(cpd, "RESERVOIR_DOCUMENTS", 3)
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
        # Documents longer than chunk_bytes / PARTS_PER_CHUNK are cut in parts, which
        # count as parts of one document.
        stats = summary["stats"]
        assert stats["documents_split"] > 0 and stats["documents"] == 40
        assert stats["document_parts"] == 40 + stats["documents_split"]
    assert outputs[0] == outputs[1]
    assert all(len(x) > 1000 for x in outputs[0])
    # A shuffle budget far below the records' size, with at most 2 record buckets: each
    # bucket is split again in pass 3. The same records (they do not depend on the
    # buckets), in another order.
    monkeypatch.setattr(cpd, "MAX_RECORD_BUCKETS", 2)
    small = [str(tmp_path / f"small_{i}.tfrecord") for i in range(2)]
    cpd.create_pretraining_data(
        corpus, small, cpd.TokenizerSpec(vocab_file), options,
        chunk_bytes=3000, shuffle_bytes=2000, log=None,
    )  # fmt: skip
    assert json.loads(open(small[0] + ".json").read())["record_buckets"] == 2

    def records(paths):
        return sorted(raw for p in paths for raw in tf.data.TFRecordDataset(p).as_numpy_iterator())

    assert records(small) == records(paths)
    assert [open(p, "rb").read() for p in small] != outputs[1]
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


def test_chunk_and_shuffle_sizes_must_be_positive(tmp_path, vocab_file):
    corpus = write_corpus(tmp_path / "c.txt", [["w1 w2 w3"], ["w4 w5 w6"]])
    out, spec, options = (
        str(tmp_path / "o.tfrecord"),
        cpd.TokenizerSpec(vocab_file),
        cpd.DataOptions(),
    )
    with pytest.raises(ValueError, match="--chunk_mb"):
        cpd.create_pretraining_data(corpus, out, spec, options, chunk_bytes=0, log=None)
    with pytest.raises(ValueError, match="--shuffle_mb"):
        cpd.create_pretraining_data(corpus, out, spec, options, shuffle_bytes=0, log=None)
    assert os.listdir(tmp_path) == ["c.txt"]


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

    def exploding(self, *args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return original(self, *args)

    original = cpd.ChunkWorker.make_records
    monkeypatch.setattr(cpd.ChunkWorker, "make_records", exploding)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cpd.create_pretraining_data(
            corpus, str(out), cpd.TokenizerSpec(vocab_file),
            cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1),
            chunk_bytes=200, log=None,
        )  # fmt: skip
    assert len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == ["c.txt"]  # the work directory is gone too


class StderrLines:
    """Collects the stderr lines of a process in a thread, to wait for a given line."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.done = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.done = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 120) -> bool:
        """Whether a line containing `text` appeared (False: the stream ended first).

        The timeout only stops a broken run from hanging the tests.
        """
        with self._changed:
            self._changed.wait_for(
                lambda: self.done or any(text in line for line in self.lines), timeout
            )
            return any(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(timeout=120)
        return "".join(self.lines)


def data_command(corpus, out, vocab_file, *flags) -> list[str]:
    return [
        sys.executable, os.path.join(ROOT, "create_pretraining_data.py"),
        f"--input_file={corpus}", f"--output_file={out}", f"--vocab_file={vocab_file}",
        *flags,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "sig, workers, status",
    [(signal.SIGTERM, 1, 143), (signal.SIGINT, 2, 130)],  # kill; Ctrl-C to the whole group
)
def test_command_line_stopped_run_leaves_no_file(tmp_path, vocab_file, sig, workers, status):
    documents = sequential_corpus(num_docs=30)
    corpus = write_corpus(tmp_path / "c.txt", documents * 100)  # enough work to interrupt
    out = tmp_path / "out" / "o.tfrecord"
    command = data_command(
        corpus, out, vocab_file, "--max_seq_length=32", "--max_predictions_per_seq=5",
        "--dupe_factor=50", f"--num_workers={workers}", "--chunk_mb=0.05",
    )  # fmt: skip
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True
    )
    stderr = StderrLines(process)
    # Signal once pass 2 has begun (50 rounds to go): the outputs and the work directory
    # exist, and the workers have started or are starting (pass 2 submits work at once;
    # a worker starts with SIGINT blocked, so a Ctrl-C during its start-up is safe).
    assert stderr.wait_for("pass 2/3"), stderr.text()
    if sig == signal.SIGINT:
        os.killpg(process.pid, sig)  # as a terminal's Ctrl-C: main process and workers
    else:
        process.send_signal(sig)
    process.wait(timeout=120)
    err = stderr.text()
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


def tagged_corpus(num_short=60, long_at=(7, 31, 52), words_per_document=40, seed=0):
    """Documents whose words belong to them alone; a few long ones (to be cut in parts).

    Document d uses only the words w[d * words_per_document ... (d + 1) *
    words_per_document - 1], so any token id t names its document: (t - 5) //
    words_per_document (ids 0-4 are special).
    """
    rng = random.Random(seed)
    documents = []
    for d in range(num_short + len(long_at)):
        num_sentences = rng.randint(150, 200) if d in long_at else rng.randint(3, 8)
        base = d * words_per_document
        documents.append([
            " ".join(word(base + rng.randrange(words_per_document))
                     for _ in range(rng.randint(3, 10)))
            for _ in range(num_sentences)
        ])  # fmt: skip
    assert len(documents) * words_per_document <= NUM_WORDS
    return documents


def record_sources(records, words_per_document=40):
    """(source document of A, source document of B, label) of each record.

    The masking is undone first (masked_lm_positions/ids), so a random replacement
    token cannot name another document; every token of A must name one document, and
    every token of B one document.
    """
    sources = []
    for r in records:
        ids = _restore(r)
        n = int(r["input_mask"].sum())
        sep = ids.index(3)
        a = {(t - 5) // words_per_document for t in ids[1:sep]}
        b = {(t - 5) // words_per_document for t in ids[sep + 1 : n - 1]}
        assert len(a) == 1 and len(b) == 1, (a, b)
        sources.append((a.pop(), b.pop(), int(r["next_sentence_labels"][0])))
    return sources


def test_records_are_shuffled_globally_and_negatives_come_from_other_documents(
    tmp_path, vocab_file
):
    documents = tagged_corpus()
    corpus = write_corpus(tmp_path / "c.txt", documents)
    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=10)
    # Small chunks: 8 document buckets, the long documents cut into ~10 parts each.
    summary = cpd.create_pretraining_data(
        corpus, out, cpd.TokenizerSpec(vocab_file), options, chunk_bytes=4000, log=None
    )
    stats = summary["stats"]
    assert stats["documents"] == len(documents) and stats["documents_split"] > 20
    meta = json.loads(open(out + ".json").read())
    assert meta["document_buckets"] > 4
    sources = record_sources(read_records(out, 32, 5))
    n = len(sources)
    assert n > 2000

    # (a) No trace of the corpus order (or of the rounds) in the output order. Under a
    # uniformly random order, the correlation of the ranks of position and source
    # document (Spearman's rho, ties given mid-ranks) has mean 0 and variance exactly
    # 1/(n - 1), as for the Pearson correlation of any two fixed sequences under a random
    # permutation; it is close to normal for n in the thousands: 5 standard deviations.
    # Records written round by round in corpus order (the previous streaming order)
    # give rho = sqrt(1 / (1 + 12 var(round))) = 0.1 with 10 rounds (0.11 measured),
    # above the bound (0.085 for the ~3,400 records here).
    def ranks(values):
        order = np.argsort(values, kind="stable")
        sorted_values = np.asarray(values)[order]
        result = np.empty(len(values))
        start = 0
        for end in range(1, len(values) + 1):
            if end == len(values) or sorted_values[end] != sorted_values[start]:
                result[order[start:end]] = (start + end - 1) / 2
                start = end
        return result

    rho = np.corrcoef(np.arange(n), ranks([a for a, _, _ in sources]))[0, 1]
    assert abs(rho) < 5 / np.sqrt(n - 1), rho

    # (b) Neighbours share a document no more often than in a random order: there, each
    # of the n - 1 adjacent pairs shares one with probability sum_d n_d (n_d - 1) /
    # (n (n - 1)), and their count (weakly dependent rare events) is close to Poisson:
    # mean + 5 standard deviations (~400 + 100 here). The previous streaming order,
    # shuffled within chunks only, gave 1,480.
    counts = collections.Counter(a for a, _, _ in sources)
    expected = sum(c * (c - 1) for c in counts.values()) / n
    adjacent = sum(sources[i][0] == sources[i + 1][0] for i in range(n - 1))
    assert adjacent <= expected + 5 * np.sqrt(expected), (adjacent, expected)

    # (c) A random next sentence never comes from A's own source document (there are 63),
    # not even for the long documents cut in parts; (d) a true one always does.
    randoms = [(a, b) for a, b, label in sources if label == 1]
    assert all(a != b for a, b in randoms)
    assert all(a == b for a, b, label in sources if label == 0)
    assert 0.45 < len(randoms) / n < 0.65
    assert {a for a, _ in randoms} >= {7, 31, 52}  # the long documents took part
    assert stats["random_next"] == len(randoms)
    assert stats.get("random_next_same_document", 0) == 0


def test_reservoir_keeps_the_smallest_keys_whatever_was_sent(tmp_path):
    rng = random.Random(0)
    items = [(rng.random(), source, b"document %d;" % source) for source in range(500)]
    everything = cpd.ReservoirSample(20)
    for item in items:
        everything.offer(*item)
    # As from workers: in chunks of 10, only the candidates under the threshold seen
    # when the chunk was sent, up to 4 chunks earlier (the work in flight).
    sent = cpd.ReservoirSample(20)
    thresholds = collections.deque([1.0] * 4)
    for start in range(0, 500, 10):
        below = thresholds.popleft()
        for item in items[start : start + 10]:
            if item[0] < below:
                sent.offer(*item)
        thresholds.append(sent.threshold)
    expected = sorted(sorted(items)[:20], key=lambda item: item[1])
    for sample, name in ((everything, "a"), (sent, "b")):
        assert sample.write(str(tmp_path / name)) == 20
        assert (tmp_path / name).read_bytes() == b"".join(item[2] for item in expected)


def test_negatives_of_a_dominant_document_come_from_the_reservoir(
    tmp_path, vocab_file, monkeypatch
):
    # One long document cut into ~40 parts and two short ones: most slices hold parts of
    # the long one only, so its negatives must come from the reservoir (here of 2 of the
    # 3 documents, so that it is full before the corpus ends).
    monkeypatch.setattr(cpd, "RESERVOIR_DOCUMENTS", 2)
    documents = tagged_corpus(num_short=2, long_at=(1,))
    documents[1] = documents[1] * 3
    corpus = write_corpus(tmp_path / "c.txt", documents)
    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=2)
    spec = cpd.TokenizerSpec(vocab_file)
    summary = cpd.create_pretraining_data(corpus, out, spec, options, chunk_bytes=2000, log=None)
    # The same bytes from two worker processes (which receive work ahead of the
    # reservoir's threshold).
    two = str(tmp_path / "two.tfrecord")
    cpd.create_pretraining_data(
        corpus, two, spec, options, num_workers=2, chunk_bytes=2000, log=None
    )
    assert open(two, "rb").read() == open(out, "rb").read()
    stats = summary["stats"]
    assert stats["documents"] == 3 and stats["document_parts"] > 30
    sources = record_sources(read_records(out, 32, 5))
    randoms = [(a, b) for a, b, label in sources if label == 1]
    assert all(a != b for a, b in randoms) and all(a == b for a, b, lb in sources if lb == 0)
    from_long = [b for a, b in randoms if a == 1]
    assert len(from_long) > 100 and set(from_long) == {0, 2}
    assert stats["random_next_from_reservoir"] > len(from_long) / 2
    assert stats.get("random_next_same_document", 0) == 0


def test_corpus_without_blank_lines_is_one_document_cut_into_parts(tmp_path, vocab_file, capsys):
    # One huge document: cut into parts, so memory stays bounded. It is still one
    # document: every negative necessarily comes from it, and the counter says so.
    lines = [" ".join(word(i * 5 + j) for j in range(5)) for i in range(600)]
    corpus = tmp_path / "one.txt"
    corpus.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1)
    summary = cpd.create_pretraining_data(
        str(corpus), out, cpd.TokenizerSpec(vocab_file), options, chunk_bytes=8000,
        log=sys.stderr,
    )  # fmt: skip
    stats = summary["stats"]
    assert stats["documents"] == 1 and stats["document_parts"] > 8
    assert stats["documents_split"] == stats["document_parts"] - 1
    labels = [int(r["next_sentence_labels"][0]) for r in read_records(out, 32, 5)]
    assert stats["random_next"] == sum(labels) > 0
    assert stats["random_next_same_document"] == stats["random_next"]
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
    corpus = write_corpus(tmp_path / "c.txt", sequential_corpus(num_docs=30) * 100)
    out = tmp_path / "out" / "o.tfrecord"
    command = data_command(
        corpus, out, vocab_file, "--max_seq_length=32", "--max_predictions_per_seq=5",
        "--dupe_factor=50", "--num_workers=2", "--chunk_mb=0.05",
    )  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stderr = StderrLines(process)
    assert stderr.wait_for("pass 2/3"), stderr.text()
    # Pass 1 ran on the workers, so one exists (the spawn start method also runs a
    # resource tracker child): kill a real worker, as the kernel's OOM killer would.
    workers = []
    while not workers and process.poll() is None:
        for pid in children(process.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"resource_tracker" not in f.read():
                        workers.append(pid)
            except FileNotFoundError:  # a process that just ended
                pass
        time.sleep(0.01)  # polling interval
    os.kill(workers[0], signal.SIGKILL)
    process.wait(timeout=120)
    err = stderr.text()
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


def test_non_text_fraction_counts_invalid_bytes_and_control_characters():
    assert cpd.non_text_fraction(b"") == 0.0
    assert cpd.non_text_fraction("naïve café\tok\r\n\f".encode()) == 0.0
    assert cpd.non_text_fraction(b"ab\x00\x01") == 0.5
    assert cpd.non_text_fraction(b"ab\xff\xfe") == 0.5  # one U+FFFD per invalid byte
    assert cpd.non_text_fraction("abcé".encode()[:-1]) == 0.0  # a character cut off


def test_input_that_is_not_text_is_refused(tmp_path, vocab_file):
    # A TFRecord given as text (the evaluation's case: it made 8,284 instances, exit 0).
    records = tmp_path / "data.tfrecord"
    encoder = cpd.ExampleEncoder(max_seq_length=32, max_predictions_per_seq=5, vocab_size=4009)
    instance = cpd.TrainingInstance([2, 100, 3, 200, 3], 1, [1], [100], False)
    records.write_bytes(cpd.tfrecord_frame(encoder.serialize(instance)) * 500)
    fine = write_corpus(tmp_path / "fine.txt", sequential_corpus(num_docs=10))
    out = tmp_path / "out" / "o.tfrecord"
    spec, options = cpd.TokenizerSpec(vocab_file), cpd.DataOptions(dupe_factor=1)
    with pytest.raises(ValueError) as info:
        cpd.create_pretraining_data(f"{fine},{records}", str(out), spec, options, log=None)
    message = str(info.value)
    assert "data.tfrecord" in message and "not UTF-8 text" in message
    assert "fine.txt" not in message
    assert not out.parent.exists()
    # Binary data after a first 64 KB of text: found while reading, named, nothing left.
    mixed = tmp_path / "mixed.txt"
    text = b"w1 w2 w3 w4 w5\n" * 5000  # 75 KB: the first-bytes check sees text only
    mixed.write_bytes(text + random.Random(0).randbytes(1_000_000))  # about half not text
    with pytest.raises(ValueError, match=r"mixed.txt'?: \d+% of it is not text"):
        cpd.create_pretraining_data(str(mixed), str(out), spec, options, log=None)
    assert os.listdir(out.parent) == []
    # Latin-1 text passes: its accented letters are repaired and counted.
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("w1 w2 w3 café w4\n\nw5 w6 été w7\n".encode("latin-1"))
    summary = cpd.create_pretraining_data(str(latin), str(out), spec, options, log=None)
    assert summary["stats"]["invalid_utf8_lines"] == 2


def test_unknown_token_rate_is_reported_and_warned(tmp_path, vocab_file, capsys):
    # The vocabulary (w0..w3999) is uncased. With --nodo_lower_case each capitalised
    # word is exactly one [UNK] (WordPiece finds no piece of "W12"), so the rate is the
    # share of capitalised words.
    rng = random.Random(0)

    def corpus_with_upper_case(name, num_upper):
        words = [word(rng.randrange(100)) for _ in range(2000)]
        for i in rng.sample(range(2000), num_upper):
            words[i] = words[i].upper()
        lines = [" ".join(words[i : i + 10]) for i in range(0, 2000, 10)]
        return write_corpus(tmp_path / name, [lines[i : i + 10] for i in range(0, 200, 10)])

    out = str(tmp_path / "o.tfrecord")
    options = cpd.DataOptions(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1)
    cased = cpd.TokenizerSpec(vocab_file, do_lower_case=False)
    corpus = corpus_with_upper_case("upper.txt", 300)
    summary = cpd.create_pretraining_data(corpus, out, cased, options, log=sys.stderr)
    assert summary["unknown_token_rate"] == pytest.approx(300 / 2000)
    assert json.loads(open(out + ".json").read())["unknown_token_rate"] == pytest.approx(0.15)
    err = capsys.readouterr().err
    assert "[UNK] 15.00%" in err
    assert "warning: 15.0% of the tokens are [UNK]" in err and "use --do_lower_case" in err
    # Lower-cased, the same text has no [UNK] and no warning.
    uncased = cpd.TokenizerSpec(vocab_file, do_lower_case=True)
    summary = cpd.create_pretraining_data(corpus, out, uncased, options, log=sys.stderr)
    err = capsys.readouterr().err
    assert summary["unknown_token_rate"] == 0 and "[UNK] 0.00%" in err and "warning" not in err
    # Under the 1% threshold (15 of 2,000 words): reported, not warned.
    corpus = corpus_with_upper_case("few.txt", 15)
    summary = cpd.create_pretraining_data(corpus, out, cased, options, log=sys.stderr)
    err = capsys.readouterr().err
    assert summary["unknown_token_rate"] == pytest.approx(0.0075)
    assert "[UNK] 0.75%" in err and "warning" not in err


def random_word_corpus(path, num_bytes, seed=0):
    """Documents of 5-30 sentences of 5-15 random words w0..w3999, about num_bytes."""
    rng = random.Random(seed)
    documents, size = [], 0
    while size < num_bytes:
        document = [
            " ".join(word(rng.randrange(NUM_WORDS)) for _ in range(rng.randint(5, 15)))
            for _ in range(rng.randint(5, 30))
        ]
        documents.append(document)
        size += sum(len(sentence) + 1 for sentence in document) + 1
    return write_corpus(path, documents)


def final_names(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def test_killed_runs_leave_no_output_and_the_next_run_makes_the_same_bytes(tmp_path, vocab_file):
    corpus = random_word_corpus(tmp_path / "c.txt", 200_000)
    names = ["a.tfrecord", "b.tfrecord"]
    flags = (
        "--max_seq_length=64", "--max_predictions_per_seq=10", "--dupe_factor=5",
        "--num_workers=2", "--chunk_mb=0.03", "--shuffle_mb=0.25",
    )  # fmt: skip

    def start(directory):
        out = ",".join(str(directory / name) for name in names)
        command = data_command(corpus, out, vocab_file, *flags)
        process = subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True
        )
        return process, StderrLines(process)

    # An uninterrupted run: the bytes every later run must make.
    reference_dir = tmp_path / "reference"
    process, stderr = start(reference_dir)
    assert process.wait(timeout=300) == 0, stderr.text()
    reference = {name: (reference_dir / name).read_bytes() for name in names}
    total = sum(map(len, reference.values()))

    out_dir = tmp_path / "out"

    def hidden_bytes(pattern: str) -> int:
        return sum(os.path.getsize(p) for p in glob.glob(str(out_dir / pattern)))

    # Kill -9 (the whole process group: main process and workers, with no chance to
    # clean up) at moments spread over the run, each an observable state: a phase's
    # first log line, or a random fraction of a phase's bytes written.
    rng = random.Random(7)
    moments = [
        ("pass 1/3", None, 0.0),  # while the workers start and tokenize
        ("pass 2/3", None, 0.0),  # as the first instances are made
        ("pass 2/3", ".a.tfrecord.tmp-{pid}.work/records-*", rng.uniform(0.1, 0.7)),
        ("pass 3/3", ".[ab].tfrecord.tmp-{pid}", rng.uniform(0.05, 0.6)),  # the shuffle
    ]
    for line, pattern, fraction in moments:
        process, stderr = start(out_dir)
        assert stderr.wait_for(line), stderr.text()
        if pattern is not None:
            pattern = pattern.format(pid=process.pid)
            while hidden_bytes(pattern) < fraction * total and process.poll() is None:
                time.sleep(0.001)  # polling interval
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it had ended
            pass
        process.wait(timeout=60)
        err = stderr.text()
        if process.returncode == -signal.SIGKILL:
            assert final_names(out_dir) == [], (line, fraction)  # nothing under a final name
            assert [n for n in os.listdir(out_dir) if n.startswith(".")], line  # leftovers
        else:
            # Only the short shuffle pass may finish before the kill lands; then the
            # output is whole, and that run removed what the one killed before it left.
            assert line == "pass 3/3" and process.returncode == 0, err
            assert "left by a killed run" in err, err
            assert {name: (out_dir / name).read_bytes() for name in names} == reference
            for name in names:
                (out_dir / name).unlink()
                (out_dir / (name + ".json")).unlink()

    # The next run removes what the killed ones left (if the last one was killed: else
    # the last one did, above) and makes the same bytes.
    leftovers = [n for n in os.listdir(out_dir) if n.startswith(".")]
    process, stderr = start(out_dir)
    assert process.wait(timeout=300) == 0, stderr.text()
    assert ("left by a killed run" in stderr.text()) == bool(leftovers), (leftovers, stderr.text())
    assert {name: (out_dir / name).read_bytes() for name in names} == reference
    assert final_names(out_dir) == sorted(names + [name + ".json" for name in names])
    assert sorted(os.listdir(out_dir)) == final_names(out_dir)  # no temporary file left


# Runs the command line with a SIGKILL injected at an exact point of the last phase.
KILL_AT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import create_pretraining_data as cpd
import data_format
from absl import app

where = sys.argv[1]
if where == "shuffle":  # in pass 3, as the second record bucket starts
    shuffle_records, calls = cpd.shuffle_records, []

    def killed_shuffle(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return shuffle_records(*args, **kwargs)

    cpd.shuffle_records = killed_shuffle
else:  # in the commit, right after the first record file got its final name
    replace = os.replace

    def killed_replace(source, destination):
        replace(source, destination)
        if not destination.endswith(".json"):
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = killed_replace
sys.argv = ["create_pretraining_data.py"] + sys.argv[2:]
cpd.define_flags()
app.run(cpd.main)
"""


@pytest.mark.parametrize("where", ["shuffle", "commit"])
def test_kill_during_the_shuffle_or_the_commit(tmp_path, vocab_file, where):
    corpus = random_word_corpus(tmp_path / "c.txt", 30_000)
    names = ["a.tfrecord", "b.tfrecord"]
    out_dir = tmp_path / "out"
    flags = [
        f"--input_file={corpus}", f"--vocab_file={vocab_file}", "--max_seq_length=64",
        "--max_predictions_per_seq=10", "--dupe_factor=3", "--num_workers=1",
        "--shuffle_mb=0.05", "--output_file=" + ",".join(str(out_dir / n) for n in names),
    ]  # fmt: skip
    script = KILL_AT.format(root=ROOT)
    killed = subprocess.run(
        [sys.executable, "-c", script, where, *flags], capture_output=True, text=True, cwd=ROOT
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "record bucket(s)" in killed.stderr and "left by" not in killed.stderr
    if where == "shuffle":
        assert final_names(out_dir) == []
    else:
        # Killed inside the renames: a record file under its final name is whole and has
        # its own metadata beside it; the other outputs are not there yet.
        assert final_names(out_dir) == ["a.tfrecord", "a.tfrecord.json", "b.tfrecord.json"]
        meta = json.loads((out_dir / "a.tfrecord.json").read_text())
        assert meta["num_instances"] == len(read_records(str(out_dir / "a.tfrecord"), 64, 10))
    # The same command again cleans up and makes what an uninterrupted run makes.
    command = [sys.executable, os.path.join(ROOT, "create_pretraining_data.py"), *flags]
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "left by a killed run" in again.stderr, again.stderr
    assert sorted(os.listdir(out_dir)) == sorted(names + [n + ".json" for n in names])
    reference_dir = tmp_path / "reference"
    reference_flags = [f.replace(str(out_dir), str(reference_dir)) for f in flags]
    reference = [sys.executable, os.path.join(ROOT, "create_pretraining_data.py"), *reference_flags]
    assert subprocess.run(reference, capture_output=True, cwd=ROOT).returncode == 0
    for name in names:
        assert (out_dir / name).read_bytes() == (reference_dir / name).read_bytes()
