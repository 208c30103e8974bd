// What a build without the CUDA backend says about CUDA targets: a clear error instead of a CPU
// engine in disguise or a crash. (The CUDA backend's own tests are in tests/cuda/, built with it.)
#include <gtest/gtest.h>

#include <atomic>

#include "build_helpers.h"
#include "core/error.h"

namespace kiln::test {
namespace {

std::string build_error(const std::string& target) {
  const std::string dir = write_tiny_checkpoint("cuda_target", TinySpec{});
  BuildOptions o;
  o.model_dir = dir;
  o.out_path = dir + "/engine.kiln";
  o.precision = Precision::BF16;
  o.target = target;
  std::atomic<bool> cancel{false};
  try {
    build(o, {}, cancel);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(BuildTarget, UnknownTargetsAreRefusedByName) {
  EXPECT_NE(build_error("tpu").find("--target \"tpu\" is not supported (cpu, cuda)"), std::string::npos);
}

#if !KILN_CUDA
TEST(BuildTarget, CudaTargetNeedsABuildWithTheCudaBackend) {
  EXPECT_NE(build_error("cuda").find("-DKILN_CUDA=ON"), std::string::npos);
}
#endif

}  // namespace
}  // namespace kiln::test
