#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

// How a [n, k] GEMM weight lies in memory. Row is the HF layout. PanelR groups R consecutive output
// rows and interleaves them in chunks of 8 along k (panel p, chunk c, row r -> 8 contiguous values),
// so a kernel computing R outputs reads one sequential stream.
enum class WeightLayout { Row, Panel4, Panel8 };

const char* layout_name(WeightLayout layout);
WeightLayout layout_from_name(const std::string& name);  // throws kiln::Error
int layout_panel_rows(WeightLayout layout);               // 1 for Row
bool layout_supports(WeightLayout layout, int64_t n, int64_t k);

// Reorders a row-major [n, k] weight of `elem_size`-byte elements into `layout`, and back.
std::vector<uint8_t> pack_weight(WeightLayout layout, const std::vector<uint8_t>& row_major, int64_t n, int64_t k,
                                 size_t elem_size);
std::vector<uint8_t> unpack_weight(WeightLayout layout, const std::vector<uint8_t>& packed, int64_t n, int64_t k,
                                   size_t elem_size);

}  // namespace kiln
