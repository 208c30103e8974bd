#pragma once

#include <nlohmann/json.hpp>

namespace kiln {

// Ordered so that the engine header keeps the field order a person reading `inspect` expects.
using Json = nlohmann::ordered_json;

}  // namespace kiln
