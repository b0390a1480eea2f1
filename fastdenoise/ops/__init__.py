"""Functional API: one module per kernel family. Each holds its plain PyTorch reference (the
spec) and the dispatch to the CUDA / Triton / C++ CPU kernels."""

from .attention import (channel_attention, channel_attention_reference, simplified_channel_attention,
                        simplified_channel_attention_reference)
from .block_match import BlockMatches, block_match, block_match_reference
from .bm3d import bm3d_filter, bm3d_filter_reference
from .dwconv_gate import dwconv_gate, dwconv_gate_reference
from .gate import gate_reference, gelu_gate, simple_gate
from .haar import haar_dwt2d, haar_idwt2d, haar_dwt2d_reference, haar_idwt2d_reference
from .mdta import transposed_attention, transposed_attention_reference
from .nlm import nlm_filter, nlm_reference
from .norm import layer_norm2d, layer_norm2d_reference
from .overlap_add import overlap_add, overlap_add_reference, overlap_normalize
from .pwdw import pointwise_dwconv, pointwise_dwconv_reference

__all__ = ["haar_dwt2d", "haar_idwt2d", "haar_dwt2d_reference", "haar_idwt2d_reference",
           "block_match", "block_match_reference", "BlockMatches", "nlm_filter", "nlm_reference",
           "bm3d_filter", "bm3d_filter_reference", "layer_norm2d", "layer_norm2d_reference",
           "simple_gate", "gelu_gate", "gate_reference", "channel_attention", "channel_attention_reference",
           "simplified_channel_attention", "simplified_channel_attention_reference", "dwconv_gate",
           "dwconv_gate_reference", "transposed_attention", "transposed_attention_reference",
           "overlap_add", "overlap_add_reference", "overlap_normalize", "pointwise_dwconv",
           "pointwise_dwconv_reference"]
