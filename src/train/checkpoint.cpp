#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "tensor/safetensors.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json_file.h"

namespace fs = std::filesystem;

namespace scratchlm {
namespace {

std::string step_name(std::int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%06" PRId64, step);
  return buf;
}

// step_* directories under `dir`, oldest first.
std::vector<fs::path> checkpoint_dirs(const std::string& dir) {
  std::vector<std::pair<std::int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("step_", 0) != 0) continue;
    try {
      std::size_t used = 0;
      const std::int64_t step = std::stoll(name.substr(5), &used);
      if (used == name.size() - 5) found.emplace_back(step, e.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [step, p] : found) out.push_back(p);
  return out;
}

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

}  // namespace

std::string save_checkpoint(const std::string& checkpoints_dir, Model& model, const AdamWState& adam,
                            const TrainState& state, const nlohmann::ordered_json& run_config) {
  make_directories(checkpoints_dir);
  const fs::path final_dir = fs::path(checkpoints_dir) / step_name(state.step);
  const fs::path tmp_dir = fs::path(checkpoints_dir) / str(".", step_name(state.step), ".tmp-", ::getpid());
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);
  make_directories(tmp_dir.string());

  SafetensorsWriter weights;
  weights.set_metadata("format", "pt");
  weights.set_metadata("model_config", to_json(model.config).dump());
  for (const ParamSpec& s : model.layout.specs) weights.add_f32(s.name, s.shape, model.params.data() + s.offset);
  weights.write((tmp_dir / "model.safetensors").string());

  SafetensorsWriter opt;
  for (const ParamSpec& s : model.layout.specs) {
    opt.add_f32("m." + s.name, s.shape, adam.m.data() + s.offset);
    opt.add_f32("v." + s.name, s.shape, adam.v.data() + s.offset);
  }
  opt.write((tmp_dir / "optimizer.safetensors").string());

  nlohmann::ordered_json j;
  j["format"] = "scratchlm-checkpoint";
  j["version"] = 1;
  j["step"] = state.step;
  j["adam_step"] = adam.step;
  j["data_rng"] = {hex(state.data_rng[0]), hex(state.data_rng[1]), hex(state.data_rng[2]), hex(state.data_rng[3])};
  j["tokens_seen"] = state.tokens_seen;
  j["elapsed_s"] = state.elapsed_s;
  j["model"] = to_json(model.config);
  j["run"] = run_config;
  write_file_atomic((tmp_dir / "state.json").string(), j.dump(1) + "\n");

  fs::remove_all(final_dir, ec);   // a checkpoint of the same step from an earlier, resumed segment
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) fail(final_dir.string(), ": cannot move the finished checkpoint into place: ", ec.message());
  return final_dir.string();
}

void prune_checkpoints(const std::string& checkpoints_dir, std::int64_t keep) {
  if (keep <= 0) return;
  auto dirs = checkpoint_dirs(checkpoints_dir);
  std::error_code ec;
  for (std::size_t i = 0; i + static_cast<std::size_t>(keep) < dirs.size(); ++i) fs::remove_all(dirs[i], ec);
}

std::string resolve_checkpoint(const std::string& path) {
  if (!fs::exists(path)) fail(path, ": no such checkpoint or run directory");
  if (fs::exists(fs::path(path) / "model.safetensors")) return path;
  const auto dirs = checkpoint_dirs((fs::path(path) / "checkpoints").string());
  if (dirs.empty()) fail(path, ": holds no model.safetensors and no checkpoints/step_* directory");
  return dirs.back().string();
}

ModelConfig read_checkpoint_model_config(const std::string& dir) {
  const std::string state_path = (fs::path(dir) / "state.json").string();
  if (fs::exists(state_path)) {
    const nlohmann::json j = read_json_file(state_path);
    if (!j.contains("model")) fail(state_path, ": has no \"model\" config");
    return model_config_from_json(j["model"], state_path);
  }
  const std::string weights = (fs::path(dir) / "model.safetensors").string();
  const SafetensorsFile f(weights);
  auto it = f.metadata().find("model_config");
  if (it == f.metadata().end()) fail(weights, ": no state.json beside it and no model_config in its metadata");
  try {
    return model_config_from_json(nlohmann::json::parse(it->second), weights);
  } catch (const nlohmann::json::exception& e) {
    fail(weights, ": malformed model_config metadata: ", e.what());
  }
}

void load_checkpoint_weights(const std::string& dir, Model& model) {
  const ModelConfig saved = read_checkpoint_model_config(dir);
  if (!(saved == model.config)) {
    const auto a = to_json(saved), b = to_json(model.config);
    for (const auto& [key, value] : a.items())
      if (b[key] != value)
        fail(dir, ": checkpoint was written for a different model: ", key, " is ", value.dump(), " there, ",
             b[key].dump(), " here");
  }
  const SafetensorsFile f((fs::path(dir) / "model.safetensors").string());
  for (const ParamSpec& s : model.layout.specs) f.read_f32(s.name, s.shape, model.params.data() + s.offset);
}

ResumeInfo read_checkpoint_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / "state.json").string();
  const nlohmann::json j = read_json_file(path);
  ResumeInfo r;
  try {
    if (j.at("format") != "scratchlm-checkpoint") fail(path, ": not a scratchlm checkpoint state");
    r.state.step = j.at("step").get<std::int64_t>();
    r.adam_step = j.at("adam_step").get<std::int64_t>();
    const auto words = j.at("data_rng").get<std::vector<std::string>>();
    if (words.size() != 4) fail(path, ": \"data_rng\" must have four words");
    for (int i = 0; i < 4; ++i) r.state.data_rng[i] = std::stoull(words[i], nullptr, 16);
    r.state.tokens_seen = j.at("tokens_seen").get<std::int64_t>();
    r.state.elapsed_s = j.at("elapsed_s").get<double>();
    r.run_config = j.at("run");
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": malformed checkpoint state: ", e.what());
  } catch (const std::invalid_argument&) {
    fail(path, ": malformed \"data_rng\"");
  }
  return r;
}

void load_checkpoint_optimizer(const std::string& dir, const ParamLayout& layout, AdamWState& adam) {
  const SafetensorsFile f((fs::path(dir) / "optimizer.safetensors").string());
  for (const ParamSpec& s : layout.specs) {
    f.read_f32("m." + s.name, s.shape, adam.m.data() + s.offset);
    f.read_f32("v." + s.name, s.shape, adam.v.data() + s.offset);
  }
}

}  // namespace scratchlm
