"""Tests for build_vocab.py: a small corpus in, a WordPiece vocab.txt out."""

import glob
import os
import random
import subprocess
import sys

import pytest

import build_vocab
import tokenization
from tokenization import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, UNK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEMS = ["light", "house", "keep", "climb", "tower", "fog", "boat", "rock", "gull", "wind"]
STEMS += ["watch", "book", "storm", "harbor", "lamp", "sail", "anchor", "rain", "shore"]
SUFFIXES = ["", "", "s", "ing", "ed", "er", "ers", "ward"]
PREFIXES = ["", "", "", "un", "re", "over"]
EXTRAS = ["Café", "naïve", "ÅNGSTRÖM", "灯塔很高", "¿Qué?", "—", "don't", "3.14", "(sic)"]
LONG_WORD = "x" * 250  # over FullTokenizer's 200-character limit: [UNK] whatever the vocab


def corpus_lines(seed=0, num_lines=400):
    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        words = []
        for _ in range(rng.randint(3, 12)):
            if rng.random() < 0.1:
                words.append(rng.choice(EXTRAS))
            else:
                words.append(rng.choice(PREFIXES) + rng.choice(STEMS) + rng.choice(SUFFIXES))
        words[0] = words[0].capitalize()
        line = " ".join(words) + rng.choice([".", "!", "?", ","])
        if i % 50 == 7:
            line += "\x07 \u00a0tail"  # a control character and a no-break space
        if i == 123:
            line += " " + LONG_WORD
        lines.append(line)
    return lines


@pytest.fixture
def corpus(tmp_path):
    """Two files, one document per ~20 lines, blank lines between documents."""
    lines = corpus_lines()
    directory = tmp_path / "corpus"
    directory.mkdir()
    for part, chunk in enumerate((lines[:200], lines[200:])):
        text = "".join(line + ("\n\n" if i % 20 == 19 else "\n") for i, line in enumerate(chunk))
        (directory / f"part-{part}.txt").write_text(text, encoding="utf-8")
    return {"glob": str(directory / "part-*.txt"), "lines": lines, "dir": tmp_path}


def corpus_characters(lines, do_lower_case, inside_words_only=False):
    """The characters of the corpus's words (only those after a word's first, if asked)."""
    basic = tokenization.BasicTokenizer(do_lower_case)
    tokens = [t for line in lines for t in basic.tokenize(line) if len(t) <= 200]
    return {char for token in tokens for char in token[1 if inside_words_only else 0 :]}


def test_vocabulary_has_exact_size_specials_first_and_no_duplicates(corpus):
    output = str(corpus["dir"] / "vocab.txt")
    vocab = build_vocab.build_vocab([corpus["glob"]], 300, output, do_lower_case=True)
    with open(output, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "" and lines[:-1] == vocab  # one token a line, newline-terminated
    assert len(vocab) == 300 == len(set(vocab))
    assert tuple(vocab[:5]) == SPECIAL_TOKENS == (PAD, UNK, CLS, SEP, MASK)
    assert all(token == token.strip() and token for token in vocab)
    assert not [t for t in vocab if t.startswith("[unused")]  # the corpus fills 300

    tokenizer = tokenization.FullTokenizer(output, do_lower_case=True)
    assert tokenizer.vocab_size == 300
    assert tokenizer.special_token_ids() == {PAD: 0, UNK: 1, CLS: 2, SEP: 3, MASK: 4}


def test_every_character_is_present_bare_and_as_continuation(corpus):
    output = str(corpus["dir"] / "vocab.txt")
    vocab = set(build_vocab.build_vocab([corpus["glob"]], 300, output, do_lower_case=True))
    characters = corpus_characters(corpus["lines"], do_lower_case=True)
    assert {"a", "e", "q", "灯", "¿", "—", "'"} <= characters
    assert not {"A", "å", "é"} & characters  # lower-cased, accents gone
    assert characters <= vocab
    # Every character that continues some word is there as "##c"; "##c" for characters
    # only ever seen starting a word ("灯", "¿") come last, where room allows.
    inside = corpus_characters(corpus["lines"], do_lower_case=True, inside_words_only=True)
    assert {"##" + c for c in inside} <= vocab
    assert "灯" not in inside and "##灯" not in vocab
    # And there are multi-character pieces of both kinds, learned from the corpus.
    assert {"light", "anchor", "harbor"} <= vocab
    assert len([t for t in vocab if t.startswith("##") and len(t) > 3]) >= 3


def test_tokenizing_the_corpus_gives_no_unknown_words(corpus):
    output = str(corpus["dir"] / "vocab.txt")
    build_vocab.build_vocab([corpus["glob"]], 300, output, do_lower_case=True)
    tokenizer = tokenization.FullTokenizer(output, do_lower_case=True)
    unknown = []
    for line in corpus["lines"]:
        tokens = tokenizer.tokenize(line)
        unknown += [line for token in tokens if token == UNK]
    # Only the one word over 200 characters, which no vocabulary could cover.
    assert len(unknown) == 1 and LONG_WORD in unknown[0]
    # The pieces are real sub-words: the corpus needs fewer tokens than characters.
    text = " ".join(corpus["lines"])
    assert len(tokenizer.tokenize_to_ids(text)) < 0.4 * len(text.replace(" ", ""))


def test_cased_vocabulary(corpus):
    output = str(corpus["dir"] / "cased.txt")
    vocab = set(build_vocab.build_vocab([corpus["glob"]], 300, output, do_lower_case=False))
    characters = corpus_characters(corpus["lines"], do_lower_case=False)
    assert {"A", "Å", "é"} <= characters <= vocab
    tokenizer = tokenization.FullTokenizer(output, do_lower_case=False)
    tokens = tokenizer.tokenize(" ".join(corpus["lines"]))
    assert tokens.count(UNK) == 1


def test_sentencepiece_model_works_with_sentencepiece_tokenizer(corpus):
    prefix = str(corpus["dir"] / "spm")
    output = str(corpus["dir"] / "vocab.txt")
    build_vocab.build_vocab(
        [corpus["glob"]], 300, output, do_lower_case=True, spm_model_prefix=prefix
    )
    tokenizer = tokenization.SentencePieceTokenizer(prefix + ".model", do_lower_case=True)
    # The model's first five pieces are the special tokens, with vocab.txt's ids.
    assert tokenizer.special_token_ids() == {PAD: 0, UNK: 1, CLS: 2, SEP: 3, MASK: 4}
    assert tokenizer.convert_ids_to_tokens(range(5)) == list(SPECIAL_TOKENS)
    line = "Lighthouse keepers climbed the towers. ¿Qué?"
    ids = tokenizer.tokenize_to_ids(line)
    assert ids == tokenizer.convert_tokens_to_ids(tokenizer.tokenize(line))
    assert tokenizer.tokenize("Lighthouse")[0].startswith("▁light")
    with open(prefix + ".vocab", encoding="utf-8") as f:
        listing = [row.split("\t")[0] for row in f.read().splitlines()]
    assert listing == tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size))


def test_small_corpus_is_padded_with_unused_tokens(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("Hello, world!\nHello there.\n", encoding="utf-8")
    output = str(tmp_path / "vocab.txt")
    vocab = build_vocab.build_vocab([str(corpus)], 60, output, do_lower_case=True)
    assert len(vocab) == 60 == len(set(vocab))
    assert {"hello", "world", "there", "h", "##h", "!"} <= set(vocab)
    # With room to spare, "##c" is there even for characters only seen starting words.
    assert {"##" + c for c in "helowrdt!,."} <= set(vocab)
    assert vocab[-1] == "[unused0]" or vocab[-1].startswith("[unused")
    unused = [t for t in vocab if t.startswith("[unused")]
    assert unused == [f"[unused{i}]" for i in range(len(unused))]
    assert vocab[-len(unused) :] == unused


def test_smallest_possible_vocabulary(corpus):
    characters = corpus_characters(corpus["lines"], do_lower_case=True)
    minimum = len(SPECIAL_TOKENS) + len(characters)
    output = str(corpus["dir"] / "vocab.txt")
    vocab = build_vocab.build_vocab([corpus["glob"]], minimum, output, do_lower_case=True)
    assert set(vocab) == set(SPECIAL_TOKENS) | characters
    with pytest.raises(ValueError, match=f"needs at least {minimum} entries"):
        build_vocab.build_vocab([corpus["glob"]], minimum - 1, output, do_lower_case=True)


def test_deterministic(corpus):
    first = build_vocab.build_vocab([corpus["glob"]], 200, str(corpus["dir"] / "a.txt"), True)
    second = build_vocab.build_vocab([corpus["glob"]], 200, str(corpus["dir"] / "b.txt"), True)
    assert first == second


def test_errors_are_clear_and_leave_no_output(corpus, tmp_path):
    output = tmp_path / "vocab.txt"
    output.write_text("previous\n")  # an earlier vocabulary must survive a failed run
    missing = str(tmp_path / "nothing-*.txt")
    with pytest.raises(ValueError, match=r"no input files match .*nothing-\*\.txt"):
        build_vocab.build_vocab([corpus["glob"], missing], 300, str(output), True)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \t\n\x00\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no text in .*empty\.txt: the corpus is empty"):
        build_vocab.build_vocab([str(empty)], 300, str(output), True)
    with pytest.raises(ValueError, match=r"vocab_size=5 is too small: .*at least 6"):
        build_vocab.build_vocab([corpus["glob"]], 5, str(output), True)
    with pytest.raises(ValueError, match=r"--output=.*: directory .*no-such-dir does not exist"):
        build_vocab.build_vocab([corpus["glob"]], 300, str(tmp_path / "no-such-dir/v.txt"), True)
    with pytest.raises(ValueError, match=r"no input files given"):
        build_vocab.build_vocab([""], 300, str(output), True)
    assert output.read_text() == "previous\n"
    assert sorted(os.listdir(tmp_path)) == ["corpus", "empty.txt", "vocab.txt"]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "build_vocab.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_command_line(corpus):
    directory = corpus["dir"]
    first, second = sorted(glob.glob(corpus["glob"]))
    result = run_cli(
        f"--input_file={first},{second}",
        "--vocab_size=250",
        f"--output={directory / 'cli.txt'}",
        "--nodo_lower_case",
        f"--spm_model_prefix={directory / 'cli'}",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr and "250 tokens" in result.stderr
    expected = build_vocab.build_vocab(
        [corpus["glob"]], 250, str(directory / "api.txt"), do_lower_case=False
    )
    assert (directory / "cli.txt").read_text(encoding="utf-8") == "".join(
        t + "\n" for t in expected
    )
    assert (directory / "cli.model").exists() and (directory / "cli.vocab").exists()

    failure = run_cli(
        f"--input_file={directory / 'absent*.txt'}", "--vocab_size=250", "--output=x.txt"
    )
    assert failure.returncode == 1
    assert "no input files match" in failure.stderr and "absent*.txt" in failure.stderr
    assert not os.path.exists(os.path.join(ROOT, "x.txt"))


def test_interrupted_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("previous\n")

    class Unwritable:  # bytes-like for nobody: f.write raises mid-way
        pass

    with pytest.raises(TypeError):
        build_vocab._write_atomically(str(path), Unwritable())
    assert path.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["vocab.txt"]
    build_vocab._write_atomically(str(path), b"new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["vocab.txt"]
