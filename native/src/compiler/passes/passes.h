#pragma once

#include "compiler/graph.h"

namespace kiln {

// Removes weights no node reads (HF buffers, the untied copy of a tied lm_head, ...).
PassReport drop_unused(Graph& graph);

// Concatenates the q, k and v projections of every layer into one `layers.N.qkv` linear so the
// attention block runs one GEMM instead of three.
PassReport fuse_qkv(Graph& graph);

// Concatenates gate and up projections into one `layers.N.gate_up` linear (gate rows first).
PassReport fuse_gate_up(Graph& graph);

// Multiplies each RMSNorm's gamma into the columns of the linears that read the norm's output, and
// drops the gamma: W·(g⊙n) = (W·diag(g))·n. Exact only when every reader of the norm is such a linear
// and no reader's weight is shared with another op (a tied lm_head shares the embedding table).
// When activations are quantized (fp8) the quantized tensor would change from g⊙n to n, which changes
// its range and so its calibrated scale; the pass then leaves the graph alone and says so.
PassReport fold_rmsnorm_gamma(Graph& graph, bool activations_quantized);

}  // namespace kiln
