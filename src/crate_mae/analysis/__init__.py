"""Looking inside CRATE-MAE: layer-wise coding rates and sparsity, attention / PCA / reconstruction pictures, and
one self-contained HTML report. See docs/analysis.md."""

from ..models.tracing import LayerRecorder, crate_blocks
from .coding_rate import CONVENTIONS, RateConvention, coding_rate, compression_rate, logdet_identity_plus_gram, sparsity
from .layerwise import METRICS, LayerwiseStats, measure_layers

__all__ = [
    "CONVENTIONS",
    "METRICS",
    "LayerRecorder",
    "LayerwiseStats",
    "RateConvention",
    "coding_rate",
    "compression_rate",
    "crate_blocks",
    "logdet_identity_plus_gram",
    "measure_layers",
    "sparsity",
]
