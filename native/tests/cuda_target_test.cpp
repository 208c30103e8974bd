// What a build without the CUDA backend says about CUDA targets: a clear error instead of a CPU
// engine in disguise or a crash. (The CUDA backend's own tests are in tests/cuda/, built with it.)
#include <gtest/gtest.h>

#include <atomic>

#include "build_helpers.h"
#include "core/error.h"

namespace kiln::test {
namespace {

std::string build_error(const std::string& target) {
  BuildOptions o = tiny_build_options("cuda_target");
  o.target = target;
  return kiln::test::build_error(o);
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
