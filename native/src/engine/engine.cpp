#include "engine/engine.h"

#include "backend/cpu/target.h"
#include "core/error.h"
#include "engine/reader.h"
#if KILN_CUDA
#include "backend/cuda/device.h"
#endif

namespace kiln {

namespace {

ModelConfig header_model(const Json& header, const std::string& source) {
  if (!header.contains("model")) throw Error(source + ": header has no \"model\" object");
  try {
    return model_config_from_json(header["model"]);
  } catch (const Error& e) {
    throw Error(source + ": " + e.what());
  }
}

}  // namespace

std::shared_ptr<const Engine> Engine::load(const std::string& path, ThreadPool* pool, SectionCheck check) {
  EngineFile file = read_engine_file(path, pool, check);
  const Json& target = file.header.contains("target") ? file.header["target"] : Json();
  if (target.is_object() && target.value("backend", "") == "cuda") {
#if KILN_CUDA
    check_engine_target(file.header, path, cuda::target_fingerprint());
#else
    throw Error(path + ": engine was built for the CUDA target \"" + target.value("fingerprint", "?") +
                "\" and this build of kiln has no CUDA backend (configure native/ with -DKILN_CUDA=ON)");
#endif
  } else {
    require_cpu_features();
    check_engine_target(file.header, path, cpu_target_fingerprint());
  }
  std::shared_ptr<Engine> e(new Engine());
  e->source_ = path;
  e->config_ = header_model(file.header, path);
  for (const auto& s : file.sections) {
    e->index(s.name, s.dtype, s.shape, s.layout, file.file->data() + s.offset, s.bytes);
  }
  e->header_ = std::move(file.header);
  e->storage_ = file.file;
  return e;
}

std::shared_ptr<const Engine> Engine::from_tensors(Json header, std::vector<TensorBlob> tensors) {
  auto owned = std::make_shared<std::vector<TensorBlob>>(std::move(tensors));
  std::vector<TensorView> views;
  for (const auto& t : *owned) views.push_back(TensorView{t.name, t.dtype, t.shape, t.layout, t.bytes.data(), t.bytes.size()});
  auto e = std::const_pointer_cast<Engine>(borrowing(std::move(header), views));
  e->storage_ = std::move(owned);
  return e;
}

std::shared_ptr<const Engine> Engine::borrowing(Json header, const std::vector<TensorView>& tensors) {
  std::shared_ptr<Engine> e(new Engine());
  e->source_ = "<in-memory engine>";
  e->config_ = header_model(header, e->source_);
  for (const auto& t : tensors) e->index(t.name, t.dtype, t.shape, t.layout, t.data, t.bytes);
  e->header_ = std::move(header);
  return e;
}

void Engine::index(const std::string& name, DType dtype, std::vector<int64_t> shape, WeightLayout layout,
                   const uint8_t* data, size_t bytes) {
  tensors_[name] = TensorView{name, dtype, std::move(shape), layout, data, bytes};
}

int64_t Engine::limit(const char* key) const {
  constexpr int64_t kMaxLimit = int64_t{1} << 22;
  if (header_.contains("limits") && header_["limits"].contains(key) && header_["limits"][key].is_number_integer()) {
    const int64_t v = header_["limits"][key].get<int64_t>();
    if (v > 0 && v <= kMaxLimit) return v;
  }
  throw Error(source_ + ": header limits." + key + " is missing or not an integer from 1 to " + std::to_string(kMaxLimit));
}

const TensorView* Engine::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorView& Engine::tensor(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) throw Error(source_ + ": tensor " + name + " is missing");
  return *t;
}

}  // namespace kiln
