// Each subcommand registers its flags on the app and returns the function that runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <cstdint>
#include <string>
#include <vector>

#include "indexcache/device.h"
#include "indexcache/index_plan.h"
#include "indexcache/model.h"

namespace indexcache::cli {

using Runner = std::function<int()>;

// The model directory: -m DIR, or the embedded default model when omitted.
std::string resolve_model_dir(const std::string& flag_value);
// The --plan flag if given, else the plan the model's config.json declares.
IndexPlan resolve_plan(const std::string& flag_value, const ModelSpec& spec, const std::string& model_dir);
// Whitespace-separated non-negative token ids from `path`; errors name the file and the token.
std::vector<int32_t> read_token_ids(const std::string& path);

// --device cpu|cuda, --gpu N, --threads N, --precision bf16|f32 (every command that runs a model).
struct DeviceFlags {
  std::string device = "cpu";
  int gpu = 0;
  int threads = 0;
  std::string precision = "bf16";
};
void add_device_flags(CLI::App& app, DeviceFlags& f);
Device resolve_device(const DeviceFlags& f);
// The backend of the flags with `model`'s weights placed on it (a progress line while that takes
// more than a second); one-line errors for a device that cannot be used.
std::shared_ptr<Backend> open_backend(const DeviceFlags& f, const Model& model);

Runner register_info(CLI::App& app);
Runner register_dump(CLI::App& app);
Runner register_generate(CLI::App& app);
Runner register_distill(CLI::App& app);
Runner register_eval(CLI::App& app);
Runner register_overlap(CLI::App& app);
Runner register_calibrate(CLI::App& app);
Runner register_bench(CLI::App& app);

}  // namespace indexcache::cli
