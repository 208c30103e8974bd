#pragma once

#include <map>
#include <string>
#include <vector>

#include "compiler/graph.h"
#include "engine/tensor_blob.h"

namespace kiln {

// Rewrites each listed weight into the layout its tuned tactics read (see core/layout.h).
PassReport apply_weight_layouts(std::vector<TensorBlob>& tensors, const std::map<std::string, WeightLayout>& layouts);

}  // namespace kiln
