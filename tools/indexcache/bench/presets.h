// Synthetic model presets for `indexcache bench`: a name -> the config.json of a DSA model with
// real shapes (the paper's 30B-class GLM-4.7-Flash-DSA, GLM-5, DeepSeek-V3.2) or small shapes for
// the CPU (tiny, dsa-mini), optionally trimmed to fewer layers / routed experts so it fits one
// device. No weights here: the CPU path draws random ones (Model::synthetic), the GPU path
// generates them on device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "indexcache/model_spec.h"

namespace indexcache::bench {

struct Preset {
  std::string name;
  std::string description;     // one line: where the shapes come from
  std::string config_json;     // a Hugging Face config.json (after trimming)
  ModelSpec spec;              // parse_model_spec(config_json)
  int full_layers = 0;         // the preset's layer count before --layers
  int full_experts = 0;        // the preset's routed experts before --experts
};

// Known preset names, in display order.
std::vector<std::string> preset_names();

// The preset `name`, trimmed to `layers` layers and `experts` routed experts (0: keep the
// preset's). Throws Error(kBadInput) naming --synthetic / --layers / --experts for an unknown
// name or an impossible trim.
Preset make_preset(const std::string& name, int layers = 0, int experts = 0);

// Parameter count of a model with `spec`'s shapes (every layer with its indexer), from the
// checkpoint schema (the same number as Model::parameter_count).
int64_t parameter_count(const ModelSpec& spec);
// Parameters of the indexers alone (all layers).
int64_t indexer_parameter_count(const ModelSpec& spec);
// Bytes of the weights stored as bf16.
inline int64_t bf16_weight_bytes(const ModelSpec& spec) { return 2 * parameter_count(spec); }

// "1.23 GiB", "456 MiB", "789 KiB".
std::string format_bytes(double bytes);

}  // namespace indexcache::bench
