#include "indexcache/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "calib/svg.h"
#include "indexcache/error.h"
#include "indexcache/output_dir.h"
#include "indexcache/model.h"
#include "indexcache/overlap.h"
#include "indexcache/session.h"

namespace indexcache::report {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- files -------------------------------------------------------------------------------------

void ensure_dir(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec)) throw_bad_input(dir, "exists and is not a directory");
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) throw_bad_input(dir, "cannot create output directory: " + ec.message());
}

void write_file(const std::string& path, const std::string& text) { write_file_atomic(path, text); }

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw_bad_input(path, "cannot read: no such file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_bad_input(path, "cannot read");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// ---- progress ----------------------------------------------------------------------------------

std::string format_duration(double s) {
  if (!(s >= 0) || !std::isfinite(s)) return "?";
  if (s < 60) return fmt::format("{:.1f}s", s);
  const long long t = std::llround(s);
  if (t < 3600) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}h{:02}m", t / 3600, (t % 3600) / 60);
}

// ---- plans -------------------------------------------------------------------------------------

IndexPlan uniform_plan(int n, int num_full) {
  num_full = std::clamp(num_full, 1, n);
  std::string p(n, 'S');
  for (int j = 0; j < num_full; ++j) p[static_cast<size_t>(static_cast<int64_t>(j) * n / num_full)] = 'F';
  return IndexPlan::from_pattern(p, n, "uniform plan");
}

std::vector<NamedPlan> comparison_plans(const IndexPlan& searched, const std::string& start_plan) {
  const int n = searched.num_layers();
  std::vector<NamedPlan> all = {{"searched", searched},
                                {fmt::format("uniform {}F", searched.num_full()), uniform_plan(n, searched.num_full())},
                                {"1/2", IndexPlan::from_freq(2, 1, n)},
                                {"1/4", IndexPlan::from_freq(4, 1, n)},
                                {"1/8", IndexPlan::from_freq(8, 1, n)}};
  if (!start_plan.empty()) all.push_back({"start", IndexPlan::from_pattern(start_plan, n, "start plan")});
  all.push_back({"all-F", IndexPlan::full(n)});
  std::vector<NamedPlan> out;
  for (auto& p : all) {
    auto same = std::find_if(out.begin(), out.end(), [&](const NamedPlan& q) { return q.plan.pattern() == p.plan.pattern(); });
    if (same != out.end())
      same->name += " = " + p.name;
    else
      out.push_back(std::move(p));
  }
  return out;
}

std::vector<PlanLoss> score_comparison(const Model& model, const std::vector<std::vector<int32_t>>& batches,
                                       Backend& backend, const CalibrationState& state,
                                       const std::function<void(const std::string&)>& on_plan) {
  const IndexPlan searched = IndexPlan::from_pattern(state.plan(), state.num_layers);
  const double full = state.full_loss;
  const double searched_loss = state.steps.empty() ? full : state.steps.back().loss;
  std::vector<PlanLoss> rows;
  for (const auto& np : comparison_plans(searched, state.start_plan)) {
    const std::string pat = np.plan.pattern();
    bool runnable = true;
    for (int l = 0; l < np.plan.num_layers(); ++l) runnable = runnable && (!np.plan.is_full(l) || model.has_indexer(l));
    if (!runnable) continue;
    double loss;
    if (pat == searched.pattern())
      loss = searched_loss;
    else if (pat == state.start())
      loss = full;
    else {
      if (on_plan) on_plan(np.name);
      loss = plan_loss(model, np.plan, batches, backend);
    }
    rows.push_back({np.name, pat, np.plan.num_full(), loss, full != 0 ? 100.0 * (loss - full) / full : 0.0});
  }
  return rows;
}

std::string loss_table(const std::vector<PlanLoss>& rows, const std::string& reference) {
  size_t wn = 4, wp = 7;
  for (const auto& r : rows) wn = std::max(wn, r.name.size()), wp = std::max(wp, r.plan.size());
  const std::string vs = "vs " + reference;
  const size_t wv = std::max<size_t>(9, vs.size());
  std::string o = fmt::format("  {:<{}}  {:<{}}  {:>4}  {:>10}  {:>{}}\n", "plan", wn, "pattern", wp, "F", "loss", vs, wv);
  for (const auto& r : rows)
    o += fmt::format("  {:<{}}  {:<{}}  {:>4}  {:>10.5f}  {:>{}}\n", r.name, wn, r.plan, wp, r.full_layers, r.loss,
                     fmt::format("{:+.2f} %", r.increase_pct), wv);
  return o;
}

// ---- exports -----------------------------------------------------------------------------------

std::string export_config(const std::string& config_text, const IndexPlan& plan, const std::string& source) {
  ordered_json j = ordered_json::parse(config_text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw_bad_input(source, "invalid JSON");
  j["indexer_types"] = plan.indexer_types();
  j["index_topk_pattern"] = plan.pattern();
  return j.dump(2) + "\n";
}

ordered_json override_keys(const IndexPlan& plan, bool vllm) {
  ordered_json j;
  j["indexer_types"] = plan.indexer_types();
  j["index_topk_pattern"] = plan.pattern();
  if (vllm) j["use_index_cache"] = true;
  return j;
}

std::string vllm_override_arg(const IndexPlan& plan) { return "--hf-overrides '" + override_keys(plan, true).dump() + "'"; }
std::string sglang_override_arg(const IndexPlan& plan) {
  return "--json-model-override-args '" + override_keys(plan, false).dump() + "'";
}

// ---- calibration state: calib_state.cpp -------------------------------------------------------

// ---- calibration report ------------------------------------------------------------------------

std::vector<DataSummary> summarize(const std::vector<DataFile>& files) {
  std::vector<DataSummary> out;
  for (const auto& f : files) out.push_back({f.path, static_cast<int64_t>(f.windows.size()), f.window_tokens()});
  return out;
}

namespace {
ordered_json data_json(const std::vector<DataSummary>& data) {
  ordered_json a = ordered_json::array();
  for (const auto& d : data) a.push_back({{"path", d.path}, {"windows", d.windows}, {"tokens", d.tokens}});
  return a;
}
double pct(double loss, double full) { return full != 0 ? 100.0 * (loss - full) / full : 0.0; }
}  // namespace

ordered_json calibration_report(const CalibrationRun& r) {
  const CalibrationState& s = r.state;
  const IndexPlan plan = IndexPlan::from_pattern(s.plan(), s.num_layers);
  ordered_json j;
  j["plan"] = plan.pattern();
  j["indexer_types"] = plan.indexer_types();
  j["index_topk_pattern"] = plan.pattern();
  j["full_layers"] = plan.num_full();
  j["num_layers"] = r.num_layers;
  j["model"] = r.model_dir;
  j["model_type"] = r.model_type;
  j["index_topk"] = r.index_topk;
  j["calibration"] = {{"ctx", r.ctx}, {"data", data_json(r.data)}, {"fingerprint", r.data_fingerprint}};
  ordered_json stop = ordered_json::object();
  if (r.stop.keep_fraction) stop["keep"] = *r.stop.keep_fraction;
  if (r.stop.keep_layers) stop["keep_layers"] = *r.stop.keep_layers;
  if (r.stop.max_loss_increase) stop["max_loss_increase_pct"] = *r.stop.max_loss_increase;
  j["stop"] = stop;
  j["stop_reason"] = s.stop_reason;
  if (!s.start_plan.empty()) j["start_plan"] = s.start_plan;
  j["full_loss"] = s.full_loss;
  j["loss"] = s.steps.empty() ? s.full_loss : s.steps.back().loss;
  j["increase_pct"] = pct(j["loss"].get<double>(), s.full_loss);
  j["steps"] = ordered_json::array();
  for (size_t i = 0; i < s.steps.size(); ++i) {
    const auto& st = s.steps[i];
    ordered_json e;
    e["step"] = i + 1;
    e["flipped"] = st.flipped;
    e["loss"] = st.loss;
    e["increase_pct"] = pct(st.loss, s.full_loss);
    e["plan"] = st.plan;
    e["shared_layers"] = static_cast<int>(std::count(st.plan.begin(), st.plan.end(), 'S'));
    e["seconds"] = st.seconds;
    e["candidates"] = ordered_json::array();
    for (const auto& c : st.candidates)
      e["candidates"].push_back({{"layer", c.layer}, {"loss", c.loss}, {"increase_pct", pct(c.loss, s.full_loss)}});
    j["steps"].push_back(std::move(e));
  }
  j["comparison"] = ordered_json::array();
  for (const auto& c : r.comparison)
    j["comparison"].push_back({{"name", c.name},
                               {"plan", c.plan},
                               {"full_layers", c.full_layers},
                               {"loss", c.loss},
                               {"increase_pct", c.increase_pct}});
  j["layer_forwards"] = {{"done", s.layer_forwards},
                         {"naive", s.naive_layer_forwards},
                         {"ratio", s.naive_layer_forwards ? static_cast<double>(s.layer_forwards) / s.naive_layer_forwards : 0.0}};
  j["timings"] = {{"load_seconds", r.load_seconds},
                  {"search_seconds", r.search_seconds},
                  {"comparison_seconds", r.comparison_seconds},
                  {"total_seconds", r.total_seconds}};
  j["resumed_steps"] = r.resumed_steps >= 0 ? ordered_json(r.resumed_steps) : ordered_json(nullptr);
  j["overrides"] = {{"vllm", vllm_override_arg(plan)},
                    {"sglang", sglang_override_arg(plan)},
                    {"vllm_json", override_keys(plan, true)},
                    {"sglang_json", override_keys(plan, false)}};
  ordered_json files = ordered_json::object();
  for (const auto& [what, path] : r.files) files[what] = path;
  j["files"] = files;
  return j;
}

std::string calibration_summary(const CalibrationRun& r) {
  const CalibrationState& s = r.state;
  const IndexPlan plan = IndexPlan::from_pattern(s.plan(), s.num_layers);
  auto file = [&](const std::string& what) {
    for (const auto& [w, p] : r.files)
      if (w == what) return p;
    return std::string();
  };
  std::string o;
  o += fmt::format("model        {} ({}, {} layers, index_topk {})\n", r.model_dir, r.model_type, r.num_layers, r.index_topk);
  int64_t windows = 0, tokens = 0;
  std::string paths;
  for (const auto& d : r.data) windows += d.windows, tokens += d.tokens, paths += (paths.empty() ? "" : ", ") + d.path;
  o += fmt::format("calibration  {} windows, {} tokens (ctx {}): {}\n", windows, tokens, r.ctx, paths);
  std::string rule;
  if (r.stop.keep_fraction) rule += fmt::format("keep {} of the layers F", *r.stop.keep_fraction);
  if (r.stop.keep_layers) rule += (rule.empty() ? "" : ", ") + fmt::format("keep {} F layers", *r.stop.keep_layers);
  if (r.stop.max_loss_increase)
    rule += (rule.empty() ? "" : ", ") + fmt::format("loss at most +{} % over {}", *r.stop.max_loss_increase, s.reference());
  o += fmt::format("search       greedy, {}: stopped: {}{}\n", rule, s.stop_reason,
                   r.resumed_steps >= 0 ? fmt::format(" (resumed after step {})", r.resumed_steps) : "");
  if (!s.start_plan.empty())
    o += fmt::format("start        {}: the layers with indexers (the search only takes more away)\n", s.start_plan);
  const std::string vs = "vs " + s.reference();
  const size_t wv = std::max<size_t>(9, vs.size());
  o += fmt::format("  {:>4}  {:>5}  {:>10}  {:>{}}  {:>8}\n", "step", "layer", "loss", vs, wv, "time");
  o += fmt::format("  {:>4}  {:>5}  {:>10.5f}  {:>{}}  {:>8}\n", 0, "-", s.full_loss, "+0.00 %", wv, "");
  for (size_t i = 0; i < s.steps.size(); ++i)
    o += fmt::format("  {:>4}  {:>5}  {:>10.5f}  {:>{}}  {:>8}\n", i + 1, s.steps[i].flipped, s.steps[i].loss,
                     fmt::format("{:+.2f} %", pct(s.steps[i].loss, s.full_loss)), wv, format_duration(s.steps[i].seconds));
  o += fmt::format("plan         {} ({} F / {} layers)\n", plan.pattern(), plan.num_full(), plan.num_layers());
  o += "loss table   calibration loss (nats/token) of the searched plan and uniform plans\n";
  o += loss_table(r.comparison, s.reference());
  const double ratio = s.naive_layer_forwards ? static_cast<double>(s.layer_forwards) / s.naive_layer_forwards : 0.0;
  o += fmt::format("layer-forwards  {} done, {} for the naive search: ratio {:.3f} ({:.1f} % saved)\n", s.layer_forwards,
                   s.naive_layer_forwards, ratio, 100.0 * (1.0 - ratio));
  o += fmt::format("time         {} total: load {}, search {}, comparison {}\n", format_duration(r.total_seconds),
                   format_duration(r.load_seconds), format_duration(r.search_seconds), format_duration(r.comparison_seconds));
  o += fmt::format("report       {}\n", file("report"));
  o += fmt::format("files        {} (plan), {} (config with the plan), {} (loss curve), {} (state for --resume)\n",
                   file("plan"), file("config"), file("loss_curve"), file("state"));
  o += fmt::format("vLLM         {}\n", vllm_override_arg(plan));
  o += fmt::format("SGLang       {}\n", sglang_override_arg(plan));
  return o;
}

std::string loss_curve_svg(const CalibrationRun& r) {
  const CalibrationState& s = r.state;
  svg::LineChart c;
  c.title = fmt::format("Greedy IndexCache search: calibration loss ({} layers)", s.num_layers);
  c.x_label = "number of S (shared) layers";
  c.y_label = "calibration loss (nats / token)";
  svg::Series searched{.name = "greedy search", .points = {}, .line = true, .colour = "#1f77b4", .marker = "circle"};
  const IndexPlan start = IndexPlan::from_pattern(s.start(), s.num_layers);
  const int shared0 = s.num_layers - start.num_full();
  searched.points.push_back({static_cast<double>(shared0), s.full_loss, s.start_plan.empty() ? "all-F" : "start"});
  for (size_t i = 0; i < s.steps.size(); ++i)
    searched.points.push_back({static_cast<double>(shared0 + i + 1), s.steps[i].loss,
                               i + 1 == s.steps.size() ? "L" + std::to_string(s.steps[i].flipped) + " (final)"
                                                       : "L" + std::to_string(s.steps[i].flipped)});
  c.series.push_back(std::move(searched));
  svg::Series uniform{.name = "uniform plans", .points = {}, .line = false, .colour = "#d62728", .marker = "square"};
  for (const auto& p : r.comparison) {
    if (p.name.rfind("searched", 0) == 0 || p.full_layers == s.num_layers) continue;
    uniform.points.push_back({static_cast<double>(s.num_layers - p.full_layers), p.loss, p.name});
  }
  if (!uniform.points.empty()) c.series.push_back(std::move(uniform));
  return svg::line_chart(c);
}

// ---- overlap -----------------------------------------------------------------------------------

OverlapResult overlap_on(const Model& model, const std::vector<std::vector<int32_t>>& windows, Backend& backend,
                         const std::function<void(int, int)>& on_window) {
  const int n = model.spec().num_layers;
  Session session(model, IndexPlan::full(n), backend);
  OverlapResult r;
  r.k = model.spec().index_topk;
  OverlapAccumulator acc(n, r.k);
  int done = 0;
  for (const auto& w : windows) {
    session.reset();
    LayerCapture cap({.selections = true});
    ForwardOptions fo;
    fo.logits = LogitsWanted::kNone;
    fo.observer = &cap;
    const ChunkResult c = session.forward(w, fo);
    acc.add(cap.selections, c.tokens);
    ++r.windows;
    r.tokens += static_cast<int64_t>(w.size());
    if (on_window) on_window(++done, static_cast<int>(windows.size()));
  }
  r.matrix = acc.matrix();
  r.queries = acc.queries();
  return r;
}

ordered_json overlap_json(const OverlapResult& r, const std::string& model_dir, const std::vector<DataSummary>& data) {
  const int n = static_cast<int>(r.matrix.size());
  ordered_json j;
  j["model"] = model_dir;
  j["num_layers"] = n;
  j["k"] = r.k;
  j["metric"] = "mean over queries with more than k candidates of |T_i intersect T_j| / k (all layers F)";
  j["queries"] = r.queries;
  j["windows"] = r.windows;
  j["tokens"] = r.tokens;
  j["data"] = data_json(data);
  std::vector<double> adjacent;
  for (int i = 0; i + 1 < n; ++i) adjacent.push_back(r.matrix[i][i + 1]);
  j["adjacent"] = adjacent;
  j["matrix"] = r.matrix;
  return j;
}

std::string overlap_csv(const OverlapResult& r) {
  const int n = static_cast<int>(r.matrix.size());
  std::string o = "layer";
  for (int j = 0; j < n; ++j) o += fmt::format(",L{}", j);
  o += "\n";
  for (int i = 0; i < n; ++i) {
    o += fmt::format("L{}", i);
    for (int j = 0; j < n; ++j) o += fmt::format(",{:.6f}", r.matrix[i][j]);
    o += "\n";
  }
  return o;
}

std::string overlap_svg(const OverlapResult& r, const std::string& title) {
  svg::Heatmap h;
  h.title = title;
  for (size_t i = 0; i < r.matrix.size(); ++i) h.labels.push_back("L" + std::to_string(i));
  h.values = r.matrix;
  h.scale_label = "mean |Ti ∩ Tj| / k";
  return svg::heatmap(h);
}

// ---- eval --------------------------------------------------------------------------------------

EvalResults evaluate_plans(const Model& model, const std::vector<NamedPlan>& plans, const std::vector<DataFile>& files,
                           Backend& backend, const std::function<void(int, int)>& on_unit) {
  EvalResults r;
  r.plans = plans;
  r.data = summarize(files);
  for (const auto& f : files) {
    r.data_names.push_back(f.name);
    r.has_windows.push_back(!f.windows.empty());
    r.has_items.push_back(!f.items.empty());
  }
  int total = 0, done = 0;
  for (const auto& f : files) total += static_cast<int>(f.windows.size() + f.items.size());
  total *= static_cast<int>(plans.size());
  const auto t0 = std::chrono::steady_clock::now();
  auto tick = [&] {
    if (on_unit) on_unit(++done, total);
  };
  r.loss.assign(plans.size(), std::vector<LossSum>(files.size()));
  r.retrieval.assign(plans.size(), std::vector<RetrievalScore>(files.size()));
  // File-major so every plan sees a file while it is hot; the batches are the same for all plans.
  for (size_t f = 0; f < files.size(); ++f)
    for (size_t p = 0; p < plans.size(); ++p) {
      if (!files[f].windows.empty()) r.loss[p][f] = windows_loss(model, plans[p].plan, files[f].windows, backend, tick);
      if (!files[f].items.empty())
        r.retrieval[p][f] = retrieval_accuracy(model, plans[p].plan, files[f].items, backend, {.max_tokens = 0, .on_item = tick});
    }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

ordered_json eval_json(const EvalResults& r, const std::string& model_dir, int ctx) {
  ordered_json j;
  j["model"] = model_dir;
  j["ctx"] = ctx;
  j["data"] = data_json(r.data);
  j["plans"] = ordered_json::array();
  for (size_t p = 0; p < r.plans.size(); ++p) {
    ordered_json pj;
    pj["name"] = r.plans[p].name;
    pj["plan"] = r.plans[p].plan.pattern();
    pj["full_layers"] = r.plans[p].plan.num_full();
    pj["results"] = ordered_json::array();
    for (size_t f = 0; f < r.data.size(); ++f) {
      ordered_json e;
      e["data"] = r.data[f].path;
      if (r.has_windows[f]) {
        const LossSum& l = r.loss[p][f];
        e["tokens"] = l.tokens;
        e["loss"] = l.mean();
        e["perplexity"] = std::exp(l.mean());
      }
      if (r.has_items[f]) {
        const RetrievalScore& s = r.retrieval[p][f];
        ordered_json rj;
        rj["items"] = s.items;
        rj["correct"] = s.correct;
        rj["accuracy"] = s.accuracy();
        rj["skipped"] = s.skipped;
        ordered_json tasks = ordered_json::object();
        for (const auto& [task, ct] : s.by_task)
          tasks[task.empty() ? "-" : task] = {{"correct", ct.first}, {"items", ct.second}};
        rj["by_task"] = tasks;
        rj["wrong_lines"] = s.wrong_lines;
        e["retrieval"] = rj;
      }
      pj["results"].push_back(std::move(e));
    }
    j["plans"].push_back(std::move(pj));
  }
  j["seconds"] = r.seconds;
  return j;
}

std::string eval_text(const EvalResults& r) {
  size_t wd = 4, wp = 4, wpat = 7;
  for (const auto& n : r.data_names) wd = std::max(wd, n.size());
  for (const auto& p : r.plans) wp = std::max(wp, p.name.size()), wpat = std::max(wpat, p.plan.pattern().size());
  std::string o;
  bool any_windows = std::find(r.has_windows.begin(), r.has_windows.end(), true) != r.has_windows.end();
  bool any_items = std::find(r.has_items.begin(), r.has_items.end(), true) != r.has_items.end();
  if (any_windows) {
    o += "LM loss (mean next-token loss, nats) and perplexity\n";
    o += fmt::format("  {:<{}}  {:<{}}  {:<{}}  {:>3}  {:>9}  {:>9}  {:>10}  {:>9}\n", "data", wd, "plan", wp, "pattern", wpat,
                     "F", "tokens", "loss", "perplexity", "vs first");
    for (size_t f = 0; f < r.data.size(); ++f) {
      if (!r.has_windows[f]) continue;
      const double base = r.loss[0][f].mean();
      for (size_t p = 0; p < r.plans.size(); ++p) {
        const LossSum& l = r.loss[p][f];
        o += fmt::format("  {:<{}}  {:<{}}  {:<{}}  {:>3}  {:>9}  {:>9.5f}  {:>10.3f}  {:>+7.2f} %\n", r.data_names[f], wd,
                         r.plans[p].name, wp, r.plans[p].plan.pattern(), wpat, r.plans[p].plan.num_full(), l.tokens,
                         l.mean(), std::exp(l.mean()), base != 0 ? 100.0 * (l.mean() - base) / base : 0.0);
      }
    }
  }
  if (any_items) {
    o += "retrieval accuracy (greedy decoding, exact match of the answer's token ids)\n";
    o += fmt::format("  {:<{}}  {:<{}}  {:>3}  {:>9}  {:>8}  {:>7}  {}\n", "data", wd, "plan", wp, "F", "correct",
                     "accuracy", "skipped", "by task");
    for (size_t f = 0; f < r.data.size(); ++f) {
      if (!r.has_items[f]) continue;
      for (size_t p = 0; p < r.plans.size(); ++p) {
        const RetrievalScore& s = r.retrieval[p][f];
        std::string tasks;
        for (const auto& [task, ct] : s.by_task)
          if (!task.empty()) tasks += fmt::format("{}{} {}/{}", tasks.empty() ? "" : ", ", task, ct.first, ct.second);
        o += fmt::format("  {:<{}}  {:<{}}  {:>3}  {:>9}  {:>6.1f} %  {:>7}  {}\n", r.data_names[f], wd, r.plans[p].name,
                         wp, r.plans[p].plan.num_full(), fmt::format("{}/{}", s.correct, s.items), 100.0 * s.accuracy(),
                         s.skipped, tasks);
      }
    }
  }
  return o;
}

}  // namespace indexcache::report
