// The resumable calibration state file (state.json): writing it, and reading it back from a file
// a user may have edited, truncated or swapped, with every value type- and range-checked.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/json_input.h"
#include "indexcache/calibrate.h"
#include "indexcache/error.h"
#include "indexcache/report.h"

namespace indexcache {

std::string CalibrationState::plan() const {
  return steps.empty() ? start() : steps.back().plan;
}
std::string CalibrationState::start() const { return start_plan.empty() ? std::string(num_layers, 'F') : start_plan; }
std::string CalibrationState::reference() const { return start_plan.empty() ? "all-F" : "start plan"; }

namespace report {

namespace fs = std::filesystem;
using nlohmann::json;

// Layer counts past this are no model's (and keep every count below int overflow).
constexpr int64_t kMaxStateLayers = 1 << 16;

std::string state_to_json(const CalibrationState& s, const StateMeta& m) {
  ordered_json j;
  j["version"] = 1;
  j["model"] = m.model_dir;
  j["num_layers"] = s.num_layers;
  j["data_fingerprint"] = m.data_fingerprint;
  j["windows"] = m.windows;
  if (!s.start_plan.empty()) j["start_plan"] = s.start_plan;
  j["full_loss"] = s.full_loss;
  j["layer_forwards"] = s.layer_forwards;
  j["naive_layer_forwards"] = s.naive_layer_forwards;
  j["plan"] = s.plan();
  j["steps"] = ordered_json::array();
  for (const auto& st : s.steps) {
    ordered_json e;
    e["flipped"] = st.flipped;
    e["loss"] = st.loss;
    e["plan"] = st.plan;
    e["seconds"] = st.seconds;
    e["candidates"] = ordered_json::array();
    for (const auto& c : st.candidates) e["candidates"].push_back({{"layer", c.layer}, {"loss", c.loss}});
    j["steps"].push_back(std::move(e));
  }
  return j.dump(1) + "\n";
}

namespace {

// Reads the keys of one JSON object of the state file; every error names the file and the key
// path ("steps[2].candidates[0].loss").
class StateReader {
 public:
  StateReader(const json& obj, std::string path, std::string prefix)
      : obj_(obj), path_(std::move(path)), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw_bad_input(path_ + ": key '" + prefix_ + key + "'", why);
  }
  const json& need(const std::string& key) const {
    const auto it = obj_.find(key);
    if (it == obj_.end()) fail(key, "missing");
    return *it;
  }
  int64_t integer(const std::string& key, int64_t lo, int64_t hi) const {
    const json& v = need(key);
    const auto x = json_integer_in(v, lo, hi);
    if (!x)
      fail(key, fmt::format("expected an integer in [{}, {}], found {}", lo, hi, json_for_message(v)));
    return *x;
  }
  // A finite number >= 0 (losses, seconds). Absent: `dflt` when given, else an error.
  double non_negative(const std::string& key, std::optional<double> dflt = std::nullopt) const {
    if (dflt && !obj_.contains(key)) return *dflt;
    const json& v = need(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
      fail(key, "expected a finite number >= 0, found " + json_for_message(v));
    return v.get<double>();
  }
  const std::string& string(const std::string& key) const {
    const json& v = need(key);
    if (!v.is_string()) fail(key, "expected a string, found " + json_for_message(v));
    return v.get_ref<const std::string&>();
  }
  const json& array(const std::string& key, size_t max_size) const {
    const json& v = need(key);
    if (!v.is_array()) fail(key, "expected an array, found " + json_for_message(v));
    if (v.size() > max_size) fail(key, fmt::format("{} entries, at most {} possible", v.size(), max_size));
    return v;
  }
  StateReader object_at(const json& v, const std::string& key) const {
    if (!v.is_object()) fail(key, "expected an object, found " + json_for_message(v));
    return StateReader(v, path_, prefix_ + key + ".");
  }

 private:
  const json& obj_;
  std::string path_, prefix_;
};

}  // namespace

CalibrationState state_from_json(const std::string& text, const std::string& path, const StateMeta& expected) {
  const json j = parse_json_input(text, path);
  if (!j.is_object()) throw_bad_input(path, "expected a calibration state (a JSON object), found " + json_for_message(j));
  const StateReader r(j, path, "");
  const json& version = r.need("version");
  if (json_integer_in(version, 1, 1) != 1)
    r.fail("version", "unsupported state version " + json_for_message(version) + " (this build reads 1)");

  CalibrationState s;
  s.num_layers = static_cast<int>(r.integer("num_layers", 1, kMaxStateLayers));
  if (s.num_layers != expected.num_layers)
    throw_bad_input(path, fmt::format("state is for a model with {} layers, this one has {}", s.num_layers,
                                      expected.num_layers));
  if (r.string("data_fingerprint") != expected.data_fingerprint)
    throw_bad_input(path, "state was made on other calibration data (files, --ctx or --max-windows differ)");
  if (j.contains("windows")) r.integer("windows", 0, std::numeric_limits<int64_t>::max());
  if (j.contains("model")) r.string("model");
  if (j.contains("start_plan")) {
    s.start_plan = r.string("start_plan");
    const IndexPlan start = IndexPlan::from_pattern(s.start_plan, s.num_layers, path + ": key 'start_plan'");  // validates
    if (!start.is_full(0)) r.fail("start_plan", "layer 0 must be F");
  }
  s.full_loss = r.non_negative("full_loss");
  s.layer_forwards = r.integer("layer_forwards", 0, std::numeric_limits<int64_t>::max());
  s.naive_layer_forwards = r.integer("naive_layer_forwards", 0, std::numeric_limits<int64_t>::max());

  const json& steps = r.array("steps", static_cast<size_t>(s.num_layers - 1));
  std::string prev = s.start();
  for (size_t i = 0; i < steps.size(); ++i) {
    const std::string key = fmt::format("steps[{}]", i);
    const StateReader e = r.object_at(steps[i], key);
    CalibrationStep st;
    st.flipped = static_cast<int>(e.integer("flipped", 1, s.num_layers - 1));  // layer 0 stays F
    st.loss = e.non_negative("loss");
    st.plan = e.string("plan");
    st.seconds = e.non_negative("seconds", 0.0);
    IndexPlan::from_pattern(st.plan, s.num_layers, path + ": key '" + key + ".plan'");  // validates
    if (prev[st.flipped] != 'F')
      e.fail("flipped", "layer " + std::to_string(st.flipped) + " is not an F layer of the previous plan");
    std::string want = prev;
    want[st.flipped] = 'S';
    if (want != st.plan) e.fail("plan", "plan does not follow from the previous step");
    const json& cands = e.array("candidates", static_cast<size_t>(s.num_layers));
    for (size_t c = 0; c < cands.size(); ++c) {
      const StateReader cr = e.object_at(cands[c], fmt::format("candidates[{}]", c));
      st.candidates.push_back({static_cast<int>(cr.integer("layer", 0, s.num_layers - 1)), cr.non_negative("loss")});
    }
    prev = st.plan;
    s.steps.push_back(std::move(st));
  }
  return s;
}

CalibrationState load_state(const std::string& path, const StateMeta& expected) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw_bad_input(path, "no saved search to resume (run without --resume first)");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_bad_input(path, "cannot read the saved search");
  std::ostringstream text;
  text << f.rdbuf();
  if (f.bad()) throw_bad_input(path, "read error");
  return state_from_json(text.str(), path, expected);
}

}  // namespace report
}  // namespace indexcache
