"""The differentiable op library: each op is a Function with forward and backward side by side.

elementwise.py  + - * / ** neg exp log sqrt abs tanh sigmoid relu maximum minimum clip where
reduce.py       sum mean max/min var
movement.py     reshape transpose expand getitem concatenate cast
matmul.py       matmul (1-D, 2-D, batched with broadcasting)
nn.py           softmax log_softmax cross_entropy layer_norm rms_norm gelu silu embedding linear
"""
