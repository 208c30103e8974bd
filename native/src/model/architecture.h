#pragma once

#include <functional>
#include <string>

#include "compiler/graph.h"
#include "model/safetensors.h"

namespace kiln {

// Maps a checkpoint of a supported architecture onto Kiln's decoder graph: checks that every tensor
// the architecture needs is present with the shape the config implies (errors name the tensor),
// renames HF tensors to Kiln's names and decodes them to fp32. Tensors the architecture does not
// read are carried along under their HF names for the drop_unused pass to remove.
// `on_tensor(done, total)` is called after each tensor and may throw to cancel; with a pool, each
// tensor is decoded in chunks on its threads.
Graph load_graph(const ModelConfig& config, const Checkpoint& checkpoint,
                 const std::function<void(size_t, size_t)>& on_tensor = {}, ThreadPool* pool = nullptr);

}  // namespace kiln
