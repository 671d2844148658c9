#include "train/train_config.h"

#include <algorithm>

#include "tensor/device.h"
#include "util/error.h"

namespace scratchlm {

const std::vector<TrainField>& train_fields() {
  static const std::vector<TrainField> fields = {
      {"model.vocab_size", "vocabulary size (the tokenizer's)"},
      {"model.context_length", "tokens per training sequence (and the longest generation)"},
      {"model.d_model", "width of the residual stream"},
      {"model.num_layers", "number of Transformer blocks"},
      {"model.num_heads", "attention heads (d_model must be divisible by it)"},
      {"model.d_ff", "hidden width of the feed-forward (default: model.d_ff_ratio, else 8/3·d_model, 4·d_model for mlp, rounded up to 64)"},
      {"model.rope_theta", "RoPE base"},
      {"model.ffn", "feed-forward: swiglu (default), geglu, reglu, or mlp (no gate; see model.activation)"},
      {"model.activation", "the mlp feed-forward's activation: gelu (default), relu, silu, relu2"},
      {"model.position", "position signal: rope (default), none (NoPE), sinusoidal or learned (absolute, added to the embedding)"},
      {"model.tie_embeddings", "use the token embedding as the LM head (true/false)"},
      {"model.z_loss", "coefficient of the z-loss c·log²Z on the final softmax (0 = off)"},
      {"model.logit_softcap", "soft-cap the final logits at c·tanh(z/c) (0 = off)"},
      {"model.qk_norm", "RMSNorm on each head's queries and keys (true/false)"},
      {"model.block", "block wiring: serial (default) or parallel (attention and feed-forward on one norm)"},
      {"model.num_kv_heads", "key/value heads (default num_heads; grouped-query attention, 1 = multi-query)"},
      {"model.head_dim", "size of each attention head (default d_model / num_heads)"},
      {"model.attention_window", "sliding window W: position p sees keys p-W < j <= p (0 = full causal)"},
      {"model.full_attention_every", "with a window: layers l with (l+1) % k == 0 attend fully"},
      {"model.full_attention_position", "the full layers' position signal: rope (default) or none (NoPE)"},
      {"model.attn_softcap", "soft-cap the attention scores at c·tanh(s/c) (0 = off)"},
      {"model.dropout", "residual dropout probability (embedding and sublayer outputs; training only)"},
      {"model.attention_dropout", "dropout probability on the attention probabilities (training only)"},
      {"model.norm", "the norms: rmsnorm (default), layernorm, or none (no ln1, ln2, ln_final)"},
      {"model.norm_bias", "layernorm only: a bias in each norm (true, the default, or false)"},
      {"model.norm_placement", "norms around the sublayers: pre (default), post, or double (pre and post)"},
      {"model.d_ff_ratio", "d_ff = 64·ceil(ratio·d_model/64), instead of model.d_ff"},
      {"model.bias", "biases on the blocks' Linears (true/false)"},
      {"model.moe", "mixture of experts, a JSON object: {\"num_experts\": E, \"top_k\": k, \"num_shared\": 0, \"d_ff_expert\": d_ff, \"aux_loss\": 0.01, \"capacity_factor\": 0}"},
      {"train_data", "token file to train on (uint16/uint32, from `scratchlm tokenize`)"},
      {"valid_data", "token file for validation loss (\"\" for none)"},
      {"batch_size", "sequences per micro-batch"},
      {"grad_accum", "micro-batches per optimizer step"},
      {"steps", "optimizer steps"},
      {"seed", "seed of initialisation and batch sampling"},
      {"threads", "CPU threads (0 = OMP_NUM_THREADS if set, else all cores)"},
      {"optimizer.lr_max", "peak learning rate"},
      {"optimizer.lr_min", "final learning rate of the cosine schedule"},
      {"optimizer.warmup", "linear warmup steps"},
      {"optimizer.cycle", "step where the cosine reaches lr_min (0 = steps)"},
      {"optimizer.beta1", "AdamW beta1"},
      {"optimizer.beta2", "AdamW beta2"},
      {"optimizer.eps", "AdamW epsilon"},
      {"optimizer.weight_decay", "AdamW decoupled weight decay"},
      {"optimizer.decay_norm_gains", "apply weight decay to the norm gains and biases too (CS336 does)"},
      {"optimizer.clip", "global gradient-norm clipping threshold (0 = off)"},
      {"eval.interval", "steps between validation evaluations (0 = only at the end)"},
      {"eval.batches", "validation batches per evaluation (fixed windows of the file)"},
      {"checkpoint.interval", "steps between checkpoints (0 = only at the end)"},
      {"checkpoint.keep", "checkpoints kept, newest first (0 = all)"},
      {"log_interval", "steps between progress lines and metrics records"},
      {"out_dir", "run directory: config, metrics.jsonl, checkpoints/"},
      {"peak_flops", "peak FLOP/s for MFU (0 = the CPU's measured sgemm; on a GPU 989e12, dense bf16 of an H100/H200)"},
      {"device", "\"cuda\" (GPU 0), \"cpu\", or \"auto\": cuda when a GPU is present"},
      {"precision", "on the GPU: \"bf16\" (mixed precision) or \"fp32\"; the CPU is always fp32"},
      {"recompute", "on the GPU: keep no feed-forward activations, recompute them in backward (less memory, ~8% more FLOPs)"},
  };
  return fields;
}

nlohmann::ordered_json train_defaults() {
  return {{"valid_data", ""},
          {"batch_size", 32},
          {"grad_accum", 1},
          {"steps", 1000},
          {"seed", 0},
          {"threads", 0},
          {"optimizer",
           {{"lr_max", 1e-3},
            {"lr_min", 1e-4},
            {"warmup", 100},
            {"cycle", 0},
            {"beta1", 0.9},
            {"beta2", 0.95},
            {"eps", 1e-8},
            {"weight_decay", 0.1},
            {"decay_norm_gains", true},
            {"clip", 1.0}}},
          {"eval", {{"interval", 100}, {"batches", 10}}},
          {"checkpoint", {{"interval", 500}, {"keep", 3}}},
          {"log_interval", 10},
          {"out_dir", "runs/train"},
          {"peak_flops", 0.0},
          {"device", "auto"},
          {"precision", "bf16"},
          {"recompute", false}};
}

namespace {

bool known_field(const std::string& name) {
  for (const TrainField& f : train_fields())
    if (f.name == name) return true;
  return false;
}

bool is_section(const std::string& name) { return name == "model" || name == "optimizer" || name == "eval" || name == "checkpoint"; }

}  // namespace

void merge_train_json(nlohmann::ordered_json& base, const nlohmann::json& overlay, const std::string& where) {
  if (!overlay.is_object()) fail(where, ": the run config must be a JSON object");
  for (const auto& [key, value] : overlay.items()) {
    if (is_section(key)) {
      if (!value.is_object()) fail(where, ": field \"", key, "\" must be an object");
      for (const auto& [sub, v] : value.items()) {
        const std::string name = key + "." + sub;
        if (!known_field(name)) fail(where, ": unknown field \"", name, "\"");
        base[key][sub] = v;
      }
      // d_ff and d_ff_ratio say the same thing: a layer setting one replaces the other of the layers
      // below (both in one layer is an error, found when the model config is read).
      if (key == "model" && base.contains("model"))
        for (const auto& [set, other] : {std::pair{"d_ff", "d_ff_ratio"}, std::pair{"d_ff_ratio", "d_ff"}})
          if (value.contains(set) && !value.contains(other)) base["model"].erase(other);
    } else {
      if (!known_field(key)) fail(where, ": unknown field \"", key, "\"");
      base[key] = value;
    }
  }
}

nlohmann::json parse_flag_value(const std::string& field, const std::string& text) {
  const bool is_text = field == "train_data" || field == "valid_data" || field == "out_dir" || field == "device" ||
                       field == "precision" || field == "model.ffn" || field == "model.activation" || field == "model.position" || field == "model.block" ||
                       field == "model.full_attention_position" || field == "model.norm" || field == "model.norm_placement";
  if (is_text) return text;
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    fail("--", field, ": cannot read \"", text, "\" as a number or true/false");
  }
}

namespace {

const nlohmann::ordered_json& field(const nlohmann::ordered_json& j, const std::string& name) {
  const auto dot = name.find('.');
  const nlohmann::ordered_json* v = &j;
  if (dot != std::string::npos) {
    if (!j.contains(name.substr(0, dot))) fail("run config: field \"", name, "\" is missing");
    v = &j.at(name.substr(0, dot));
  }
  const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
  if (!v->contains(leaf)) fail("run config: field \"", name, "\" is missing");
  return v->at(leaf);
}

std::int64_t get_int(const nlohmann::ordered_json& j, const std::string& name, std::int64_t min) {
  const auto& v = field(j, name);
  if (!v.is_number_integer()) fail("run config: field \"", name, "\" must be an integer, got ", v.dump());
  const auto x = v.get<std::int64_t>();
  if (x < min) fail("run config: field \"", name, "\" must be at least ", min, ", got ", x);
  return x;
}

double get_double(const nlohmann::ordered_json& j, const std::string& name, double min) {
  const auto& v = field(j, name);
  if (!v.is_number()) fail("run config: field \"", name, "\" must be a number, got ", v.dump());
  const double x = v.get<double>();
  if (!(x >= min)) fail("run config: field \"", name, "\" must be at least ", min, ", got ", x);
  return x;
}

std::string get_string(const nlohmann::ordered_json& j, const std::string& name) {
  const auto& v = field(j, name);
  if (!v.is_string()) fail("run config: field \"", name, "\" must be a string, got ", v.dump());
  return v.get<std::string>();
}

}  // namespace

TrainConfig train_config_from_json(const nlohmann::ordered_json& j) {
  TrainConfig c;
  if (!j.contains("model")) fail("run config: the \"model\" object is missing");
  c.model = model_config_from_json(j.at("model"), "run config");
  c.train_data = get_string(j, "train_data");
  if (c.train_data.empty()) fail("run config: field \"train_data\" is empty");
  c.valid_data = get_string(j, "valid_data");
  c.batch_size = get_int(j, "batch_size", 1);
  c.grad_accum = get_int(j, "grad_accum", 1);
  c.steps = get_int(j, "steps", 1);
  c.seed = static_cast<std::uint64_t>(get_int(j, "seed", 0));
  c.threads = static_cast<int>(get_int(j, "threads", 0));
  c.lr_max = get_double(j, "optimizer.lr_max", 0.0);
  c.lr_min = get_double(j, "optimizer.lr_min", 0.0);
  c.warmup = get_int(j, "optimizer.warmup", 0);
  c.cycle = get_int(j, "optimizer.cycle", 0);
  if (c.cycle == 0) c.cycle = std::max(c.steps, c.warmup);
  if (c.cycle < c.warmup)
    fail("run config: field \"optimizer.cycle\" (", c.cycle, ") must not be less than \"optimizer.warmup\" (", c.warmup, ")");
  c.adamw.beta1 = get_double(j, "optimizer.beta1", 0.0);
  c.adamw.beta2 = get_double(j, "optimizer.beta2", 0.0);
  if (c.adamw.beta1 >= 1.0) fail("run config: field \"optimizer.beta1\" must be below 1");
  if (c.adamw.beta2 >= 1.0) fail("run config: field \"optimizer.beta2\" must be below 1");
  c.adamw.eps = get_double(j, "optimizer.eps", 0.0);
  c.adamw.weight_decay = get_double(j, "optimizer.weight_decay", 0.0);
  const auto& decay = field(j, "optimizer.decay_norm_gains");
  if (!decay.is_boolean()) fail("run config: field \"optimizer.decay_norm_gains\" must be true or false");
  c.adamw.decay_norm_gains = decay.get<bool>();
  c.clip = get_double(j, "optimizer.clip", 0.0);
  c.eval_interval = get_int(j, "eval.interval", 0);
  c.eval_batches = get_int(j, "eval.batches", 1);
  c.checkpoint_interval = get_int(j, "checkpoint.interval", 0);
  c.checkpoint_keep = get_int(j, "checkpoint.keep", 0);
  c.log_interval = get_int(j, "log_interval", 1);
  c.out_dir = get_string(j, "out_dir");
  if (c.out_dir.empty()) fail("run config: field \"out_dir\" is empty");
  c.peak_flops = get_double(j, "peak_flops", 0.0);
  const std::string device = get_string(j, "device");
  if (device == "auto")   // the GPU where there is one and it implements the model (the CPU implements all)
    c.device = cuda_device_count() > 0 && gpu_unsupported_fields(c.model).empty() ? TrainDevice::cuda : TrainDevice::cpu;
  else if (device == "cuda") c.device = TrainDevice::cuda;
  else if (device == "cpu") c.device = TrainDevice::cpu;
  else fail("run config: field \"device\" must be \"auto\", \"cuda\" or \"cpu\", got \"", device, "\"");
  if (c.device == TrainDevice::cuda && cuda_device_count() == 0)
    fail("run config: device \"cuda\": ", cuda_compiled() ? "no GPU is visible to this machine" : "this build has no CUDA",
         "; use --device cpu");
  const std::string precision = get_string(j, "precision");
  if (precision != "bf16" && precision != "fp32")
    fail("run config: field \"precision\" must be \"bf16\" or \"fp32\", got \"", precision, "\"");
  c.bf16 = precision == "bf16";
  const auto& recompute = field(j, "recompute");
  if (!recompute.is_boolean()) fail("run config: field \"recompute\" must be true or false");
  c.recompute = recompute.get<bool>();
  c.json = j;
  c.json["device"] = c.device == TrainDevice::cuda ? "cuda" : "cpu";   // resolved, as used
  if (c.device == TrainDevice::cpu) c.json["precision"] = "fp32";
  c.json["optimizer"]["cycle"] = c.cycle;   // resolved, as used
  c.json["model"] = to_json(c.model);        // resolved: d_ff, the MoE's defaults
  return c;
}

}  // namespace scratchlm
