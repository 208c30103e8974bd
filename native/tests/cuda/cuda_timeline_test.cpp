// The launch timeline (backend/cuda/timeline.h): in a timeline build, every Kiln launch's PDL
// arrival and releases in launch order, and a decode step's launches laid onto its kernel
// families; in any other build, a refusal that names the build option, and no timeline columns.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backend/cuda/generate.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/model.h"
#include "backend/cuda/timeline.h"
#include "cuda_engine_builds.h"
#include "device_helpers.h"
#include "engine/engine.h"

namespace kiln::test {
namespace {

TEST(CudaTimeline, MarksEveryKilnLaunchInLaunchOrderOrNamesItsBuildOption) {
  SKIP_WITHOUT_GPU();
  const int64_t rows = 2, hidden = 256;
  const cuda::DeviceBuffer h = to_device(std::vector<float>(static_cast<size_t>(rows * hidden), 0.5f));
  const cuda::DeviceBuffer gamma = to_device(std::vector<float>(static_cast<size_t>(hidden), 1.0f));
  cuda::DeviceBuffer y(static_cast<size_t>(rows * hidden) * sizeof(cuda::bf16), "normed rows");
  cudaStream_t stream = nullptr;
  KILN_CUDA_CHECK(cudaStreamCreate(&stream));
  const auto norms = [&](int count) {
    return [&, count] {
      for (int i = 0; i < count; ++i) {
        cuda::rms_norm_to_bf16(h.get<float>(), nullptr, rows, hidden, gamma.get<float>(), 1e-5f, y.get<cuda::bf16>(),
                               stream);
      }
    };
  };
  if (!cuda::timeline_compiled()) {
    expect_refused([&] { cuda::record_timeline(stream, norms(3)); }, "KILN_CUDA_TIMELINE");
  } else {
    const auto launches = cuda::record_timeline(stream, norms(3));
    ASSERT_EQ(launches.size(), 3u);
    EXPECT_EQ(launches[0].arrive_first_us, 0.0);  // the origin
    for (size_t i = 0; i < launches.size(); ++i) {
      EXPECT_LE(launches[i].arrive_first_us, launches[i].release_first_us) << "launch " << i;
      EXPECT_LE(launches[i].release_first_us, launches[i].release_last_us) << "launch " << i;
      if (i > 0) {
        EXPECT_GT(launches[i].grid, launches[i - 1].grid);
        // A launch is let past its wait only after the one before it completed.
        EXPECT_GE(launches[i].release_first_us, launches[i - 1].release_first_us);
      }
    }
    // Each recording has a table of its own: launches made before it are not in it.
    EXPECT_EQ(cuda::record_timeline(stream, norms(1)).size(), 1u);
  }
  KILN_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(CudaTimeline, LaysADecodeStepsLaunchesOntoItsKernelFamilies) {
  SKIP_WITHOUT_GPU();
  const TinySpec spec = cuda_tiny_spec();
  cuda::CudaModel model(Engine::load(build_cuda_engine(write_tiny_checkpoint("cuda_timeline", spec), false)));
  const cuda::BenchResult r = cuda::bench(model, 8, 4, 1, DType::BF16, true);
  ASSERT_FALSE(r.kernel_costs.empty());
  if (!cuda::timeline_compiled()) {
    EXPECT_TRUE(r.timeline_note.empty());
    for (const auto& c : r.kernel_costs) EXPECT_FALSE(c.critical_us) << c.kernel;
    return;
  }
  ASSERT_EQ(r.timeline_note.find("not laid on"), std::string::npos) << r.timeline_note;
  EXPECT_NE(r.timeline_note.find("laid on"), std::string::npos) << r.timeline_note;
  double critical = 0.0;
  for (const auto& c : r.kernel_costs) {
    if (c.kernel == "library kernel") {
      EXPECT_FALSE(c.critical_us || c.waited_us || c.release_spread_us);
      continue;
    }
    ASSERT_TRUE(c.waited_us && c.release_spread_us) << c.kernel << ": " << r.timeline_note;
    EXPECT_GE(*c.waited_us, 0.0) << c.kernel;
    EXPECT_GE(*c.release_spread_us, 0.0) << c.kernel;
    // Unset where each of its launches is followed by a library kernel (this engine's GEMMs are
    // cuBLASLt's: it is not autotuned).
    if (c.critical_us) {
      EXPECT_GE(*c.critical_us, 0.0) << c.kernel;
      critical += *c.critical_us;
    }
  }
  // The laid-on spans are parts of one replay of the step, which the back-to-back replays time.
  EXPECT_GT(critical, 0.0) << r.timeline_note;
  EXPECT_LT(critical, 2e3 * r.kernel_costs_step_ms) << r.timeline_note;
}

}  // namespace
}  // namespace kiln::test
