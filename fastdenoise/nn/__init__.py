"""Drop-in modules: each computes what the official module computes, takes the same weights
(same state-dict keys and shapes), and can be built from it with ``from_module(m)``."""

from .attention import CAB, MPRNetCALayer, RIDNetCALayer
from .gdfn import GDFN
from .haar import DWT, IWT, HaarDownsampling
from .nafnet import BaselineBlock, LayerNorm2d, NAFBlock, SimpleGate
from .restormer import MDTA, RestormerLayerNorm, TransformerBlock, set_fuse_input

__all__ = ["HaarDownsampling", "DWT", "IWT", "LayerNorm2d", "SimpleGate", "NAFBlock", "BaselineBlock",
           "MPRNetCALayer", "CAB", "RIDNetCALayer", "GDFN",
           "MDTA", "RestormerLayerNorm", "TransformerBlock", "set_fuse_input"]
