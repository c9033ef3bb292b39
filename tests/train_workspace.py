"""A tiny, learnable training set-up shared by the trainer, CLI and fault tests."""

import json
import random

import create_pretraining_data as cpd

SEQ, PRED = 32, 5
NUM_WORDS = 300
VOCAB_SIZE = 5 + NUM_WORDS


def tiny_config(dropout=0.0, **overrides):
    """A 2-layer, hidden-32 BERT config for the workspace's 305-token vocabulary."""
    return dict(
        {
            "vocab_size": VOCAB_SIZE,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "hidden_act": "gelu",
            "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout,
            "max_position_embeddings": 64,
            "type_vocab_size": 2,
            "initializer_range": 0.02,
        },
        **overrides,
    )


def make_workspace(root):
    """A vocabulary, a corpus, TFRecords made from it, and two tiny BERT configs."""
    vocab = root / "vocab.txt"
    words = [f"w{i}" for i in range(NUM_WORDS)]
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    rng = random.Random(0)
    documents = []
    for _ in range(40):
        start = rng.randrange(NUM_WORDS)
        # Documents walk through the words in order, so the text is learnable.
        sentences, k = [], start
        for _ in range(rng.randint(3, 8)):
            n = rng.randint(4, 10)
            sentences.append(" ".join(words[(k + j) % NUM_WORDS] for j in range(n)))
            k += n
        documents.append(sentences)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(d) for d in documents) + "\n")
    data = str(root / "train.tfrecord")
    options = cpd.DataOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=4)
    cpd.create_pretraining_data(str(corpus), data, cpd.TokenizerSpec(str(vocab)), options, log=None)
    configs = {}
    for name, dropout in (("nodrop", 0.0), ("drop", 0.1)):
        path = root / f"bert_config_{name}.json"
        path.write_text(json.dumps(tiny_config(dropout)))
        configs[name] = str(path)
    return {"root": root, "data": data, "configs": configs, "vocab": str(vocab)}
