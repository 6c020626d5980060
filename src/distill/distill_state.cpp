// A distillation run's state on disk: one safetensors file of f32 tensors (each F layer's trained
// indexer and its AdamW moments) with the step, the fingerprint and the curve in its metadata.
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/json_input.h"
#include "indexcache/distill.h"
#include "indexcache/error.h"
#include "indexcache/safetensors.h"

namespace indexcache {

namespace {

constexpr const char* kFormat = "indexcache-distill-state-1";
constexpr const char* kNames[] = {"wq_b", "wk", "k_norm_w", "k_norm_b", "weights_proj"};
constexpr const char* kKinds[] = {"", ".m", ".v"};

std::vector<std::vector<float>*> fields_of(TrainedIndexer& t) {
  return {&t.wq_b, &t.wk, &t.k_norm_w, &t.k_norm_b, &t.weights_proj};
}

int integer_in(const nlohmann::json& v, int64_t lo, int64_t hi, const std::string& path, const char* what) {
  const std::optional<int64_t> i = json_integer_in(v, lo, hi);
  if (!i) throw_bad_input(path, std::string("the state's ") + what + " is not an integer in [" + std::to_string(lo) + ", " +
                                    std::to_string(hi) + "]");
  return static_cast<int>(*i);
}

std::string tensor_name(int layer, int field, int kind) {
  return "layer." + std::to_string(layer) + "." + kNames[field] + kKinds[kind];
}

}  // namespace

void write_distill_state(const std::string& path, const DistillState& st) {
  std::vector<TensorToWrite> tensors;
  const std::vector<TrainedIndexer>* groups[] = {&st.indexers, &st.first_moments, &st.second_moments};
  for (int kind = 0; kind < 3; ++kind)
    for (const TrainedIndexer& t : *groups[kind]) {
      auto f = fields_of(const_cast<TrainedIndexer&>(t));
      for (int i = 0; i < 5; ++i)
        tensors.push_back({tensor_name(t.layer, i, kind), DType::kF32, {static_cast<int64_t>(f[i]->size())},
                           std::as_bytes(std::span(*f[i]))});
    }
  nlohmann::json curve = nlohmann::json::array();
  for (const DistillStep& s : st.steps)
    curve.push_back({s.step, s.window, s.sparse, s.loss, s.grad_norm});
  nlohmann::json layers = nlohmann::json::array();
  for (const TrainedIndexer& t : st.indexers) layers.push_back(t.layer);
  write_safetensors(path, tensors,  // (to a temporary, renamed over path)
                    {{"format", kFormat}, {"step", std::to_string(st.step)}, {"fingerprint", st.fingerprint},
                     {"layers", layers.dump()}, {"curve", curve.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)}});
}

DistillState read_distill_state(const std::string& path) {
  auto file = SafetensorsFile::open(path);
  const auto& md = file->metadata();
  auto meta = [&](const std::string& key) -> const std::string& {
    auto it = md.find(key);
    if (it == md.end()) throw_bad_input(path, "not a distill state: no \"" + key + "\" in its metadata");
    return it->second;
  };
  if (meta("format") != kFormat) throw_bad_input(path, "not a distill state (format " + json_for_message(nlohmann::json(meta("format"))) + ")");
  DistillState st;
  const nlohmann::json step = parse_json_input(meta("step"), path + " step");
  st.step = integer_in(step, 0, 1 << 24, path, "step");
  st.fingerprint = meta("fingerprint");
  const nlohmann::json layers = parse_json_input(meta("layers"), path + " layers");
  const nlohmann::json curve = parse_json_input(meta("curve"), path + " curve");
  if (!layers.is_array() || layers.size() > 4096 || !curve.is_array() || curve.size() != static_cast<size_t>(st.step))
    throw_bad_input(path, "the state's layers or curve are malformed");
  for (const nlohmann::json& c : curve) {
    if (!c.is_array() || c.size() != 5 || !c[2].is_boolean() || !c[3].is_number() || !c[4].is_number())
      throw_bad_input(path, "a step of the state's curve is malformed");
    st.steps.push_back({.step = integer_in(c[0], 1, 1 << 24, path, "curve step"),
                        .window = integer_in(c[1], 0, 1 << 30, path, "curve window"),
                        .sparse = c[2].get<bool>(), .loss = c[3].get<double>(), .grad_norm = c[4].get<double>()});
  }
  std::vector<TrainedIndexer>* groups[] = {&st.indexers, &st.first_moments, &st.second_moments};
  for (const nlohmann::json& l : layers) {
    const int layer = integer_in(l, 0, 1 << 20, path, "layer");
    for (int kind = 0; kind < 3; ++kind) {
      TrainedIndexer t{.layer = layer};
      auto f = fields_of(t);
      for (int i = 0; i < 5; ++i) {
        const std::string name = tensor_name(layer, i, kind);
        const TensorInfo* info = file->find(name);
        if (!info || info->dtype != DType::kF32 || info->shape.size() != 1)
          throw_bad_input(path, "missing or malformed tensor " + quote_for_message(name));
        f[i]->resize(static_cast<size_t>(info->numel()));
        std::memcpy(f[i]->data(), file->data(*info), info->nbytes);
        for (float x : *f[i])
          if (!std::isfinite(x)) throw_bad_input(path, "tensor " + quote_for_message(name) + " holds a non-finite value");
      }
      groups[kind]->push_back(std::move(t));
    }
  }
  return st;
}

}  // namespace indexcache
