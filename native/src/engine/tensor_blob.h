#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/layout.h"

namespace kiln {

// A tensor ready to be written into an engine section: final dtype, final layout, owned bytes.
struct TensorBlob {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  WeightLayout layout = WeightLayout::Row;
  std::vector<uint8_t> bytes;
};

}  // namespace kiln
