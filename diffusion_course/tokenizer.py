"""A word-level tokeniser: prompt → fixed-length tensor of token ids (what CLIP's tokeniser does for
Stable Diffusion, on a vocabulary of a few dozen words instead of 49,408 byte-pair pieces).

    tok = WordTokenizer(shapes.VOCAB, max_length=12)
    tok.encode("a red circle above a blue square")   # tensor([1, 2, 3, 7, 10, 2, 5, 8, 0, 0, 0, 0])
    tok(["a red circle", "a blue square"])           # (2, 12) ids for a batch
    tok.decode(tok.encode("A red circle."))          # 'a red circle'

Documented behaviour:
* Prompts are lower-cased, a final "." is dropped and runs of spaces collapse; anything else that
  is not a letter or a space is an error naming the character.
* Every sequence starts with ``<start>`` (id 1) and is padded with ``<pad>`` (id 0). The start token
  is never padding, so attention always has somewhere to look.
* The empty prompt ``""`` is allowed: it is ``<start>`` followed by padding — the **null caption**
  that classifier-free guidance uses as "no condition".
* Unknown words and prompts longer than ``max_length − 1`` words raise ``ValueError``.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable, Sequence

import torch

PAD, START = "<pad>", "<start>"


class WordTokenizer:
    def __init__(self, vocab: Sequence[str], max_length: int = 12):
        if isinstance(vocab, (str, bytes)) or not isinstance(vocab, Iterable):
            raise TypeError(f"vocab must be a list of words, got {type(vocab).__name__} {vocab!r:.40}")
        words = list(dict.fromkeys(vocab))
        if not words or any(not isinstance(w, str) or not re.fullmatch(r"[a-z]+", w) for w in words):
            raise ValueError("vocab must be a non-empty list of lower-case words (letters only)")
        if isinstance(max_length, bool) or not isinstance(max_length, int):
            raise TypeError(f"max_length must be an int, got {type(max_length).__name__} {max_length!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (start token + one word), got {max_length}")
        self.itos = [PAD, START, *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_length = max_length
        self.pad_id, self.start_id = 0, 1

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @staticmethod
    def normalize(prompt: str) -> str:
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}")
        text = " ".join(prompt.lower().split())
        text = text[:-1].rstrip() if text.endswith(".") else text
        bad = sorted({c for c in text if not ("a" <= c <= "z" or c == " ")})
        if bad:
            raise ValueError(f"prompt {prompt!r} contains characters the tokeniser does not know: "
                             f"{''.join(bad)!r} (letters and spaces only)")
        return text

    def words(self, prompt: str) -> list[str]:
        return self.normalize(prompt).split()

    def encode(self, prompt: str) -> torch.Tensor:
        """One prompt → (max_length,) int64 ids."""
        if isinstance(prompt, (bytes, bytearray)):
            raise TypeError("a prompt must be a str, got bytes: decode it first (e.g. prompt.decode('utf-8'))")
        words = self.words(prompt)
        if len(words) > self.max_length - 1:
            raise ValueError(f"prompt has {len(words)} words; at most {self.max_length - 1} fit "
                             f"(max_length={self.max_length} includes the start token)")
        ids = [self.start_id]
        for w in words:
            if w not in self.stoi or w in (PAD, START):
                near = difflib.get_close_matches(w, self.itos[2:], n=3)
                hint = f"; did you mean {' / '.join(near)}?" if near else "."
                raise ValueError(f"unknown word {w!r}{hint} Known words: {', '.join(self.itos[2:])}")
            ids.append(self.stoi[w])
        return torch.tensor(ids + [self.pad_id] * (self.max_length - len(ids)), dtype=torch.long)

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """A prompt or a list of prompts → (B, max_length) int64 ids."""
        if isinstance(prompts, str):
            prompts = [prompts]
        elif isinstance(prompts, (bytes, bytearray)):
            raise TypeError("prompts must be a str or a list of str, got bytes: decode them first "
                            "(e.g. prompts.decode('utf-8'))")
        elif not isinstance(prompts, Sequence) and not isinstance(prompts, Iterable) or prompts is None:
            raise TypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
        prompts = list(prompts)
        if len(prompts) == 0:
            raise ValueError("no prompts given")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__} {p!r:.40}")
        return torch.stack([self.encode(p) for p in prompts])

    def decode(self, ids: torch.Tensor) -> str | list[str]:
        """Ids (L,) → prompt; (B, L) → list of prompts. Special tokens are dropped."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be an integer tensor (L,) or (B, L), got {type(ids).__name__}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.ndim not in (1, 2):
            raise TypeError(f"ids must be an integer tensor (L,) or (B, L), got dtype {ids.dtype}, "
                            f"shape {tuple(ids.shape)}")
        if ids.ndim == 2:
            return [self.decode(row) for row in ids]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size - 1}]")
        return " ".join(self.itos[i] for i in ids.tolist() if i > 1)

    def tokens(self, ids: torch.Tensor) -> list[str]:
        """Ids (L,) → the token strings, padding included (labels for attention maps)."""
        return [self.itos[i] for i in ids.tolist()]

    def null(self, batch_size: int = 1) -> torch.Tensor:
        """The null caption (the empty prompt), (batch_size, max_length)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return self.encode("").expand(batch_size, -1).clone()
