"""Layers with PyTorch's training API: Module, Parameter, Linear, Embedding, norms, attention, MLP, Block."""
from .attention import CausalSelfAttention, KVCache, packed_rows, repeat_kv
from .block import MLP, Block, swiglu_hidden
from .layers import Dropout, Embedding, LayerNorm, Linear, RMSNorm
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential
from .positional import RoPE, sinusoidal_table

__all__ = ["Module", "Parameter", "ModuleList", "ModuleDict", "Sequential", "Linear", "Embedding", "LayerNorm",
           "RMSNorm", "Dropout", "CausalSelfAttention", "KVCache", "packed_rows", "repeat_kv", "MLP", "Block",
           "swiglu_hidden", "RoPE", "sinusoidal_table"]
