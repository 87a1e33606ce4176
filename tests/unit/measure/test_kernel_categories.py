"""Kernel categories on real kernel names."""

from __future__ import annotations

import pytest

from optimizer.measure.kernel_categories import CATEGORIES, SOFTMAX, categorize

# Kernel names as the PyTorch profiler reports them (demangled by CUPTI) on H100/H200, inductor
# kernel names, and aten op names (what the CPU path reports).
NAMES = {
    "attention": [
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t, "
        "cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, "
        "cutlass::bfloat16_t, Flash_kernel_traits<128, 128, 64, 4, cutlass::bfloat16_t> >, false, true, "
        "false, false, true, true, false, false>(pytorch_flash::Flash_fwd_params)",
        "void pytorch_flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, false, false, "
        "cutlass::bfloat16_t, Flash_kernel_traits<128, 64, 128, 4, cutlass::bfloat16_t> >, false, true, "
        "false, false, true, true, false, false, false>(pytorch_flash::Flash_fwd_params)",
        "void pytorch_flash::flash_fwd_splitkv_combine_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, false, "
        "false, cutlass::bfloat16_t, Flash_kernel_traits<128, 64, 128, 4, cutlass::bfloat16_t> >, 4, 3, "
        "false>(pytorch_flash::Flash_fwd_params)",
        "void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<flash::"
        "CollectiveMainloopFwdSm90<2, cute::tuple<cute::C<1>, cute::C<1>, cute::C<1> >, cute::tuple<"
        "cute::C<128>, cute::C<128>, cute::C<128> >, 128, cutlass::bfloat16_t, float, cutlass::arch::Sm90",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0",
        "void flashinfer::BatchDecodeWithPagedKVCacheKernel<(flashinfer::PosEncodingMode)0, 2u, 4u, 8u, "
        "16u, 1u, 8u, (flashinfer::PageStorage)0, __nv_bfloat16, __nv_bfloat16, __nv_bfloat16, int>",
        "void vllm::paged_attention_v1_kernel<unsigned short, unsigned short, 128, 16, 128, "
        "(vllm::Fp8KVCacheDataType)0, false>(unsigned short*, unsigned short const*)",
        "aten::scaled_dot_product_attention",
        "aten::_scaled_dot_product_efficient_attention",
        "aten::_scaled_dot_product_flash_attention",
        "aten::_efficient_attention_forward",
    ],
    # a plain softmax: eager attention's or sampling's, its name does not say which
    SOFTMAX: [
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
        "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>(float*, float const*, int)",
        "void (anonymous namespace)::softmax_warp_forward<c10::BFloat16, c10::BFloat16, float, 5, false, "
        "false>(c10::BFloat16*, c10::BFloat16 const*, int, int, int, bool const*, int, bool)",
        "triton_red_fused__softmax_add_0",
        "triton_per_fused__softmax__to_copy_1",
        "aten::_softmax",
        "aten::softmax",
    ],
    "gemm": [
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k"
        "_off_kernel__5x_cublas",
        "sm90_xmma_gemm_e4m3bf16_e4m3f32_f32_tn_n_tilesize128x128x128_warpgroupsize1x1x1_execute_segment_k"
        "_off_kernel__5x_cublas",
        "nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT",
        "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNN",
        "ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x4_tn",
        "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>"
        "(cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8::Params)",
        "void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cute::tuple<int, int, int, int>, "
        "cutlass::gemm::collective::CollectiveMma<cutlass::gemm::MainloopSm90TmaGmmaWarpSpecialized<4>",
        "cutlass3x_sm90_tensorop_gemm_bf16_bf16_f32_bf16_bf16_128x128x64_1x1x1_0_tnn_align8_warpspecialized"
        "_cooperative_epi_tma",
        "void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, 128, 16, 4, 4, false, false, "
        "cublasGemvParamsEx<int, cublasGemvTensorStridedBatched<__nv_bfloat16 const>, "
        "cublasGemvTensorStridedBatched<__nv_bfloat16 const>, cublasGemvTensorStridedBatched<__nv_bfloat16>, "
        "float> >(cublasGemvParamsEx<int, float>, float, float)",
        "void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, false, "
        "false>(cublasSplitKParams<float>, float const*, __nv_bfloat16 const*, __nv_bfloat16*)",
        "void at::native::(anonymous namespace)::tinygemm_m16n8k16_chunk_kernel<(at::native::(anonymous "
        "namespace)::KReductionType)0, (at::native::(anonymous namespace)::BLayout)1, 8, 32, 4, 4>",
        "void Marlin<256, 1, 8, 8, 4, 8>(int4 const*, int4 const*, int4*, int4 const*, int, int, int, int*)",
        "triton_tem_fused_mm_0",
        "triton_tem_fused_addmm_mul_silu_3",  # a GEMM with a fused activation epilogue
        "triton_tem_fused__scaled_mm_1",
        "triton_mm",
        "triton_bmm",
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::linear",
        "aten::matmul",
        "aten::_scaled_mm",
        "aten::_weight_int4pack_mm",
    ],
    "logits+sampling": [
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<c10::BFloat16, at::native::ArgMaxOps<"
        "c10::BFloat16>, unsigned int, long, 4, 4> >(at::native::ReduceOp<c10::BFloat16, "
        "at::native::ArgMaxOps<c10::BFloat16>, unsigned int, long, 4, 4>)",
        "void at::native::sbtopk::gatherTopK<float, unsigned int, 2, false>(at::cuda::detail::TensorInfo<"
        "float const, unsigned int>, unsigned int, unsigned int, bool, unsigned int, unsigned int)",
        "void at::native::mbtopk::radixFindKthValues<float, unsigned int, unsigned int, 2>(at::cuda::detail"
        "::TensorInfo<float const, unsigned int>, unsigned int, unsigned int*, unsigned int)",
        "void at_cuda_detail::cub::DeviceRadixSortOnesweepKernel<at_cuda_detail::cub::DeviceRadixSortPolicy"
        "<float, long, int>::Policy900, true, float, long, int, int>(int*, int*, float const*, float*)",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
        "at::native::(anonymous namespace)::LogSoftMaxForwardEpilogue>(float*, float const*, int)",
        "void (anonymous namespace)::softmax_warp_forward<float, float, float, 10, true, false>(float*, "
        "float const*, int, int, int, bool const*, int, bool)",
        "void at::native::(anonymous namespace)::sampleMultinomialOnce<float, float>(long*, long, int, "
        "float const*, float const*, int, int)",
        "void flashinfer::sampling::TopKTopPSamplingFromProbKernel<1024u, (cub::BlockScanAlgorithm)0, "
        "(cub::BlockReduceAlgorithm)2, 4u, false, float, int>",
        "triton_red_fused_argmax_0",
        "triton_red_fused__log_softmax_1",
        "aten::argmax",
        "aten::topk",
        "aten::sort",
        "aten::multinomial",
        "aten::log_softmax",
        "aten::cumsum",
    ],
    "norm/rope/activation": [
        "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0",
        "triton_red_fused__to_copy_add_embedding_mean_mul_pow_rsqrt_0",  # embedding fused into RMSNorm
        "triton_poi_fused_add_cat_mul_neg_slice_unsqueeze_2",  # RoPE
        "triton_poi_fused__to_copy_add_cat_index_copy_mul_neg_slice_3",  # RoPE fused into the cache write
        "triton_poi_fused_mul_silu_1",
        "triton_poi_fused__to_copy_cos_sin_4",
        "triton_poi_fused_add_5",
        "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::silu_kernel(at::"
        "TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#4}::operator()() const::{lambda("
        "c10::BFloat16)#1}, std::array<char*, 2ul> >(int, at::native::(anonymous namespace)::silu_kernel)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
        "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)",
        "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
        "BinaryFunctor<float, float, float, at::native::binary_internal::MulFunctor<float> > >(at::"
        "TensorIteratorBase&, at::native::BinaryFunctor<float, float, float, at::native::binary_internal::"
        "MulFunctor<float> > const&)::{lambda(int)#1}>(int, at::native::gpu_kernel_impl_nocast)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::rsqrt_kernel_cuda(at::"
        "TensorIteratorBase&)::{lambda()#2}::operator()() const::{lambda()#2}::operator()() const::{lambda("
        "float)#1}, std::array<char*, 2ul> >(int, at::native::rsqrt_kernel_cuda)",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, "
        "float, float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float, at::native::MeanOps>)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::"
        "pow_tensor_scalar_kernel_impl<float, float>(at::TensorIteratorBase&, float)::{lambda(float)#1}, "
        "std::array<char*, 2ul> >(int, at::native::(anonymous namespace)::pow_tensor_scalar_kernel_impl)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::neg_kernel_cuda(at::TensorIteratorBase"
        "&)::{lambda()#2}::operator()() const::{lambda()#8}::operator()() const::{lambda(c10::BFloat16)#1}, "
        "std::array<char*, 2ul> >(int, at::native::neg_kernel_cuda)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::cos_kernel_cuda(at::TensorIteratorBase"
        "&)::{lambda()#2}::operator()() const::{lambda()#2}::operator()() const::{lambda(float)#1}, "
        "std::array<char*, 2ul> >(int, at::native::cos_kernel_cuda)",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, "
        "float, c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*)",
        "void vllm::rms_norm_kernel<c10::BFloat16, 8, 4>(c10::BFloat16*, c10::BFloat16 const*, long, "
        "c10::BFloat16 const*, float, int, int)",
        "void flashinfer::norm::RMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, "
        "__nv_bfloat16*, unsigned int, unsigned int, unsigned int, float, float)",
        "void vllm::act_and_mul_kernel<c10::BFloat16, &(c10::BFloat16 vllm::silu_kernel<c10::BFloat16>("
        "c10::BFloat16 const&)), true>(c10::BFloat16*, c10::BFloat16 const*, int)",
        "aten::rsqrt",
        "aten::mul",
        "aten::add_",
        "aten::silu",
        "aten::pow",
        "aten::mean",
        "aten::neg",
        "aten::cos",
        "aten::layer_norm",
        "aten::rms_norm",
    ],
    "copies": [
        "Memcpy HtoD (Pageable -> Device)",
        "Memcpy DtoD (Device -> Device)",
        "Memcpy DtoH (Device -> Pinned)",
        "Memset (Device)",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy_aligned16_contig<at::native::(anonymous "
        "namespace)::OpaqueType<2u>, unsigned int, 4, 64, 64>(at::native::(anonymous namespace)::OpaqueType"
        "<2u>*, at::native::(anonymous namespace)::CatArrInputTensorMetadata)",
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIterator"
        "Base&)::{lambda()#3}::operator()() const::{lambda()#12}::operator()() const::{lambda(float)#1}, "
        "std::array<char*, 2ul>, 4, TrivialOffsetCalculator<1, unsigned int>, TrivialOffsetCalculator<1, "
        "unsigned int>, at::native::memory::LoadWithCast<1>, at::native::memory::StoreWithCast<1> >(int)",
        "void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel<at::native::"
        "index_put_kernel_impl<at::native::OpaqueType<2> >(at::TensorIterator&, c10::ArrayRef<long>, "
        "c10::ArrayRef<long>)::{lambda(char*, char const*, long)#1}>(at::TensorIteratorBase&)::{lambda("
        "int)#1}>(long, at::native::gpu_index_kernel)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<c10::BFloat16>, "
        "std::array<char*, 1ul> >(int, at::native::FillFunctor<c10::BFloat16>, std::array<char*, 1ul>)",
        "void at::native::_scatter_gather_elementwise_kernel<128, 4, at::native::_cuda_scatter_gather_"
        "internal_kernel<true, c10::BFloat16>::operator()<at::native::ReduceAdd>(at::TensorIterator&)>",
        "void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, "
        "2, -2, true>(at::cuda::detail::TensorInfo<c10::BFloat16, unsigned int>)",
        # a KV-cache write, not attention, although its name says "flash"
        "void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16, __nv_bfloat16, (vllm::Fp8KVCacheDataType)"
        "0>(__nv_bfloat16 const*, __nv_bfloat16 const*, __nv_bfloat16*, __nv_bfloat16*, long const*)",
        "triton_poi_fused__to_copy_0",
        "triton_poi_fused_cat_1",
        "triton_poi_fused_index_put_2",
        "triton_poi_fused_clone_3",
        "triton_poi_fused_embedding_0",
        "aten::copy_",
        "aten::index_copy_",
        "aten::index_put_",
        "aten::cat",
        "aten::to",
        "aten::_to_copy",
        "aten::embedding",
        "aten::fill_",
        "aten::clone",
    ],
    "other": [
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
        "at::native::sum_functor<float, float, float>::operator()(at::TensorIterator&)::{lambda(float, float)"
        "#1}>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float, at::native::func_wrapper_t>)",
        "void at::native::elementwise_kernel_with_index<int, at::native::arange_cuda_out(c10::Scalar const&, "
        "c10::Scalar const&, c10::Scalar const&, at::Tensor&)::{lambda()#1}::operator()() const>(int)",
        "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
        "triton_poi_fused_0",
        "aten::view",
        "aten::empty",
        "aten::slice",
        "aten::t",
    ],
}


@pytest.mark.parametrize(
    ("category", "name"), [(category, name) for category, names in NAMES.items() for name in names]
)
def test_categorize_real_kernel_names(category: str, name: str) -> None:
    assert categorize(name) == category


def test_every_category_is_exercised() -> None:
    assert set(NAMES) == set(CATEGORIES)


def test_cutlass_attention_is_not_a_gemm() -> None:
    # both carry "cutlass"; a mem-efficient attention kernel may even name cutlass::gemm types
    assert (
        categorize(
            "fmha_cutlassF_f16_aligned_64x64_rf_sm80(AttentionKernel<cutlass::half_t, "
            "cutlass::gemm::GemmShape<64, 64, 32>, cutlass::arch::Sm80>::Params)"
        )
        == "attention"
    )
    assert categorize("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8") == "gemm"
