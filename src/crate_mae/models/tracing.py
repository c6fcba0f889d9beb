"""The one tracing mechanism: forward hooks that record what every CRATE layer computes, without changing it.

``with LayerRecorder(model) as rec: model(imgs)`` fills ``rec.traces[("encoder", i)]`` (and ``("decoder", i)`` for a
CRATE-MAE) with :class:`~crate_mae.models.outputs.LayerTrace` objects. Hooks only read (they return ``None``), so the
model's outputs are bit-identical with and without them, and they are removed on exit, even on error.

Encoder layer (``CrateBlock``):   z_in = block input, mssa_in = norm1 output, z_half = norm2 input,
                                  ista_in = norm2 output, z_out = ista output.
Decoder layer (``CrateDecoderBlock``): z_in = block input, z_half = linear output (Y' = W LN(Y)),
                                  mssa_in = norm2 output, z_out = block output.
``CrateMAE.trace_layers`` is one forward pass under a recorder; the recorder also works on any other forward pass
and on the encoder-only ``crate_*`` classifiers.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from .base import Capabilities
from .outputs import LayerTrace


def crate_blocks(model: nn.Module) -> dict[str, nn.ModuleList | nn.Sequential]:
    """The CRATE layer stacks of a model: {"encoder": blocks} or {"encoder": ..., "decoder": ...}."""
    if isinstance(model, Capabilities) and model.white_box:  # CrateMAE or a CRATE classifier
        # CrateMAE's submodules (torch types a module's attributes Tensor | Module)
        return (
            {"encoder": model.encoder.blocks, "decoder": model.decoder.blocks}  # type: ignore[union-attr, dict-item]
            if model.has_decoder
            else {"encoder": model.blocks}
        )
    raise ValueError(
        f"layer-wise analysis needs a CRATE model (CrateMAE or CrateEncoder), got "
        f"{type(model).__name__}; ViT-MAE layers have no subspaces or sparse codes to measure"
    )


class LayerRecorder:
    """Context manager recording a :class:`LayerTrace` per CRATE layer on each forward pass (last pass wins).

    Tensors are detached; call :meth:`clear` between batches to free them.
    """

    def __init__(self, model: nn.Module, parts: tuple[str, ...] = ("encoder", "decoder")):
        self.model = model
        self.stacks = {k: v for k, v in crate_blocks(model).items() if k in parts}
        self.traces: dict[tuple[str, int], LayerTrace] = {}
        self._raw: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self._handles: list[RemovableHandle] = []

    # -- hook plumbing ---------------------------------------------------------------------------------------------
    def _store(self, key: tuple[str, int], name: str, t: torch.Tensor) -> None:
        self._raw.setdefault(key, {})[name] = t.detach()

    def _out(self, key, name):
        def hook(module, args, output):
            self._store(key, name, output)

        return hook

    def _in(self, key, name):
        def hook(module, args):
            self._store(key, name, args[0])

        return hook

    def attach(self) -> LayerRecorder:
        if self._handles:
            raise RuntimeError("LayerRecorder is already attached")
        for part, blocks in self.stacks.items():
            for i, blk in enumerate(blocks):
                key = (part, i)
                # each block class declares where its LayerTrace fields are (torch types attributes Tensor | Module)
                for sub, kind, name in blk.TRACE:  # type: ignore[union-attr]
                    m = blk.get_submodule(sub)
                    self._handles.append(
                        m.register_forward_pre_hook(self._in(key, name))
                        if kind == "in"
                        else m.register_forward_hook(self._out(key, name))
                    )
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        self._raw.clear()
        self.traces.clear()

    def collect(self) -> dict[tuple[str, int], LayerTrace]:
        """Turn the tensors of the last forward pass into LayerTraces (called by ``__iter__`` users and measure)."""
        self.traces = {key: LayerTrace(**raw) for key, raw in self._raw.items() if "z_out" in raw}
        return self.traces

    def __iter__(self) -> Iterator[tuple[tuple[str, int], LayerTrace]]:
        return iter(self.collect().items())

    def __enter__(self) -> LayerRecorder:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)
