"""Corpus → WordPiece `vocab.txt`, learned with SentencePiece.

    python build_vocab.py --input_file='corpus/*.txt' --vocab_size=30522 --output=vocab.txt

The corpus goes through the same `BasicTokenizer` as `FullTokenizer` will apply later
(cleaning, lower-casing and accent stripping with --do_lower_case, punctuation and CJK
splitting), so learned pieces never straddle punctuation and match the text the
tokenizer will actually see. SentencePiece then learns sub-word pieces from the counts
of the resulting words, and the pieces are written in WordPiece format:

    [PAD] [UNK] [CLS] [SEP] [MASK]      ids 0-4, as in the SentencePiece model
    every character, bare                "a", "é", "北", ...
    "##c" for every character c seen inside a word
    multi-character pieces               "the", "##ing", ..., most used first
    whole words, most frequent first     only if the pieces leave room
    "##c" for characters only ever seen starting a word, while room remains
    [unused0], [unused1], ...            only if the corpus is too small for vocab_size

With every character present both bare and as "##c", `FullTokenizer` maps a word of the
training corpus to [UNK] only when it is longer than 200 characters.

The corpus is streamed, never held in memory: only the count of each distinct word is
kept (if there are more than `MAX_DISTINCT_WORDS`, words seen once are forgotten).
"""

from __future__ import annotations

import collections
import glob
import io
import os
import sys
import time
from collections.abc import Iterator

import tokenization
from tokenization import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, UNK

# Words longer than this become [UNK] in FullTokenizer, so they teach nothing.
MAX_WORD_CHARS = 200
# Bound on the word-count table, so that memory stays bounded on huge corpora.
MAX_DISTINCT_WORDS = 10_000_000
_READ_CHUNK_BYTES = 4 << 20
_PROGRESS_SECONDS = 10.0


def _log(message: str) -> None:
    print(f"build_vocab: {message}", file=sys.stderr, flush=True)


def expand_input_patterns(patterns: list[str]) -> list[str]:
    """Expands glob patterns (a plain path matches itself) into a sorted list of files.

    Raises:
        ValueError: if no pattern is given or some pattern matches no file, naming it.
    """
    patterns = [p.strip() for p in patterns if p.strip()]
    if not patterns:
        raise ValueError("no input files given: pass --input_file=GLOB[,GLOB...]")
    files = []
    unmatched = []
    for pattern in patterns:
        if os.path.isfile(pattern):
            matches = [pattern]
        else:
            matches = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        if not matches:
            unmatched.append(pattern)
        files.extend(matches)
    if unmatched:
        raise ValueError(f"no input files match {', '.join(unmatched)}")
    return list(dict.fromkeys(files))  # drop repeats, keep order


def count_words(files: list[str]) -> collections.Counter[str]:
    """Counts the whitespace-separated words of `files` (after BERT's text cleaning).

    Files are read as UTF-8; invalid bytes are dropped, as the original release does.
    """
    counts: collections.Counter[str] = collections.Counter()
    num_bytes = 0
    start = last_report = time.monotonic()
    for path in files:
        with open(path, "rb") as f:
            # Whole lines at a time: a word never spans lines, so this splits as per-line.
            while lines := f.readlines(_READ_CHUNK_BYTES):
                raw = b"".join(lines)
                num_bytes += len(raw)
                counts.update(tokenization.split_words(raw.decode("utf-8", "ignore")))
                if len(counts) > MAX_DISTINCT_WORDS:
                    before = len(counts)
                    counts = collections.Counter({w: c for w, c in counts.items() if c > 1})
                    forgotten = before - len(counts)
                    _log(f"over {MAX_DISTINCT_WORDS:,} distinct words: forgot {forgotten:,}")
                now = time.monotonic()
                if now - last_report >= _PROGRESS_SECONDS:
                    last_report = now
                    rate = num_bytes / 1e6 / (now - start)
                    _log(f"read {num_bytes / 1e6:,.0f} MB ({rate:.1f} MB/s), in {path}")
    seconds = time.monotonic() - start
    _log(
        f"read {num_bytes / 1e6:,.1f} MB from {len(files)} file(s) in {seconds:.1f} s: "
        f"{sum(counts.values()):,} words, {len(counts):,} distinct"
    )
    return counts


def basic_token_counts(
    word_counts: collections.Counter[str], do_lower_case: bool
) -> collections.Counter[str]:
    """Re-counts words as the tokens `BasicTokenizer` makes of them ("Hello," → hello ,)."""
    basic = tokenization.BasicTokenizer(do_lower_case)
    counts: collections.Counter[str] = collections.Counter()
    for word, count in word_counts.items():
        for token in basic.split_word(word):
            counts[token] += count
    return counts


def _sentencepiece_words(token_counts: collections.Counter[str]) -> list[str]:
    """The words to show SentencePiece: most frequent first, ties by text (deterministic).

    U+2581 is SentencePiece's own word-start mark; words holding it are left out.
    """
    words = (w for w in token_counts if tokenization.SENTENCEPIECE_WORD_START not in w)
    return sorted(words, key=lambda w: (-token_counts[w], w))


def _train_sentencepiece(token_counts: collections.Counter[str], vocab_size: int) -> bytes:
    """Trains a unigram SentencePiece model on word counts; returns the serialized model."""
    import sentencepiece

    words = _sentencepiece_words(token_counts)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=(f"{w}\t{token_counts[w]}" for w in words),
        input_format="tsv",  # "word<TAB>count" lines
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces; we fill in
        character_coverage=1.0,  # every character becomes a piece
        normalization_rule_name="identity",  # the text is already BERT-normalised
        # The special pieces get the ids they have in vocab.txt.
        pad_id=0,
        pad_piece=PAD,
        unk_id=1,
        unk_piece=UNK,
        bos_id=-1,
        eos_id=-1,
        user_defined_symbols=[CLS, SEP, MASK],
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return model.getvalue()


def _pieces_to_wordpieces(pieces: list[str]) -> Iterator[str]:
    """One word's SentencePiece pieces as WordPiece tokens: ▁un aff able → un ##aff ##able.

    SentencePiece may split the word-start mark off as a piece of its own (▁ the); the
    piece after it then starts the word.
    """
    at_word_start = True
    for piece in pieces:
        if piece.startswith(tokenization.SENTENCEPIECE_WORD_START):
            piece = piece[1:]
            at_word_start = True
        if not piece:
            continue
        yield piece if at_word_start else tokenization.CONTINUATION_PREFIX + piece
        at_word_start = False


def _wordpiece_vocab(
    model: bytes, token_counts: collections.Counter[str], vocab_size: int
) -> tuple[list[str], dict[str, int]]:
    """Chooses the vocabulary (see the module docstring for its layout)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    start_chars: collections.Counter[str] = collections.Counter()
    inner_chars: collections.Counter[str] = collections.Counter()
    for token, count in token_counts.items():
        start_chars[token[0]] += count
        for char in token[1:]:
            inner_chars[char] += count
    all_chars = start_chars + inner_chars

    # How often each piece is used when the model tokenizes the corpus.
    words = _sentencepiece_words(token_counts)
    usage: collections.Counter[str] = collections.Counter()
    for word, pieces in zip(words, sp.encode(words, out_type=str, num_threads=os.cpu_count())):
        count = token_counts[word]
        for wordpiece in _pieces_to_wordpieces(pieces):
            usage[wordpiece] += count
    # Then the model's other pieces, best score first.
    spare = []
    for i in sorted(range(sp.get_piece_size()), key=lambda i: -sp.get_score(i)):
        piece = sp.id_to_piece(i)
        if piece in SPECIAL_TOKENS or sp.is_control(i) or sp.is_unknown(i):
            continue
        if piece.startswith(tokenization.SENTENCEPIECE_WORD_START):
            spare.append(piece[1:])
        else:
            spare.append(tokenization.CONTINUATION_PREFIX + piece)

    def by_count(counter):
        return sorted(counter, key=lambda item: (-counter[item], item))

    prefix = tokenization.CONTINUATION_PREFIX
    groups = {
        "special": list(SPECIAL_TOKENS),
        "character": by_count(all_chars),
        "##character": [prefix + c for c in by_count(inner_chars)],
        "piece": [wp for wp in by_count(usage) if len(wp.removeprefix(prefix)) > 1],
        "spare piece": [wp for wp in spare if len(wp.removeprefix(prefix)) > 1],
        "whole word": by_count(token_counts),  # small corpora: more room than pieces
        "word-start ##character": [prefix + c for c in by_count(start_chars)],
    }
    vocab: dict[str, None] = {}
    sizes = {}
    for name, tokens in groups.items():
        before = len(vocab)
        for token in tokens:
            if len(vocab) == vocab_size:
                break
            vocab.setdefault(token)
        sizes[name] = len(vocab) - before
    sizes["[unused]"] = vocab_size - len(vocab)
    for i in range(sizes["[unused]"]):
        vocab[f"[unused{i}]"] = None
    return list(vocab), sizes


def _write_atomically(path: str, data: bytes) -> None:
    """Writes `data` under a temporary name beside `path`, then renames it to `path`."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _check_directory(path: str, flag: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{flag}={path}: directory {directory} does not exist")


def build_vocab(
    input_files: list[str],
    vocab_size: int,
    output: str,
    do_lower_case: bool,
    spm_model_prefix: str | None = None,
) -> list[str]:
    """Learns a WordPiece vocabulary of exactly `vocab_size` tokens and writes it.

    The pieces are learned with SentencePiece's unigram model rather than BPE: unigram
    chooses its pieces by how much they raise the likelihood of the whole corpus and
    prunes the rest, so every slot holds a piece worth keeping, whereas BPE also keeps
    every intermediate merge (often unused once longer merges exist). Its vocabulary
    size is also exact, and the model kept with `spm_model_prefix` is the kind ALBERT
    uses.

    Args:
        input_files: Glob patterns of text files (a plain path is a pattern too).
        vocab_size: Lines in the output, special tokens included.
        output: Where to write the vocabulary (one token per line, UTF-8). Written
            under a temporary name and renamed, so it never exists half-written.
        do_lower_case: Lower-case and strip accents first; must match the
            `do_lower_case` later given to FullTokenizer.
        spm_model_prefix: If set, also keep the SentencePiece model as
            `{prefix}.model` and `{prefix}.vocab`, for `SentencePieceTokenizer`. Its
            pieces 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK]. It was trained on text that
            BasicTokenizer had split at punctuation and CJK characters; SentencePiece
            tokenization will not split there itself.

    Returns:
        The vocabulary, id order.

    Raises:
        ValueError: no files match a pattern, the corpus is empty, `vocab_size` is too
            small (the message gives the minimum), or an output directory is missing.
    """
    minimum = len(SPECIAL_TOKENS) + 1
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a vocabulary needs the "
            f"{len(SPECIAL_TOKENS)} special tokens and one entry per distinct character, "
            f"so at least {minimum}"
        )
    _check_directory(output, "--output")
    if spm_model_prefix:
        _check_directory(spm_model_prefix, "--spm_model_prefix")
    files = expand_input_patterns(input_files)

    token_counts = basic_token_counts(count_words(files), do_lower_case)
    num_long = sum(1 for token in token_counts if len(token) > MAX_WORD_CHARS)
    if num_long:
        token_counts = collections.Counter(
            {t: c for t, c in token_counts.items() if len(t) <= MAX_WORD_CHARS}
        )
        _log(f"left out {num_long:,} distinct words over {MAX_WORD_CHARS} characters")
    if not token_counts:
        raise ValueError(f"no text in {', '.join(files)}: the corpus is empty")
    num_chars = len({char for token in token_counts for char in token})
    minimum = len(SPECIAL_TOKENS) + num_chars
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for this corpus: it has {num_chars:,} "
            f"distinct characters, so the vocabulary needs at least {minimum:,} entries "
            f"({len(SPECIAL_TOKENS)} special tokens plus one per character)"
        )

    start = time.monotonic()
    _log(f"training SentencePiece (unigram) on {len(token_counts):,} distinct tokens")
    # SentencePiece also needs a slot for its word-start mark "▁", which vocab.txt has
    # no use for; only at the very minimum vocab_size does that cost an extra piece.
    model = _train_sentencepiece(token_counts, max(vocab_size, minimum + 1))
    vocab, sizes = _wordpiece_vocab(model, token_counts, vocab_size)
    _log(f"trained in {time.monotonic() - start:.1f} s")
    assert len(vocab) == vocab_size and len(set(vocab)) == vocab_size

    _write_atomically(output, "".join(token + "\n" for token in vocab).encode("utf-8"))
    summary = ", ".join(f"{n:,} {name}" for name, n in sizes.items() if n)
    _log(f"wrote {output}: {vocab_size:,} tokens ({summary})")
    if sizes["[unused]"]:
        supported = vocab_size - sizes["[unused]"]
        _log(f"the corpus supports only {supported:,} tokens; the rest are [unused] tokens")
    if spm_model_prefix:
        _write_spm_model(spm_model_prefix, model)
    return vocab


def _write_spm_model(prefix: str, model: bytes) -> None:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    # The same "piece<TAB>score" listing SentencePiece writes beside its models.
    listing = "".join(
        f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())
    )
    _write_atomically(prefix + ".model", model)
    _write_atomically(prefix + ".vocab", listing.encode("utf-8"))
    _log(f"wrote {prefix}.model and {prefix}.vocab ({sp.get_piece_size():,} pieces)")


def define_flags() -> None:
    """Declares the command-line flags (only when run as a script)."""
    from absl import flags

    flags.DEFINE_string("input_file", None, "Comma-separated globs of text files.")
    flags.DEFINE_integer("vocab_size", None, "Tokens in the vocabulary, specials included.")
    flags.DEFINE_string("output", None, "Where to write the vocabulary, e.g. vocab.txt.")
    flags.DEFINE_bool("do_lower_case", True, "Lower-case and strip accents (for uncased models).")
    flags.DEFINE_string(
        "spm_model_prefix", None, "Also keep the SentencePiece model as PREFIX.model/.vocab."
    )
    flags.mark_flags_as_required(["input_file", "vocab_size", "output"])


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = flags.FLAGS
    try:
        build_vocab(
            input_files=config.input_file.split(","),
            vocab_size=config.vocab_size,
            output=config.output,
            do_lower_case=config.do_lower_case,
            spm_model_prefix=config.spm_model_prefix,
        )
    except (ValueError, OSError) as e:
        _log(f"error: {e}")
        sys.exit(1)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
