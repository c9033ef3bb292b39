"""Text → tokens → ids, compatible with the original BERT release.

Two tokenizers share one interface (`tokenize`, `tokenize_to_ids`, `convert_tokens_to_ids`,
`convert_ids_to_tokens`, `vocab`, `vocab_size`, `special_token_ids`, `continuation_mask`,
`do_lower_case`, `source`):

- `FullTokenizer`: a WordPiece `vocab.txt`. Output is token-for-token that of the original
  release's tokenizer: `BasicTokenizer` (clean the text, pad CJK ideographs with spaces,
  split on whitespace, optionally lower-case and strip accents, split off punctuation)
  followed by `WordpieceTokenizer` (greedy longest-match-first with "##" continuations).
- `SentencePieceTokenizer`: an ALBERT-style or multilingual SentencePiece model.

`FullTokenizer.tokenize_to_ids` is the fast path used by data creation. Every step of
the BERT pipeline after the whitespace split works on one word at a time, so the ids of
a word never depend on its neighbours: the text is cleaned with one `str.translate`,
split with `str.split`, and each word's ids come from a cache filled on first sight by
the full per-word pipeline. Natural text repeats its words (Zipf), so nearly every word
is a dictionary hit.

This module deliberately does not import TensorFlow: data creation and vocabulary
building should not pay its start-up time.
"""

from __future__ import annotations

import itertools
import os
import unicodedata
from collections.abc import Callable, Iterable, Mapping

# The special tokens of a BERT vocabulary, declared once for the whole project.
PAD = "[PAD]"
UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
MASK = "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)

CONTINUATION_PREFIX = "##"  # WordPiece marks a piece that continues the previous one
SENTENCEPIECE_WORD_START = "\u2581"  # "▁": SentencePiece marks a piece that starts a word

# Bounds the word → ids cache of FullTokenizer (about 150 bytes an entry); when full it
# is cleared and refilled, so memory stays bounded on corpora with endless rare words.
DEFAULT_CACHE_SIZE = 1_000_000

# The code-point blocks the original release treats as CJK ideographs (each becomes a
# word of its own). Hangul, Hiragana and Katakana are not among them: those scripts
# separate words with spaces.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk_ideograph(code_point: int) -> bool:
    return any(lo <= code_point <= hi for lo, hi in _CJK_RANGES)


def _is_whitespace(char: str) -> bool:
    # \t \n \r are control characters to Unicode, but text means them as spaces.
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    # The released tokenizer drops categories Cc and Cf only; private-use (Co) and
    # unassigned (Cn) code points are kept. (Its first version, and the HuggingFace
    # ports derived from it, dropped every C* category.)
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_punctuation(char: str) -> bool:
    # Every ASCII non-alphanumeric symbol counts ("$", "^", "`" are not Unicode P*),
    # plus the Unicode punctuation categories.
    code_point = ord(char)
    if 33 <= code_point <= 47 or 58 <= code_point <= 64:
        return True
    if 91 <= code_point <= 96 or 123 <= code_point <= 126:
        return True
    return unicodedata.category(char).startswith("P")


class _LazyCharTable(dict):
    """A `str.translate` table over all of Unicode, filled one code point at a time."""

    def __init__(self, rule: Callable[[int], int | str | None]):
        super().__init__()
        self._rule = rule

    def __missing__(self, code_point: int) -> int | str | None:
        value = self._rule(code_point)
        self[code_point] = value
        return value


def _clean_rule(code_point: int) -> int | str | None:
    """The original `_clean_text` then `_tokenize_chinese_chars`, for one code point."""
    char = chr(code_point)
    if code_point == 0 or code_point == 0xFFFD or _is_control(char):
        return None  # dropped
    if _is_whitespace(char):
        return " "
    if _is_cjk_ideograph(code_point):
        return f" {char} "
    return code_point  # unchanged


def _strip_mark_rule(code_point: int) -> int | None:
    return None if unicodedata.category(chr(code_point)) == "Mn" else code_point


_CLEAN_TABLE = _LazyCharTable(_clean_rule)
_STRIP_MARK_TABLE = _LazyCharTable(_strip_mark_rule)
# For pure-ASCII text cleaning only deletes control characters: \t \n \r become spaces,
# which str.split() treats as spaces anyway, and no ASCII character is a CJK ideograph.
_ASCII_CLEAN_TABLE = {cp: None for cp in range(128) if _clean_rule(cp) is None}


def split_words(text: str) -> list[str]:
    """Cleans `text` and splits it on whitespace, exactly as BERT's BasicTokenizer does.

    Drops NUL, U+FFFD and control characters, turns whitespace into spaces, surrounds
    each CJK ideograph with spaces, then applies `str.split()`. Like the original, this
    means characters that `str.split()` treats as separators but cleaning leaves alone
    (U+2028, U+2029) still separate words.

    Args:
        text: Any text: a line, or several.

    Returns:
        The whitespace-free words, before lower-casing and punctuation splitting.
    """
    if text.isascii():
        return text.translate(_ASCII_CLEAN_TABLE).split()
    return text.translate(_CLEAN_TABLE).split()


def strip_accents(text: str) -> str:
    """Decomposes `text` (NFD) and drops the combining marks (category Mn): "é" → "e"."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFD", text).translate(_STRIP_MARK_TABLE)


def split_on_punctuation(word: str) -> list[str]:
    """Splits `word` so that every punctuation character is a piece of its own.

    Example: "hi!?x" → ["hi", "!", "?", "x"].
    """
    pieces = []
    start = 0
    for i, char in enumerate(word):
        if _is_punctuation(char):
            if start < i:
                pieces.append(word[start:i])
            pieces.append(char)
            start = i + 1
    if start < len(word):
        pieces.append(word[start:])
    return pieces


def load_vocab(vocab_file: str) -> dict[str, int]:
    """Reads a WordPiece vocabulary: one token per line, the id being the line index.

    Each line is stripped of surrounding whitespace, as in the original release. The
    file is read as UTF-8 (a leading byte-order mark is ignored) and split on "\\n" only.

    Args:
        vocab_file: Path of the vocabulary, e.g. "vocab.txt".

    Returns:
        token → id, in file order.

    Raises:
        FileNotFoundError: `vocab_file` does not exist.
        ValueError: the file is empty, has a blank line, or lists a token twice.
    """
    vocab: dict[str, int] = {}
    try:
        with open(vocab_file, encoding="utf-8-sig", newline="\n") as f:
            for index, line in enumerate(f):
                token = line.strip()
                if not token:
                    raise ValueError(
                        f"{vocab_file}: line {index + 1} is blank; a vocabulary file holds "
                        "exactly one token on every line"
                    )
                if token in vocab:
                    raise ValueError(
                        f"{vocab_file}: token {token!r} appears twice, on lines "
                        f"{vocab[token] + 1} and {index + 1}; every token must be unique"
                    )
                vocab[token] = index
    except FileNotFoundError:
        raise FileNotFoundError(f"vocabulary file {vocab_file} does not exist") from None
    if not vocab:
        raise ValueError(f"vocabulary file {vocab_file} is empty")
    return vocab


def _missing_special_tokens_error(source: str, missing: Iterable[str], advice: str) -> ValueError:
    return ValueError(
        f"{source} lacks {', '.join(missing)}: a BERT vocabulary needs "
        f"{' '.join(SPECIAL_TOKENS)}; {advice}"
    )


class BasicTokenizer:
    """Cleaning, whitespace and punctuation splitting, and optional lower-casing.

    Attributes:
        do_lower_case: Whether words are lower-cased and stripped of accents.
    """

    def __init__(self, do_lower_case: bool = True):
        self.do_lower_case = do_lower_case

    def tokenize(self, text: str) -> list[str]:
        """Splits `text` into words and punctuation: "Héllo, wörld!" → hello , world !."""
        return [token for word in split_words(text) for token in self.split_word(word)]

    def split_word(self, word: str) -> list[str]:
        """Tokenizes one whitespace-free word of `split_words`' output."""
        if self.do_lower_case:
            word = strip_accents(word.lower())
        pieces = split_on_punctuation(word)
        if word.isascii():
            return pieces
        # Lower-casing and decomposition could in principle create whitespace; the
        # original re-splits its output on whitespace, and so do we.
        return " ".join(pieces).split()


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece over a fixed vocabulary.

    A word is cut into the longest vocabulary entry that starts it, then the longest
    "##"-prefixed entry that continues it, and so on: "unaffable" → un ##aff ##able.
    A word with a part no entry matches, or longer than `max_input_chars_per_word`
    characters, becomes the single `unk_token`.
    """

    def __init__(
        self, vocab: Mapping[str, int], unk_token: str = UNK, max_input_chars_per_word: int = 200
    ):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word
        # No entry is longer than this, so longer candidates need not be looked up.
        self._max_piece_chars = max((len(token) for token in vocab), default=0)

    def tokenize(self, text: str) -> list[str]:
        """Tokenizes whitespace-separated words already passed through BasicTokenizer."""
        return [piece for word in text.split() for piece in self.tokenize_word(word)]

    def tokenize_word(self, word: str) -> list[str]:
        """Tokenizes one word (no whitespace) into its word pieces."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        vocab = self.vocab
        pieces = []
        start = 0
        while start < len(word):
            end = min(len(word), start + self._max_piece_chars)
            while end > start:
                piece = word[start:end] if start == 0 else CONTINUATION_PREFIX + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            else:  # nothing in the vocabulary continues the word here
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces


class _WordCache(dict):
    """word → ids, computed on first sight; cleared whenever it reaches `max_size`."""

    def __init__(self, compute: Callable[[str], tuple[int, ...]], max_size: int):
        super().__init__()
        self._compute = compute
        self._max_size = max_size

    def __missing__(self, word: str) -> tuple[int, ...]:
        ids = self._compute(word)
        if len(self) >= self._max_size:
            self.clear()
        self[word] = ids
        return ids


class FullTokenizer:
    """BERT's WordPiece tokenizer for a `vocab.txt`, token-for-token like the original.

    Attributes:
        vocab: token → id.
        do_lower_case: Whether text is lower-cased and stripped of accents first.
        source: The vocabulary file, for error messages.
        basic_tokenizer: The word- and punctuation-level step.
        wordpiece_tokenizer: The sub-word step.
    """

    def __init__(
        self, vocab_file: str, do_lower_case: bool = True, cache_size: int = DEFAULT_CACHE_SIZE
    ):
        """Loads the vocabulary.

        Args:
            vocab_file: A WordPiece vocabulary, one token per line.
            do_lower_case: True for uncased models.
            cache_size: Most words whose ids `tokenize_to_ids` remembers at once.
        """
        self.source = vocab_file
        self.do_lower_case = do_lower_case
        self.vocab = load_vocab(vocab_file)
        self._tokens = list(self.vocab)  # id → token (ids are the line indices 0..n-1)
        self.basic_tokenizer = BasicTokenizer(do_lower_case)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab)
        self._cache_size = cache_size
        self._word_ids = _WordCache(self._compute_word_ids, cache_size)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """Tokenizes `text` into word pieces: "Unaffable!" → un ##aff ##able !."""
        wordpiece = self.wordpiece_tokenizer
        return [
            piece
            for token in self.basic_tokenizer.tokenize(text)
            for piece in wordpiece.tokenize_word(token)
        ]

    def tokenize_to_ids(self, text: str) -> list[int]:
        """The ids of `tokenize(text)`, several times faster (see the module docstring).

        Args:
            text: Any text: a line, or several.

        Returns:
            Exactly `convert_tokens_to_ids(tokenize(text))`.
        """
        word_ids = map(self._word_ids.__getitem__, split_words(text))
        return list(itertools.chain.from_iterable(word_ids))

    def _compute_word_ids(self, word: str) -> tuple[int, ...]:
        wordpiece = self.wordpiece_tokenizer
        pieces = [
            piece
            for token in self.basic_tokenizer.split_word(word)
            for piece in wordpiece.tokenize_word(token)
        ]
        return tuple(self.convert_tokens_to_ids(pieces))

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Maps tokens to ids; every token must be in the vocabulary."""
        vocab = self.vocab
        try:
            return [vocab[token] for token in tokens]
        except KeyError as e:
            raise ValueError(f"token {e.args[0]!r} is not in {self.source}") from None

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Maps ids in [0, vocab_size) back to tokens."""
        ids = list(ids)
        tokens = self._tokens
        for i in ids:
            if not 0 <= i < len(tokens):
                raise ValueError(
                    f"id {i} is outside {self.source}, which has ids 0..{len(tokens) - 1}"
                )
        return [tokens[i] for i in ids]

    def special_token_ids(self) -> dict[str, int]:
        """The ids of [PAD] [UNK] [CLS] [SEP] [MASK], keyed by those names.

        Raises:
            ValueError: naming the vocabulary and every special token it lacks.
        """
        missing = [token for token in SPECIAL_TOKENS if token not in self.vocab]
        if missing:
            raise _missing_special_tokens_error(
                self.source, missing, "build one with build_vocab.py"
            )
        return {token: self.vocab[token] for token in SPECIAL_TOKENS}

    def continuation_mask(self) -> list[bool]:
        """[vocab_size] bools: True where the token continues a word ("##" pieces)."""
        return [token.startswith(CONTINUATION_PREFIX) for token in self._tokens]

    def __getstate__(self) -> dict:
        # Worker processes get the tokenizer without its (possibly huge) cache.
        state = self.__dict__.copy()
        del state["_word_ids"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._word_ids = _WordCache(self._compute_word_ids, self._cache_size)


class SentencePieceTokenizer:
    """A SentencePiece model (ALBERT, multilingual models) behind the FullTokenizer interface.

    The special tokens map to the model's pieces as follows, first match wins:

    - [PAD]: the piece "[PAD]", the model's pad piece (`pad_id()`, if enabled), "<pad>";
    - [UNK]: the model's unknown piece (`unk_id()`), whatever its name;
    - [CLS], [SEP], [MASK]: the piece "[CLS]" / "[SEP]" / "[MASK]", else "<cls>" /
      "<sep>" / "<mask>" (XLNet's names).

    The sentence-boundary pieces "<s>" and "</s>" are not used as stand-ins: every
    default SentencePiece model has them, so accepting them would pass models that
    were never meant for BERT. Models from `build_vocab.py --spm_model_prefix` and
    ALBERT's models have all five under their BERT names.

    Attributes:
        vocab: piece → id.
        do_lower_case: Whether text is lower-cased and stripped of accents first.
        source: The model file, for error messages.
    """

    def __init__(self, model_file: str, do_lower_case: bool = False):
        """Loads the model.

        Args:
            model_file: A SentencePiece model, e.g. "30k-clean.model".
            do_lower_case: Lower-case the text and strip its accents (NFD, then drop
                combining marks) before SentencePiece sees it, as BERT's uncased
                tokenizer does and as ALBERT's preprocessing does. Leave False for
                cased and multilingual models.
        """
        import sentencepiece  # only SentencePiece users pay for its import

        self.source = model_file
        self.do_lower_case = do_lower_case
        if not os.path.exists(model_file):
            raise FileNotFoundError(f"SentencePiece model {model_file} does not exist")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"cannot load SentencePiece model {model_file}: {e}") from None
        sp = self._sp
        self.vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        self._special_ids = self._find_special_ids()

    def _find_special_ids(self) -> dict[str, int]:
        sp = self._sp
        candidates = {
            PAD: [PAD, sp.pad_id(), "<pad>"],
            UNK: [sp.unk_id()],
            CLS: [CLS, "<cls>"],
            SEP: [SEP, "<sep>"],
            MASK: [MASK, "<mask>"],
        }
        found = {}
        for name, options in candidates.items():
            for option in options:
                if isinstance(option, int):
                    if 0 <= option < self.vocab_size:
                        found[name] = option
                        break
                elif option in self.vocab:
                    found[name] = self.vocab[option]
                    break
        return found

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def _preprocess(self, text: str) -> str:
        if self.do_lower_case:
            return strip_accents(text.lower())
        return text

    def tokenize(self, text: str) -> list[str]:
        """Tokenizes `text` into SentencePiece pieces: "Hello" → ▁hel lo."""
        return self._sp.encode(self._preprocess(text), out_type=str)

    def tokenize_to_ids(self, text: str) -> list[int]:
        """Exactly `convert_tokens_to_ids(tokenize(text))`, without building the strings."""
        return self._sp.encode(self._preprocess(text), out_type=int)

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Maps pieces to ids; a piece the model does not have maps to its unknown id."""
        piece_to_id = self._sp.piece_to_id
        return [piece_to_id(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Maps ids in [0, vocab_size) back to pieces."""
        size = self.vocab_size
        id_to_piece = self._sp.id_to_piece
        tokens = []
        for i in ids:
            if not 0 <= i < size:
                raise ValueError(f"id {i} is outside {self.source}, which has ids 0..{size - 1}")
            tokens.append(id_to_piece(i))
        return tokens

    def special_token_ids(self) -> dict[str, int]:
        """The ids standing for [PAD] [UNK] [CLS] [SEP] [MASK] (see the class docstring).

        Raises:
            ValueError: naming the model and every special token it lacks.
        """
        missing = [token for token in SPECIAL_TOKENS if token not in self._special_ids]
        if missing:
            raise _missing_special_tokens_error(
                self.source,
                missing,
                "train a model with them as user-defined symbols, e.g. with "
                "build_vocab.py --spm_model_prefix",
            )
        return dict(self._special_ids)

    def continuation_mask(self) -> list[bool]:
        """[vocab_size] bools: True for pieces that continue a word.

        A piece continues a word when it does not start with "▁" and is neither a
        special, control, unknown or unused piece nor punctuation: as in ALBERT's
        whole-word masking, a punctuation piece glued to a word ("word" + ",") starts a
        word of its own.
        """
        sp = self._sp
        special = set(self._special_ids.values())
        return [
            not (
                piece.startswith(SENTENCEPIECE_WORD_START)
                or all(map(_is_punctuation, piece))
                or i in special
                or sp.is_control(i)
                or sp.is_unknown(i)
                or sp.is_unused(i)
            )
            for i, piece in enumerate(self.convert_ids_to_tokens(range(self.vocab_size)))
        ]

    def __getstate__(self) -> dict:
        # The SentencePiece processor is rebuilt from its serialized model.
        state = self.__dict__.copy()
        state["_sp"] = self._sp.serialized_model_proto()
        return state

    def __setstate__(self, state: dict) -> None:
        import sentencepiece

        self.__dict__.update(state)
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=state["_sp"])
