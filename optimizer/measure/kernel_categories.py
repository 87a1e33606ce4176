"""Kernel categories: which part of a decode step a GPU kernel (or, on the CPU, an aten op) does.

`categorize` sorts a kernel name into a handful of categories, so that a kernel-time table
(kernels.py) answers "is this step GEMM-bound, attention-bound or launch-bound?". The names are
those the PyTorch profiler reports: CUPTI-demangled CUDA kernels, inductor's triton kernels, and
aten op names.
"""

from __future__ import annotations

import re

# A plain softmax kernel (not fused into an attention kernel) is eager attention's (matmul, softmax,
# matmul) or sampling's over the vocabulary: its name does not say which (its row length would,
# and the profiler's kernel rows carry none), so its category says it may be either.
SOFTMAX = "softmax (attention or sampling)"
CATEGORIES = ("attention", SOFTMAX, "gemm", "logits+sampling", "norm/rope/activation", "copies", "other")

# Inductor names kernels `triton_{poi,red,per,tem}_fused_<aten op names joined by _>_<n>`; these
# match one op name as a whole `_`-separated token, so that `add` does not match `addmm`.
_TRITON = r"^triton_(?:\w*?_)?"
_TOKEN_START = r"(?<![A-Za-z0-9])"
_TOKEN_END = r"(?![A-Za-z])"


def _triton_ops(*ops: str) -> str:
    return _TRITON + _TOKEN_START + "(?:" + "|".join(ops) + ")" + _TOKEN_END


def _aten_ops(*ops: str) -> str:
    """Whole aten op names, in place or not (`aten::add` and `aten::add_`)."""
    return r"^aten::(?:" + "|".join(ops) + r")_?$"


def _rule(category: str, *patterns: str) -> tuple[str, re.Pattern[str]]:
    return category, re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# First match wins, so the order encodes the tricky cases:
# - KV-cache writes (`reshape_and_cache_flash`, `index_put_with_sort`) before attention and
#   sampling, whose patterns ("flash", "sort") they would otherwise match;
# - log_softmax (logits) before any other softmax;
# - fused attention before a plain softmax: an attention kernel's name may also say softmax;
# - attention before gemm: CUTLASS and FlashAttention-3 attention kernels carry `cutlass::` in
#   their names, and some carry `cutlass::gemm::GemmShape` template arguments;
# - gemm before norm/rope/activation: `triton_tem_fused_addmm_mul_silu_0` is a GEMM whose epilogue
#   fuses an activation;
# - norm/rope/activation before copies: `triton_poi_fused__to_copy_add_cat_mul_neg_...` is RoPE,
#   it only happens to cast and concatenate as well.
KERNEL_CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    _rule(
        "copies",
        r"^Memcpy|^Memset",
        r"reshape_and_cache",
        # eager KV-cache writes; an inductor kernel that also does math is left to the later rules
        r"^(?!triton_).*(?:index_put|index_copy)",
        _aten_ops("index_put", "_index_put_impl", "index_copy"),
    ),
    _rule(
        "logits+sampling",
        r"log_?softmax",
        # persistent softmax: its 5th template argument is `is_log_softmax`
        r"softmax_warp_forward<(?:[^<>,]*,){4}\s*true",
        r"argmax|argmin",
        r"topk",
        r"RadixSort|SortKV|MergeSort|SegmentedSort|segmented_sort|sort_postprocess",
        r"multinomial",
        r"tensor_kernel_scan|DeviceScan",
        # torch.multinomial draws exponential noise; nothing else in a decode step draws numbers
        r"exponential_kernel|distribution_elementwise",
        _aten_ops("sort", "argsort", "cumsum", "exponential", "gumbel_softmax"),
        _triton_ops("sort", "cumsum", "exponential"),
    ),
    _rule(
        "attention",
        # `flashinfer::` also names FlashInfer's norm and activation kernels
        r"flash(?!infer)|fmha|attention|sdpa|PagedKVCache|WithKVCache|mha_fwd",
    ),
    _rule(SOFTMAX, r"softmax"),
    _rule(
        "gemm",
        r"gemm|gemv|nvjet|cublas|splitKreduce|marlin|_scaled_mm|int4pack_mm|int8pack_mm|dot_kernel",
        _aten_ops(
            "mm",
            "addmm",
            "bmm",
            "baddbmm",
            "matmul",
            "linear",
            "addmv",
            "mv",
            "dot",
            "_int_mm",
            "_addmm_activation",
        ),
        _triton_ops("mm", "addmm", "bmm", "baddbmm", "int_mm", "scaled_mm"),
    ),
    _rule(
        "norm/rope/activation",
        r"layer_?norm|rms_?norm|RowwiseMoments|MeanOps|WelfordOps",
        r"rsqrt|pow_tensor|silu|sigmoid|gelu|tanh|relu|swiglu|act_and_mul|rotary",
        r"(?<![a-z])rope(?![a-z])",
        r"(?<![a-z])(?:sin|cos|neg|exp|erf|sqrt|reciprocal|sub|mul|add|div\w*?)_kernel",
        r"MulFunctor|DivFunctor|AddFunctor|CUDAFunctor\w*?_add",
        _aten_ops(
            "rsqrt",
            "sqrt",
            "pow",
            "mean",
            "var",
            "var_mean",
            "silu",
            "sigmoid",
            "gelu",
            "tanh",
            "relu",
            "neg",
            "sin",
            "cos",
            "exp",
            "erf",
            "reciprocal",
            "add",
            "sub",
            "rsub",
            "mul",
            "div",
            "addcmul",
            "layer_norm",
            "native_layer_norm",
            "rms_norm",
            "_fused_rms_norm",
            "group_norm",
        ),
        _triton_ops(
            "rsqrt",
            "sqrt",
            "mean",
            "var",
            "pow",
            "rms",
            "norm",
            "sin",
            "cos",
            "silu",
            "sigmoid",
            "gelu",
            "erf",
            "tanh",
            "relu",
            "neg",
            "exp",
            "reciprocal",
            "add",
            "sub",
            "rsub",
            "mul",
            "div",
        ),
    ),
    _rule(
        "copies",
        r"memcpy|memset",
        r"CatArrayBatchedCopy|copy_kernel|direct_copy",
        r"index_kernel|indexSelect|index_select|scatter|gather|embedding",
        r"FillFunctor|fill_kernel",
        _aten_ops(
            "to",
            "_to_copy",
            "copy",
            "contiguous",
            "clone",
            "cat",
            "stack",
            "fill",
            "zero",
            "zeros",
            "zeros_like",
            "full",
            "ones",
            "index",
            "index_select",
            "embedding",
            "scatter",
            "gather",
            "slice_scatter",
            "select_scatter",
            "masked_fill",
        ),
        _triton_ops("copy", "clone", "cat", "stack", "index", "slice", "select", "fill", "zeros", "full"),
    ),
)


def categorize(name: str) -> str:
    """The category of a GPU kernel name, or of an aten op name on the CPU; "other" if none fits."""
    for category, pattern in KERNEL_CATEGORIES:
        if pattern.search(name):
            return category
    return "other"
