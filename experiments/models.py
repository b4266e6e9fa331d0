"""Small real models for the experiments: a CNN for Fashion-MNIST and a character-level transformer."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(1->c1, 3x3) - ReLU - maxpool - conv(c1->c2, 3x3) - ReLU - maxpool - linear(->hidden) - ReLU - linear(->10)."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64, classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CharTransformer(nn.Module):
    """Decoder-only transformer over characters: token + learned position embeddings, pre-norm blocks, tied head."""

    def __init__(self, vocabulary_size: int, context: int = 64, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocabulary_size, width)
        nn.init.normal_(self.token.weight, std=0.02)  # tied head: unit-scale embeddings would give huge logits
        self.position = nn.Parameter(torch.zeros(context, width))
        nn.init.normal_(self.position, std=0.02)
        block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        length = codes.shape[1]
        h = self.token(codes) + self.position[:length]
        h = self.blocks(h, mask=self.causal_mask[:length, :length], is_causal=True)
        return self.norm(h) @ self.token.weight.T  # tied output embedding: fewer parameters, better small-data fit
