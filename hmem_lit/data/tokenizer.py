"""The BPE tokenizer: a byte-level BPE trained with `tokenizers` on the corpus, saved as `<data_dir>/tokenizer.json`.

Same interface as `toy.ByteTokenizer`: `encode(str) -> list[int]`, `decode(list[int]) -> str` (special tokens
dropped), `eot_id`, `pad_id`, `vocab_size`. Special tokens: `<|endoftext|>` (ends every document) and `<|pad|>`.
A user tokenizer JSON (`data.tokenizer`) is used as is if it has an end-of-text token (one of EOT_NAMES); without a
pad token (PAD_NAMES) another special token of its own pads (SmolLM2: <|im_start|>), and only a tokenizer with
no other special token gets `<|pad|>` added. Loading needs no network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

EOT, PAD = "<|endoftext|>", "<|pad|>"
EOT_NAMES = (EOT, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
# <|finetune_right_pad_id|>: Llama 3.1+ tokenizers, whose embedding table has no room for an added pad token
PAD_NAMES = (PAD, "<pad>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>")


class BPETokenizer:
    def __init__(self, tok):  # tok: tokenizers.Tokenizer
        self.tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        eot = next((t for t in EOT_NAMES if t in vocab), None)
        if eot is None:
            raise ValueError(f"tokenizer has no end-of-text token (looked for {', '.join(EOT_NAMES)})")
        pad = next((t for t in PAD_NAMES if t in vocab), None)
        if pad is None:  # another special token of its own (never produced by encoding text) keeps the model's
            # vocabulary as it is (a pretrained model's embedding has no row for an added token); else add one
            specials = sorted(
                (i, t.content) for i, t in tok.get_added_tokens_decoder().items() if t.special and t.content != eot
            )
            pad = specials[0][1] if specials else PAD
            if not specials:
                tok.add_special_tokens([PAD])
        self.eot_id = int(tok.token_to_id(eot))
        self.pad_id = int(tok.token_to_id(pad))
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: str | Path) -> None:
        from hmem_lit.utils import atomic_write_text

        atomic_write_text(path, self.tok.to_str())


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None, progress: bool = False) -> BPETokenizer:
    """Byte-level BPE over `texts` (an iterator is fine: it is streamed). Deterministic for the same input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        show_progress=progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return BPETokenizer(tok)


def tokenizer_from_file(path: str | Path) -> BPETokenizer:
    from tokenizers import Tokenizer

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {p}")
    return BPETokenizer(Tokenizer.from_file(str(p)))


def load_tokenizer(data_dir: str | Path) -> BPETokenizer:
    """The tokenizer saved with prepared data."""
    return tokenizer_from_file(Path(data_dir) / "tokenizer.json")
