// float32 2-D convolutions through oneDNN as XLA FFI handlers (CPU): NHWC activations, HWIO
// kernels. One handler, three kinds: forward (x, w -> y), input gradient (dy, w -> dx) and kernel
// gradient (x, dy -> dw). Asynchronous: the convolution runs as a task on XLA's intra-op thread
// pool with one OpenMP thread, so XLA runs independent convolutions (the step's two batch
// chunks) side by side, one per core. Built and driven by benchmarks/onednn_conv.py.
#include <omp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
constexpr auto f32 = dnnl::memory::data_type::f32;

namespace {

enum Kind : int64_t { kForward = 0, kInputGrad = 1, kKernelGrad = 2 };

// A primitive for one problem, and the reorder between the kernel's HWIO layout and the
// (blocked) layout the primitive chose.
struct Plan {
  dnnl::primitive conv;
  dnnl::memory::desc kernel_md;
  dnnl::memory::desc hwio_md;
  bool reorder = false;
  dnnl::reorder kernel_reorder;
  std::vector<float> kernel_buffer;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Per thread: no locks, and each thread owns its plans' kernel buffers.
Plan& GetPlan(int64_t kind, const dims& src, const dims& wei, const dims& dst,
              const dims& strides, const dims& pad_l, const dims& pad_r) {
  thread_local std::map<std::vector<int64_t>, std::unique_ptr<Plan>> plans;
  std::vector<int64_t> key = {kind};
  for (const dims* d : {&src, &wei, &dst, &strides, &pad_l, &pad_r})
    key.insert(key.end(), d->begin(), d->end());
  std::unique_ptr<Plan>& slot = plans[key];
  if (slot) return *slot;
  auto plan = std::make_unique<Plan>();
  dnnl::engine& eng = Engine();
  dnnl::memory::desc src_md(src, f32, tag::nhwc), dst_md(dst, f32, tag::nhwc);
  dnnl::memory::desc any_md(wei, f32, tag::any);
  plan->hwio_md = dnnl::memory::desc(wei, f32, tag::hwio);
  auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(eng, dnnl::prop_kind::forward_training, algo,
                                                src_md, any_md, dst_md, strides, pad_l, pad_r);
  if (kind == kForward) {
    plan->conv = dnnl::convolution_forward(fwd);
    plan->kernel_md = fwd.weights_desc();
  } else if (kind == kInputGrad) {
    dnnl::convolution_backward_data::primitive_desc pd(eng, algo, src_md, any_md, dst_md, strides,
                                                       pad_l, pad_r, fwd);
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->kernel_md = pd.weights_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(eng, algo, src_md, any_md, dst_md,
                                                          strides, pad_l, pad_r, fwd);
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->kernel_md = pd.diff_weights_desc();
  }
  plan->reorder = plan->kernel_md != plan->hwio_md;
  if (plan->reorder) {
    plan->kernel_buffer.resize(plan->kernel_md.get_size() / sizeof(float));
    const auto& [from, to] = kind == kKernelGrad ? std::pair(plan->kernel_md, plan->hwio_md)
                                                 : std::pair(plan->hwio_md, plan->kernel_md);
    plan->kernel_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(eng, from, eng, to));
  }
  slot = std::move(plan);
  return *slot;
}

dims FromNhwc(ffi::Span<const int64_t> d) { return {d[0], d[3], d[1], d[2]}; }  // -> NCHW
dims FromHwio(ffi::Span<const int64_t> d) { return {d[3], d[2], d[0], d[1]}; }  // -> OIHW

ffi::Error Conv(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out,
                int64_t kind, dims strides, dims pad_l, dims pad_r) {
  // forward: a = x, b = w, out = y; input gradient: a = dy, b = w, out = dx;
  // kernel gradient: a = x, b = dy, out = dw.
  ffi::Span<const int64_t> x_dims = kind == kInputGrad ? out->dimensions() : a.dimensions();
  ffi::Span<const int64_t> w_dims = kind == kKernelGrad ? out->dimensions() : b.dimensions();
  ffi::Span<const int64_t> y_dims = kind == kForward ? out->dimensions()
                                    : kind == kInputGrad ? a.dimensions() : b.dimensions();
  float* x = kind == kInputGrad ? out->typed_data() : a.typed_data();
  float* w = kind == kKernelGrad ? out->typed_data() : b.typed_data();
  float* y = kind == kForward ? out->typed_data()
             : kind == kInputGrad ? a.typed_data() : b.typed_data();
  try {
    dims src = FromNhwc(x_dims), wei = FromHwio(w_dims), dst = FromNhwc(y_dims);
    Plan& plan = GetPlan(kind, src, wei, dst, strides, pad_l, pad_r);
    dnnl::engine& eng = Engine();
    dnnl::stream stream(eng);
    dnnl::memory x_m({src, f32, tag::nhwc}, eng, x), y_m({dst, f32, tag::nhwc}, eng, y);
    dnnl::memory hwio_m(plan.hwio_md, eng, w);
    dnnl::memory w_m = plan.reorder ? dnnl::memory(plan.kernel_md, eng, plan.kernel_buffer.data())
                                    : hwio_m;
    if (kind != kKernelGrad && plan.reorder) plan.kernel_reorder.execute(stream, hwio_m, w_m);
    if (kind == kForward) {
      plan.conv.execute(stream, {{DNNL_ARG_SRC, x_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DST, y_m}});
    } else if (kind == kInputGrad) {
      plan.conv.execute(stream, {{DNNL_ARG_DIFF_DST, y_m}, {DNNL_ARG_WEIGHTS, w_m},
                                 {DNNL_ARG_DIFF_SRC, x_m}});
    } else {
      plan.conv.execute(stream, {{DNNL_ARG_SRC, x_m}, {DNNL_ARG_DIFF_DST, y_m},
                                 {DNNL_ARG_DIFF_WEIGHTS, w_m}});
      if (plan.reorder) plan.kernel_reorder.execute(stream, w_m, hwio_m);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Future ConvAsync(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                      ffi::ResultBuffer<ffi::F32> out, int64_t kind, int64_t stride_h,
                      int64_t stride_w, int64_t pad_t, int64_t pad_b, int64_t pad_l,
                      int64_t pad_r) {
  ffi::Promise promise;
  ffi::Future future(promise);
  pool.Schedule([=]() mutable {
    omp_set_num_threads(1);  // this pool thread's OpenMP team: itself
    ffi::Error error = Conv(a, b, out, kind, {stride_h, stride_w}, {pad_t, pad_l}, {pad_b, pad_r});
    if (error.success()) promise.SetAvailable(); else promise.SetError(std::move(error));
  });
  return future;
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv, ConvAsync,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_t")
                                  .Attr<int64_t>("pad_b")
                                  .Attr<int64_t>("pad_l")
                                  .Attr<int64_t>("pad_r"));
