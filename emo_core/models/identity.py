"""Identity projection (Hallo's ``ImageProjModel``): a face-recognition embedding becomes a
few tokens that both UNets cross-attend to (their ``attn2`` slots)."""
from __future__ import annotations

import torch
from torch import nn


class IdentityProjection(nn.Module):
    def __init__(self, embedding_dim: int, tokens: int, token_dim: int):
        super().__init__()
        self.tokens, self.token_dim = tokens, token_dim
        self.proj = nn.Linear(embedding_dim, tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding [b, embedding_dim] -> tokens [b, tokens, token_dim]."""
        if embedding.ndim != 2 or embedding.shape[1] != self.proj.in_features:
            raise ValueError(f"face embedding must be [batch, {self.proj.in_features}]; got {tuple(embedding.shape)}")
        return self.norm(self.proj(embedding).reshape(-1, self.tokens, self.token_dim))
