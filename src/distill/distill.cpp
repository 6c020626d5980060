#include "indexcache/distill.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "backend/backend.h"
#include "calib/svg.h"
#include "core/mapped_file.h"
#include "distill/indexer_loss.h"
#include "io/checkpoint_schema.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/report.h"
#include "indexcache/safetensors.h"
#include "indexcache/session.h"
#include "model/weights.h"

namespace indexcache {

namespace {

using distill::IndexerParams;

// AdamW state of one tensor.
struct Moments {
  std::vector<float> m, v;
};

// A TrainedIndexer's tensors in IndexerParams::all() order (kTensorNames).
std::array<std::vector<float>*, 5> fields(TrainedIndexer& t) {
  return {&t.wq_b, &t.wk, &t.k_norm_w, &t.k_norm_b, &t.weights_proj};
}
std::array<const std::vector<float>*, 5> fields(const TrainedIndexer& t) {
  return {&t.wq_b, &t.wk, &t.k_norm_w, &t.k_norm_b, &t.weights_proj};
}

std::string indexer_prefix(int layer) { return "model.layers." + std::to_string(layer) + ".self_attn.indexer."; }

// Checkpoint names of the trained tensors, in IndexerParams::all() order.
constexpr const char* kTensorNames[] = {"wq_b.weight", "wk.weight", "k_norm.weight", "k_norm.bias",
                                        "weights_proj.weight"};

// f32 values in dtype `t` (F32, BF16 or F16; rounded to nearest even), as checkpoint bytes.
std::vector<std::byte> from_f32(DType t, const std::vector<float>& v) {
  std::vector<std::byte> out(v.size() * dtype_size(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = t == DType::kBF16 ? f32_to_bf16(v[i]) : std::bit_cast<uint16_t>(static_cast<_Float16>(v[i]));
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

}  // namespace

DistillResult distill_indexers(const Model& model, Backend& backend, const IndexPlan& plan,
                               const std::vector<std::vector<int32_t>>& windows, const DistillOptions& o,
                               const std::function<void(const DistillStep&)>& on_step) {
  const ModelSpec& s = model.spec();
  model.check_plan(plan);
  if (plan.num_layers() != s.num_layers) throw_bad_input("--plan", "does not fit the model's layers");
  if (o.steps < 1) throw_bad_input("--steps", "must be at least 1");
  if (windows.empty()) throw_bad_input("distill data", "no windows to train on");
  if (!(o.lr > 0) || !std::isfinite(o.lr)) throw_bad_input("--lr", "must be a positive number");
  int longest = 0;
  for (const auto& w : windows) {
    if (w.size() < 2) throw_bad_input("distill data", "a window needs at least 2 tokens");
    longest = std::max<int>(longest, static_cast<int>(w.size()));
  }
  if (longest > s.max_position_embeddings)
    throw_bad_input("distill data", "windows longer than max_position_embeddings");

  // The students (the F layers' indexers, f32) and their optimiser state.
  std::vector<int> f_layers;
  std::vector<IndexerParams> students;
  std::vector<std::vector<Moments>> moments;
  for (int l = 0; l < s.num_layers; ++l) {
    if (!plan.is_full(l)) continue;
    f_layers.push_back(l);
    students.push_back(IndexerParams::from(model.weights().layers[l].indexer, s));
    std::vector<Moments> ms;
    for (const auto* t : students.back().all()) ms.push_back({std::vector<float>(t->size()), std::vector<float>(t->size())});
    moments.push_back(std::move(ms));
  }
  DistillResult result;
  int first_step = 1;
  if (o.resume) {
    const DistillState& r = *o.resume;
    if (r.fingerprint != o.fingerprint)
      throw_bad_input("--resume", "the state was written by a run with other settings (model, plan, data or options)");
    if (r.indexers.size() != f_layers.size() || r.first_moments.size() != f_layers.size() ||
        r.second_moments.size() != f_layers.size() || r.step < 0 || r.step > o.steps ||
        r.steps.size() != static_cast<size_t>(r.step))
      throw_bad_input("--resume", "the state does not fit this plan and --steps");
    for (size_t i = 0; i < f_layers.size(); ++i) {
      if (r.indexers[i].layer != f_layers[i]) throw_bad_input("--resume", "the state's layers are not the plan's F layers");
      const auto p = students[i].all();
      const auto src = fields(r.indexers[i]), m = fields(r.first_moments[i]), v = fields(r.second_moments[i]);
      for (size_t t = 0; t < p.size(); ++t) {
        if (src[t]->size() != p[t]->size() || m[t]->size() != p[t]->size() || v[t]->size() != p[t]->size())
          throw_bad_input("--resume", "a tensor of layer " + std::to_string(f_layers[i]) + " has the wrong size");
        *p[t] = *src[t];
        moments[i][t].m = *m[t];
        moments[i][t].v = *v[t];
      }
    }
    result.steps = r.steps;
    first_step = r.step + 1;
  }
  auto state_now = [&](int step) {
    DistillState st;
    st.step = step;
    st.fingerprint = o.fingerprint;
    st.steps = result.steps;
    for (size_t i = 0; i < f_layers.size(); ++i) {
      TrainedIndexer p{.layer = f_layers[i]}, m{.layer = f_layers[i]}, v{.layer = f_layers[i]};
      const auto params = students[i].all();
      const auto pd = fields(p), md = fields(m), vd = fields(v);
      for (size_t t = 0; t < params.size(); ++t) {
        *pd[t] = *params[t];
        *md[t] = moments[i][t].m;
        *vd[t] = moments[i][t].v;
      }
      st.indexers.push_back(std::move(p));
      st.first_moments.push_back(std::move(m));
      st.second_moments.push_back(std::move(v));
    }
    return st;
  };
  const RopeTable rope = make_rope_table(s, longest);
  Session teacher(model, IndexPlan::full(s.num_layers), backend);

  for (int step = first_step; step <= o.steps; ++step) {
    const int wi = (step - 1) % static_cast<int>(windows.size());
    const std::vector<int32_t>& ids = windows[wi];
    const bool sparse = o.stage == DistillStage::kSparse || (o.stage == DistillStage::kBoth && step > o.steps / 2);
    distill::TeacherCapture cap(s.num_layers);
    teacher.reset();
    ForwardOptions fo;
    fo.logits = LogitsWanted::kNone;
    fo.observer = &cap;
    teacher.forward(ids, fo);
    const int T = static_cast<int>(ids.size());

    DistillStep st{.step = step, .window = wi, .sparse = sparse};
    std::vector<distill::GroupLoss> losses;
    double norm2 = 0;
    for (size_t i = 0; i < f_layers.size(); ++i) {
      const int l = f_layers[i];
      int end = l + 1;
      if (o.target == DistillTarget::kMulti)
        while (end < s.num_layers && !plan.is_full(end)) ++end;
      std::vector<const distill::TeacherLayer*> served;
      for (int j = l; j < end; ++j) served.push_back(&cap.layers[j]);
      losses.push_back(distill::indexer_group_loss(s, rope, students[i], cap.layers[l], served, T,
                                                   sparse ? distill::Stage::kSparse : distill::Stage::kDense,
                                                   o.query_block));
      st.loss += losses.back().loss;
      for (const auto* g : losses.back().grad.all())
        for (float x : *g) norm2 += static_cast<double>(x) * x;
    }
    st.grad_norm = std::sqrt(norm2);
    if (!std::isfinite(st.loss) || !std::isfinite(st.grad_norm))
      throw_runtime("distill", "non-finite loss or gradient at step " + std::to_string(step));
    const double clip = o.clip > 0 && st.grad_norm > o.clip ? o.clip / st.grad_norm : 1.0;
    const double bc1 = 1 - std::pow(o.beta1, step), bc2 = 1 - std::pow(o.beta2, step);
    for (size_t i = 0; i < f_layers.size(); ++i) {
      auto params = students[i].all();
      auto grads = losses[i].grad.all();
      for (size_t t = 0; t < params.size(); ++t) {
        std::vector<float>& p = *params[t];
        const std::vector<float>& g = *grads[t];
        Moments& mo = moments[i][t];
        for (size_t j = 0; j < p.size(); ++j) {
          const double gj = g[j] * clip;
          mo.m[j] = static_cast<float>(o.beta1 * mo.m[j] + (1 - o.beta1) * gj);
          mo.v[j] = static_cast<float>(o.beta2 * mo.v[j] + (1 - o.beta2) * gj * gj);
          const double update = (mo.m[j] / bc1) / (std::sqrt(mo.v[j] / bc2) + o.eps);
          p[j] = static_cast<float>(p[j] - o.lr * (update + o.weight_decay * p[j]));
        }
      }
    }
    result.steps.push_back(st);
    if (on_step) on_step(st);
    if (o.on_state && o.state_every > 0 && (step % o.state_every == 0 || step == o.steps)) o.on_state(state_now(step));
  }
  for (size_t i = 0; i < f_layers.size(); ++i) {
    IndexerParams& t = students[i];
    result.indexers.push_back({.layer = f_layers[i], .wq_b = std::move(t.wq_b), .wk = std::move(t.wk),
                               .k_norm_w = std::move(t.k_norm_w), .k_norm_b = std::move(t.k_norm_b),
                               .weights_proj = std::move(t.weights_proj)});
  }
  return result;
}

void write_distilled_checkpoint(const Model& model, const IndexPlan& plan, const DistillResult& result,
                                const std::string& out_dir) {
  const ModelSpec& s = model.spec();
  const WeightStore& store = model.weights().store;
  if (model.dir().empty() || store.files().empty())
    throw_bad_input("distill", "the model has no checkpoint on disk to write from");
  std::error_code ec;
  if (std::filesystem::equivalent(model.dir(), out_dir, ec))
    throw_bad_input("--out", "is the input model's directory");
  // The trained tensors by name, converted to the dtype they had (f32 / bf16 / f16; FP8 -> bf16).
  std::map<std::string, std::pair<const std::vector<float>*, std::vector<int64_t>>> trained;
  const int64_t hi = s.index_n_heads, di = s.index_head_dim, H = s.hidden_size, qlr = s.q_lora_rank;
  for (const TrainedIndexer& t : result.indexers) {
    const std::string p = indexer_prefix(t.layer);
    trained[p + kTensorNames[0]] = {&t.wq_b, {hi * di, qlr}};
    trained[p + kTensorNames[1]] = {&t.wk, {di, H}};
    trained[p + kTensorNames[2]] = {&t.k_norm_w, {di}};
    trained[p + kTensorNames[3]] = {&t.k_norm_b, {di}};
    trained[p + kTensorNames[4]] = {&t.weights_proj, {hi, H}};
  }
  std::vector<std::vector<std::byte>> owned;
  std::vector<TensorToWrite> out;
  size_t written_trained = 0;
  for (const std::string& name : store.names()) {
    const std::optional<int> layer = tensor_layer_index(name);
    const bool indexer = layer && *layer < s.num_layers && name.rfind(indexer_prefix(*layer), 0) == 0;
    if (indexer && !plan.is_full(*layer)) continue;  // S layers ship no indexer
    const WeightStore::Entry e = store.find(name);
    if (indexer) {
      const std::string base = name.size() > 10 && name.ends_with("_scale_inv") ? name.substr(0, name.size() - 10) : name;
      if (base != name && trained.count(base)) continue;  // the trained tensor is written unquantised
      if (auto it = trained.find(name); it != trained.end()) {
        const std::vector<float>& v = *it->second.first;
        DType dt = e.info->dtype;
        if (dt != DType::kF32 && dt != DType::kBF16 && dt != DType::kF16) dt = DType::kBF16;
        owned.push_back(from_f32(dt, v));
        out.push_back({name, dt, it->second.second, owned.back()});
        ++written_trained;
        continue;
      }
    }
    out.push_back({name, e.info->dtype, e.info->shape, {e.file->data(*e.info), e.info->nbytes}});
  }
  if (written_trained != trained.size())
    throw_bad_input("distill", "the checkpoint lacks some trained indexer tensors");
  report::ensure_dir(out_dir);
  write_safetensors(out_dir + "/model.safetensors", out, {{"format", "pt"}});
  report::write_file(out_dir + "/config.json",
                     report::export_config(read_regular_file(model.dir() + "/config.json"), plan,
                                           model.dir() + "/config.json"));
  for (const char* extra : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    const std::string src = model.dir() + "/" + extra;
    if (std::filesystem::is_regular_file(src, ec)) report::write_file(out_dir + "/" + extra, read_regular_file(src));
  }
}

std::string distill_curve_svg(const DistillResult& result, const std::string& title) {
  svg::LineChart c;
  c.title = title;
  c.x_label = "step";
  c.y_label = "loss (summed over F layers, per token)";
  svg::Series dense{.name = "dense", .colour = "#1f77b4"};
  svg::Series sparse{.name = "sparse", .colour = "#d62728", .marker = "square"};
  for (const DistillStep& s : result.steps)
    (s.sparse ? sparse : dense).points.push_back({.x = static_cast<double>(s.step), .y = s.loss});
  for (svg::Series* s : {&dense, &sparse})
    if (!s->points.empty()) c.series.push_back(std::move(*s));
  return svg::line_chart(c);
}

}  // namespace indexcache
