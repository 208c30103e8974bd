#include "core/layout.h"

#include <cstring>

#include "core/error.h"

namespace kiln {

const char* layout_name(WeightLayout layout) {
  switch (layout) {
    case WeightLayout::Row: return "row";
    case WeightLayout::Panel4: return "panel4";
    case WeightLayout::Panel8: return "panel8";
  }
  return "?";
}

WeightLayout layout_from_name(const std::string& name) {
  for (WeightLayout l : {WeightLayout::Row, WeightLayout::Panel4, WeightLayout::Panel8}) {
    if (name == layout_name(l)) return l;
  }
  throw Error("unknown weight layout \"" + name + "\"");
}

int layout_panel_rows(WeightLayout layout) {
  switch (layout) {
    case WeightLayout::Row: return 1;
    case WeightLayout::Panel4: return 4;
    case WeightLayout::Panel8: return 8;
  }
  return 1;
}

bool layout_supports(WeightLayout layout, int64_t n, int64_t k) {
  if (layout == WeightLayout::Row) return true;
  return n % layout_panel_rows(layout) == 0 && k % 8 == 0;
}

namespace {

// Byte offset of element (row, col) in a panel layout with R rows per panel.
size_t panel_offset(int64_t row, int64_t col, int64_t k, int r_per_panel, size_t elem) {
  const int64_t panel = row / r_per_panel;
  const int64_t r = row % r_per_panel;
  const int64_t chunk = col / 8;
  const int64_t lane = col % 8;
  return static_cast<size_t>(((panel * (k / 8) + chunk) * r_per_panel + r) * 8 + lane) * elem;
}

std::vector<uint8_t> reorder(WeightLayout layout, const std::vector<uint8_t>& src, int64_t n, int64_t k, size_t elem,
                             bool to_packed) {
  if (src.size() != static_cast<size_t>(n * k) * elem) throw Error("weight byte size does not match its shape");
  if (layout == WeightLayout::Row) return src;
  if (!layout_supports(layout, n, k)) {
    throw Error(std::string("layout ") + layout_name(layout) + " needs rows divisible by " +
                std::to_string(layout_panel_rows(layout)) + " and columns by 8, got [" + std::to_string(n) + ", " +
                std::to_string(k) + "]");
  }
  const int rows = layout_panel_rows(layout);
  std::vector<uint8_t> dst(src.size());
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t col = 0; col < k; col += 8) {
      const size_t packed = panel_offset(row, col, k, rows, elem);
      const size_t plain = static_cast<size_t>(row * k + col) * elem;
      if (to_packed) {
        std::memcpy(dst.data() + packed, src.data() + plain, 8 * elem);
      } else {
        std::memcpy(dst.data() + plain, src.data() + packed, 8 * elem);
      }
    }
  }
  return dst;
}

}  // namespace

std::vector<uint8_t> pack_weight(WeightLayout layout, const std::vector<uint8_t>& row_major, int64_t n, int64_t k,
                                 size_t elem_size) {
  return reorder(layout, row_major, n, k, elem_size, true);
}

std::vector<uint8_t> unpack_weight(WeightLayout layout, const std::vector<uint8_t>& packed, int64_t n, int64_t k,
                                   size_t elem_size) {
  return reorder(layout, packed, n, k, elem_size, false);
}

}  // namespace kiln
