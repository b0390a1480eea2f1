"""fastdenoise: fast image-denoising inference for PyTorch.

Fused CUDA / Triton / C++ kernels for the operations that dominate the reference denoisers,
drop-in fused modules (:mod:`fastdenoise.nn`) and :func:`patch` to swap them into an existing
model, faithful reference architectures that load the
official checkpoints (:mod:`fastdenoise.models`), and benchmarks against eager PyTorch and
``torch.compile``.
"""

from . import _ext
from ._ext import build_info
from . import errors, ops, nn, models
# the documented namespaces are attributes after `import fastdenoise` (cheap: torch and numpy)
from . import classic, io, metrics
from .patch import PatchReport, patch, unpatch
from .stream import StreamDenoiser
from .tiling import TiledModel, tiled

__version__ = "0.1.0"

__all__ = ["build_info", "errors", "ops", "nn", "models", "classic", "io", "metrics", "patch", "unpatch",
           "PatchReport", "tiled", "TiledModel", "StreamDenoiser", "__version__"]
