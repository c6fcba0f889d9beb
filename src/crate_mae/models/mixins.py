"""Behaviour shared by every architecture."""

from __future__ import annotations


class SavePretrainedMixin:
    """``model.save_pretrained(dir)`` as in HF / timm: config.json + model.safetensors (see crate_mae.checkpoint)."""

    def save_pretrained(self, directory, extra=None):
        from ..checkpoint import save_pretrained

        return save_pretrained(self, directory, extra)
