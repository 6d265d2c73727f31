"""Character-level language model on the Python standard library's own source files.

The files are chosen deterministically (sorted names, size window) and split into train and
validation *by file*, so validation text is code the model never saw. Nothing is downloaded.
"""

from __future__ import annotations

import math
import sysconfig
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import TaskError
from .base import Target, Task

# Vocabulary: tab, newline, printable ASCII; everything else maps to one "unknown" id.
_CHARS = "\t\n" + "".join(chr(c) for c in range(32, 127))
VOCAB = len(_CHARS) + 1
_UNK = len(_CHARS)
_LOOKUP = torch.full((256,), _UNK, dtype=torch.long)
for _i, _c in enumerate(_CHARS):
    _LOOKUP[ord(_c)] = _i


def encode(text: str) -> torch.Tensor:
    raw = torch.frombuffer(bytearray(text.encode("ascii", errors="replace")), dtype=torch.uint8)
    return _LOOKUP[raw.long()]


@lru_cache(maxsize=2)
def _corpus(target_chars: int, val_every: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if 4_000 <= p.stat().st_size <= 60_000)
    if len(files) < 2 * val_every:
        raise TaskError(f"the 'text' task found only {len(files)} source files under {stdlib}; "
                        "it needs a standard CPython installation")
    train_parts, val_parts, used = [], [], 0
    for i, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        (val_parts if i % val_every == val_every - 1 else train_parts).append(text)
        used += 1
        if sum(map(len, train_parts)) >= target_chars:
            break
    return encode("\n".join(train_parts)), encode("\n".join(val_parts)), used


def _windows(ids: torch.Tensor, block: int) -> TensorDataset:
    n = (len(ids) - 1) // block
    x = ids[: n * block].view(n, block)             # (N, T)
    y = ids[1 : n * block + 1].view(n, block)       # (N, T) next characters
    return TensorDataset(x.clone(), y.clone())


class CharTransformer(nn.Module):
    """A small decoder-only transformer (pre-norm, causal, learned positions)."""

    def __init__(self, vocab: int = VOCAB, block: int = 64, d_model: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(block, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", torch.triu(torch.full((block, block), float("-inf")), 1), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[-1]
        h = self.tok(idx) + self.pos[:t]                          # (B, T, C)
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))                            # (B, T, V)


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy in nats; (B, T, V) logits against (B, T) ids."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def make_task(target_chars: int = 600_000, block: int = 64, val_every: int = 8) -> Task:
    train_ids, val_ids, used = _corpus(target_chars, val_every)
    train, val = _windows(train_ids, block), _windows(val_ids, block)
    return Task(
        name="text",
        make_model=lambda: CharTransformer(block=block),
        train_data=train,
        val_data=val,
        loss_fn=lm_loss,
        metric_fn=None,
        metric_name=None,
        optimizer="adam",
        lr=3e-3,
        reference_batch=32,
        target=Target("loss", 2.0, "val"),
        description=(f"char LM on {used} stdlib .py files: {len(train):,} train / {len(val):,} val "
                     f"windows of {block} chars, vocab {VOCAB} (uniform loss {math.log(VOCAB):.2f} nats)"),
        model_description="decoder transformer, 2 layers, d=64, 4 heads, context 64",
    )
