#include "backend/tactic_override.h"

#include <cctype>
#include <charconv>

#include "core/error.h"

namespace kiln {

namespace {

std::string trimmed(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t at = s.find(sep); at != std::string::npos; at = s.find(sep, start)) {
    parts.push_back(s.substr(start, at - start));
    start = at + 1;
  }
  parts.push_back(s.substr(start));
  return parts;
}

// A positive integer, the whole of `s`, or an Error naming `what` in `entry`.
int64_t positive(const std::string& s, const char* what, const std::string& entry) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 1) {
    throw Error("KILN_CUDA_TACTIC entry \"" + entry + "\": " + what + " \"" + s + "\" is not a positive integer");
  }
  return v;
}

TacticOverride parse_entry(const std::string& entry) {
  const auto fail = [&](const std::string& why) {
    return Error("KILN_CUDA_TACTIC entry \"" + entry + "\": " + why +
                 " (expected <n>x<k>:<dtype>@<bucket>=cublaslt or =kiln-gemv/<split>[/unstaged])");
  };
  const size_t eq = entry.find('=');
  if (eq == std::string::npos) throw fail("no '=' before the tactic");
  const std::string gemm = trimmed(entry.substr(0, eq)), tactic = trimmed(entry.substr(eq + 1));
  const size_t x = gemm.find('x'), colon = gemm.find(':'), at = gemm.find('@');
  if (x == std::string::npos || colon == std::string::npos || at == std::string::npos || !(x < colon && colon < at)) {
    throw fail("the GEMM is not <n>x<k>:<dtype>@<bucket>");
  }
  TacticOverride o;
  o.n = positive(gemm.substr(0, x), "n", entry);
  o.k = positive(gemm.substr(x + 1, colon - x - 1), "k", entry);
  o.dtype = gemm.substr(colon + 1, at - colon - 1);
  if (o.dtype != "bf16" && o.dtype != "f8e4m3") throw fail("dtype \"" + o.dtype + "\" is neither bf16 nor f8e4m3");
  o.bucket = positive(gemm.substr(at + 1), "bucket", entry);
  const std::vector<std::string> t = split(tactic, '/');
  if (t[0] == "cublaslt" && t.size() == 1) return o;
  if (t[0] != "kiln-gemv") throw fail("tactic \"" + tactic + "\" is neither cublaslt nor kiln-gemv/<split>");
  if (t.size() < 2 || t.size() > 3) throw fail("kiln-gemv takes a split and optionally /unstaged");
  o.gemv = true;
  o.split = static_cast<int>(positive(t[1], "split", entry));
  if (t.size() == 3) {
    if (t[2] != "unstaged") throw fail("\"" + t[2] + "\" after the split is not unstaged");
    o.stage_input = false;
  }
  return o;
}

}  // namespace

std::vector<TacticOverride> parse_tactic_overrides(const std::string& text) {
  std::vector<TacticOverride> out;
  for (const std::string& part : split(text, ';')) {
    const std::string entry = trimmed(part);
    if (!entry.empty()) out.push_back(parse_entry(entry));
  }
  return out;
}

}  // namespace kiln
