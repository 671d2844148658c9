#include "model/config.h"

#include <cmath>

#include "util/error.h"

namespace scratchlm {
namespace {

std::int64_t get_int(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) fail(where, ": model field \"", key, "\" is missing");
  const auto& v = j.at(key);
  if (!v.is_number_integer()) fail(where, ": model field \"", key, "\" must be an integer, got ", v.dump());
  return v.get<std::int64_t>();
}

// 64·ceil(x/64), x evaluated by the caller left to right in double (as the Python reference does).
std::int64_t round_up_64(double x, const std::string& where, const char* field) {
  const double units = std::ceil(x / 64.0);
  if (!(units >= 1 && units < 1e12)) fail(where, ": model field \"", field, "\" gives an impossible d_ff (", 64 * units, ")");
  return 64 * static_cast<std::int64_t>(units);
}

// The "moe" object: every key known, num_experts and top_k required; d_ff_expert defaults to d_ff.
MoeConfig moe_from_json(const nlohmann::json& j, std::int64_t d_ff, const std::string& where) {
  if (!j.is_object()) fail(where, ": model field \"moe\" must be an object, got ", j.dump());
  static const char* known[] = {"num_experts", "top_k", "num_shared", "d_ff_expert", "aux_loss", "capacity_factor"};
  for (const auto& [key, value] : j.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || key == k;
    if (!ok) fail(where, ": unknown field \"moe.", key, "\" (known: num_experts, top_k, num_shared, d_ff_expert, "
                  "aux_loss, capacity_factor)");
  }
  auto integer = [&](const char* key, std::int64_t fallback) {
    if (!j.contains(key)) {
      if (fallback < 0) fail(where, ": model field \"moe.", key, "\" is missing");
      return fallback;
    }
    if (!j[key].is_number_integer()) fail(where, ": model field \"moe.", key, "\" must be an integer, got ", j[key].dump());
    return j[key].get<std::int64_t>();
  };
  auto number = [&](const char* key, double fallback) {
    if (!j.contains(key)) return fallback;
    if (!j[key].is_number()) fail(where, ": model field \"moe.", key, "\" must be a number, got ", j[key].dump());
    return j[key].get<double>();
  };
  MoeConfig m;
  m.num_experts = integer("num_experts", -1);
  if (m.num_experts < 1) fail(where, ": model field \"moe.num_experts\" must be at least 1, got ", m.num_experts);
  m.top_k = integer("top_k", -1);
  m.num_shared = integer("num_shared", 0);
  m.d_ff_expert = integer("d_ff_expert", d_ff);
  m.aux_loss = number("aux_loss", m.aux_loss);
  m.capacity_factor = number("capacity_factor", m.capacity_factor);
  return m;
}

}  // namespace

const char* norm_name(Norm n) {
  switch (n) {
    case Norm::rmsnorm: return "rmsnorm";
    case Norm::layernorm: return "layernorm";
    case Norm::none: return "none";
  }
  return "?";
}

const char* norm_placement_name(NormPlacement p) {
  switch (p) {
    case NormPlacement::pre: return "pre";
    case NormPlacement::post: return "post";
    case NormPlacement::pre_and_post: return "double";
  }
  return "?";
}

const char* ffn_name(FfnKind f) {
  switch (f) {
    case FfnKind::swiglu: return "swiglu";
    case FfnKind::geglu: return "geglu";
    case FfnKind::reglu: return "reglu";
    case FfnKind::mlp: return "mlp";
  }
  return "?";
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::relu: return "relu";
    case Activation::gelu: return "gelu";
    case Activation::silu: return "silu";
    case Activation::relu2: return "relu2";
  }
  return "?";
}

const char* position_name(Position p) {
  switch (p) {
    case Position::rope: return "rope";
    case Position::none: return "none";
    case Position::sinusoidal: return "sinusoidal";
    case Position::learned: return "learned";
  }
  return "?";
}

ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": the model config must be a JSON object");
  static const char* known[] = {"vocab_size", "context_length", "d_model", "num_layers", "num_heads",
                                "d_ff",       "rope_theta",     "ffn",     "activation", "position",
                                "tie_embeddings", "z_loss", "logit_softcap", "qk_norm", "block",
                                "num_kv_heads", "head_dim", "attention_window", "full_attention_every",
                                "full_attention_position", "attn_softcap", "dropout", "attention_dropout",
                                "norm", "norm_bias", "norm_placement", "d_ff_ratio", "bias", "moe"};
  for (const auto& [key, value] : j.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || key == k;
    if (!ok) fail(where, ": unknown model field \"", key, "\"");
  }
  ModelConfig c;
  c.vocab_size = get_int(j, "vocab_size", where);
  c.context_length = get_int(j, "context_length", where);
  c.d_model = get_int(j, "d_model", where);
  c.num_layers = get_int(j, "num_layers", where);
  c.num_heads = get_int(j, "num_heads", where);
  if (j.contains("rope_theta")) {
    if (!j["rope_theta"].is_number()) fail(where, ": model field \"rope_theta\" must be a number");
    c.rope_theta = j["rope_theta"].get<double>();
  }
  auto get_name = [&](const char* key) {
    if (!j[key].is_string()) fail(where, ": model field \"", key, "\" must be a string, got ", j[key].dump());
    return j[key].get<std::string>();
  };
  if (j.contains("ffn")) {
    const std::string f = get_name("ffn");
    bool found = false;
    for (FfnKind k : {FfnKind::swiglu, FfnKind::geglu, FfnKind::reglu, FfnKind::mlp})
      if (f == ffn_name(k)) c.ffn = k, found = true;
    if (!found) fail(where, ": model field \"ffn\" must be \"swiglu\", \"geglu\", \"reglu\" or \"mlp\", got \"", f, "\"");
  }
  c.activation = c.ffn == FfnKind::swiglu ? Activation::silu
                 : c.ffn == FfnKind::geglu ? Activation::gelu
                 : c.ffn == FfnKind::reglu ? Activation::relu
                                           : Activation::gelu;
  if (j.contains("activation")) {
    if (c.ffn != FfnKind::mlp)
      fail(where, ": model field \"activation\" applies to \"ffn\": \"mlp\" only (", ffn_name(c.ffn),
           " fixes its own)");
    const std::string a = get_name("activation");
    bool found = false;
    for (Activation k : {Activation::relu, Activation::gelu, Activation::silu, Activation::relu2})
      if (a == activation_name(k)) c.activation = k, found = true;
    if (!found)
      fail(where, ": model field \"activation\" must be \"relu\", \"gelu\", \"silu\" or \"relu2\", got \"", a, "\"");
  }
  // d_ff: given, from d_ff_ratio, or the default ratio of the feed-forward kind (8/3 gated, 4 plain)
  if (j.contains("d_ff") && j.contains("d_ff_ratio"))
    fail(where, ": model fields \"d_ff\" and \"d_ff_ratio\" are both given; give one");
  if (j.contains("d_ff")) {
    c.d_ff = get_int(j, "d_ff", where);
  } else if (j.contains("d_ff_ratio")) {
    const auto& r = j["d_ff_ratio"];
    if (!r.is_number() || !(r.get<double>() > 0))
      fail(where, ": model field \"d_ff_ratio\" must be a number above 0, got ", r.dump());
    if (c.d_model > 0) c.d_ff = round_up_64(r.get<double>() * static_cast<double>(c.d_model), where, "d_ff_ratio");
  } else if (c.d_model > 0) {
    const double C = static_cast<double>(c.d_model);
    c.d_ff = c.gated() ? round_up_64(8.0 / 3.0 * C, where, "d_model") : round_up_64(4.0 * C, where, "d_model");
  }
  auto get_position = [&](const char* key, std::initializer_list<Position> allowed, const char* choices) {
    const std::string pos = get_name(key);
    for (Position k : allowed)
      if (pos == position_name(k)) return k;
    fail(where, ": model field \"", key, "\" must be ", choices, ", got \"", pos, "\"");
  };
  if (j.contains("position"))
    c.position = get_position("position", {Position::rope, Position::none, Position::sinusoidal, Position::learned},
                              "\"rope\", \"none\", \"sinusoidal\" or \"learned\"");
  if (j.contains("block")) {
    const std::string b = get_name("block");
    if (b != "serial" && b != "parallel")
      fail(where, ": model field \"block\" must be \"serial\" or \"parallel\", got \"", b, "\"");
    c.parallel_block = b == "parallel";
  }
  if (j.contains("norm")) {
    const std::string n = get_name("norm");
    bool found = false;
    for (Norm k : {Norm::rmsnorm, Norm::layernorm, Norm::none})
      if (n == norm_name(k)) c.norm = k, found = true;
    if (!found) fail(where, ": model field \"norm\" must be \"rmsnorm\", \"layernorm\" or \"none\", got \"", n, "\"");
  }
  if (j.contains("norm_placement")) {
    const std::string p = get_name("norm_placement");
    bool found = false;
    for (NormPlacement k : {NormPlacement::pre, NormPlacement::post, NormPlacement::pre_and_post})
      if (p == norm_placement_name(k)) c.norm_placement = k, found = true;
    if (!found)
      fail(where, ": model field \"norm_placement\" must be \"pre\", \"post\" or \"double\", got \"", p, "\"");
  }
  if (j.contains("norm_bias") && c.norm != Norm::layernorm)
    fail(where, ": model field \"norm_bias\" applies to \"norm\": \"layernorm\" only (this model's norm is ",
         norm_name(c.norm), ")");
  if (j.contains("moe")) c.moe = moe_from_json(j["moe"], c.d_ff, where);
  for (auto [key, value] : {std::pair{"tie_embeddings", &c.tie_embeddings}, std::pair{"qk_norm", &c.qk_norm},
                            std::pair{"norm_bias", &c.norm_bias}, std::pair{"bias", &c.bias}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_boolean()) fail(where, ": model field \"", key, "\" must be true or false");
    *value = j[key].get<bool>();
  }
  // Attention fields. Given at their default value, num_kv_heads and head_dim are stored as 0 (the
  // default), so that a config spelling the default out equals one leaving it out.
  auto get_optional_int = [&](const char* key, std::int64_t min) -> std::int64_t {
    if (!j.contains(key)) return 0;
    const std::int64_t v = get_int(j, key, where);
    if (v < min) fail(where, ": model field \"", key, "\" must be at least ", min, ", got ", v);
    return v;
  };
  c.num_kv_heads = get_optional_int("num_kv_heads", 1);
  if (c.num_kv_heads == c.num_heads) c.num_kv_heads = 0;
  c.head_dim = get_optional_int("head_dim", 1);
  if (c.num_heads > 0 && c.d_model % c.num_heads == 0 && c.head_dim == c.d_model / c.num_heads) c.head_dim = 0;
  c.attention_window = get_optional_int("attention_window", 0);
  c.full_attention_every = get_optional_int("full_attention_every", 1);
  if (j.contains("full_attention_position")) {
    if (!j.contains("full_attention_every"))
      fail(where, ": model field \"full_attention_position\" needs \"full_attention_every\" (the full layers it is for)");
    c.full_attention_position = get_position("full_attention_position", {Position::rope, Position::none},
                                             "\"rope\" or \"none\"");
  }
  for (auto [key, value] : {std::pair{"z_loss", &c.z_loss}, std::pair{"logit_softcap", &c.logit_softcap},
                            std::pair{"attn_softcap", &c.attn_softcap}, std::pair{"dropout", &c.dropout},
                            std::pair{"attention_dropout", &c.attention_dropout}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_number()) fail(where, ": model field \"", key, "\" must be a number, got ", j[key].dump());
    *value = j[key].get<double>();
  }
  validate(c, where);
  return c;
}

nlohmann::ordered_json to_json(const ModelConfig& c) {
  nlohmann::ordered_json j = {{"vocab_size", c.vocab_size}, {"context_length", c.context_length},
                              {"d_model", c.d_model},       {"num_layers", c.num_layers},
                              {"num_heads", c.num_heads},   {"d_ff", c.d_ff},
                              {"rope_theta", c.rope_theta}};
  // Variant fields only where they differ from the CS336 model, so its configs read as before.
  if (c.ffn != FfnKind::swiglu) j["ffn"] = ffn_name(c.ffn);
  if (c.ffn == FfnKind::mlp) j["activation"] = activation_name(c.activation);
  if (c.position != Position::rope) j["position"] = position_name(c.position);
  if (c.tie_embeddings) j["tie_embeddings"] = true;
  if (c.z_loss != 0) j["z_loss"] = c.z_loss;
  if (c.logit_softcap != 0) j["logit_softcap"] = c.logit_softcap;
  if (c.qk_norm) j["qk_norm"] = true;
  if (c.parallel_block) j["block"] = "parallel";
  if (c.num_kv_heads != 0) j["num_kv_heads"] = c.num_kv_heads;
  if (c.head_dim != 0) j["head_dim"] = c.head_dim;
  if (c.attention_window != 0) j["attention_window"] = c.attention_window;
  if (c.full_attention_every != 0) j["full_attention_every"] = c.full_attention_every;
  if (c.full_attention_position != Position::rope) j["full_attention_position"] = position_name(c.full_attention_position);
  if (c.attn_softcap != 0) j["attn_softcap"] = c.attn_softcap;
  if (c.dropout != 0) j["dropout"] = c.dropout;
  if (c.attention_dropout != 0) j["attention_dropout"] = c.attention_dropout;
  if (c.norm != Norm::rmsnorm) j["norm"] = norm_name(c.norm);
  if (c.norm == Norm::layernorm && !c.norm_bias) j["norm_bias"] = false;
  if (c.norm_placement != NormPlacement::pre) j["norm_placement"] = norm_placement_name(c.norm_placement);
  if (c.bias) j["bias"] = true;
  if (c.is_moe())   // every field, resolved
    j["moe"] = {{"num_experts", c.moe.num_experts}, {"top_k", c.moe.top_k},
                {"num_shared", c.moe.num_shared}, {"d_ff_expert", c.moe.d_ff_expert},
                {"aux_loss", c.moe.aux_loss}, {"capacity_factor", c.moe.capacity_factor}};
  return j;
}

void validate(const ModelConfig& c, const std::string& where) {
  auto positive = [&](std::int64_t v, const char* name) {
    if (v <= 0) fail(where, ": model field \"", name, "\" must be positive, got ", v);
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.context_length, "context_length");
  positive(c.d_model, "d_model");
  positive(c.num_layers, "num_layers");
  positive(c.num_heads, "num_heads");
  positive(c.d_ff, "d_ff");
  if (c.vocab_size > (std::int64_t{1} << 31)) fail(where, ": model field \"vocab_size\" is too large");
  if (c.num_kv_heads < 0) fail(where, ": model field \"num_kv_heads\" must be positive, got ", c.num_kv_heads);
  if (c.num_heads % c.kv_heads() != 0)
    fail(where, ": model field \"num_heads\" (", c.num_heads, ") must be divisible by \"num_kv_heads\" (",
         c.kv_heads(), "): each kv head serves a group of query heads");
  if (c.head_dim < 0) fail(where, ": model field \"head_dim\" must be positive, got ", c.head_dim);
  if (c.head_dim == 0 && c.d_model % c.num_heads != 0)
    fail(where, ": model field \"d_model\" (", c.d_model, ") must be divisible by \"num_heads\" (", c.num_heads,
         ") (or set \"head_dim\")");
  if (c.position == Position::rope && c.d_head() % 2 != 0)
    fail(where, ": the head size ", c.head_dim ? "\"head_dim\"" : "d_model / num_heads", " = ", c.d_head(),
         " must be even (RoPE rotates pairs)");
  if (c.position == Position::sinusoidal && c.d_model % 2 != 0)
    fail(where, ": model field \"d_model\" (", c.d_model, ") must be even for \"position\": \"sinusoidal\" (sin, cos pairs)");
  if (c.attention_window < 0) fail(where, ": model field \"attention_window\" must be at least 1 (0 = full attention)");
  if (c.attention_window >= c.context_length)
    fail(where, ": model field \"attention_window\" (", c.attention_window, ") must be less than \"context_length\" (",
         c.context_length, "): a window covering the context is full attention — leave the field out");
  if (c.full_attention_every < 0) fail(where, ": model field \"full_attention_every\" must be at least 1");
  if (c.full_attention_every > 0 && c.attention_window == 0)
    fail(where, ": model field \"full_attention_every\" needs \"attention_window\" (the other layers' window)");
  if (c.full_attention_every > c.num_layers)
    fail(where, ": model field \"full_attention_every\" (", c.full_attention_every, ") exceeds \"num_layers\" (",
         c.num_layers, "): no layer would attend fully");
  if (c.full_attention_position != Position::rope) {
    if (c.full_attention_position != Position::none)
      fail(where, ": model field \"full_attention_position\" must be \"rope\" or \"none\"");
    if (c.full_attention_every == 0)
      fail(where, ": model field \"full_attention_position\" needs \"full_attention_every\" (the full layers it is for)");
    if (c.position != Position::rope)
      fail(where, ": model field \"full_attention_position\" needs \"position\": \"rope\" (the windowed layers keep RoPE)");
  }
  if (!(c.attn_softcap >= 0)) fail(where, ": model field \"attn_softcap\" must be at least 0 (0 = off), got ", c.attn_softcap);
  for (auto [key, p] : {std::pair{"dropout", c.dropout}, std::pair{"attention_dropout", c.attention_dropout}})
    if (!(p >= 0 && p < 1)) fail(where, ": model field \"", key, "\" must be in [0, 1), got ", p);
  if (!(c.z_loss >= 0)) fail(where, ": model field \"z_loss\" must be at least 0, got ", c.z_loss);
  if (!(c.logit_softcap >= 0)) fail(where, ": model field \"logit_softcap\" must be at least 0 (0 = off), got ", c.logit_softcap);
  if (!(c.rope_theta > 1.0)) fail(where, ": model field \"rope_theta\" must be greater than 1, got ", c.rope_theta);
  if (!c.norm_bias && c.norm != Norm::layernorm)
    fail(where, ": model field \"norm_bias\" applies to \"norm\": \"layernorm\" only");
  if (c.parallel_block && c.norm_placement != NormPlacement::pre)
    fail(where, ": model field \"block\": \"parallel\" needs \"norm_placement\": \"pre\" (got \"",
         norm_placement_name(c.norm_placement), "\")");
  if (c.norm == Norm::none && c.norm_placement != NormPlacement::pre)
    fail(where, ": model field \"norm_placement\": \"", norm_placement_name(c.norm_placement),
         "\" places norms, but \"norm\" is \"none\" (no norms); leave norm_placement out");
  if (c.is_moe()) {
    const MoeConfig& m = c.moe;
    if (m.top_k < 1 || m.top_k > m.num_experts)
      fail(where, ": model field \"moe.top_k\" must be between 1 and moe.num_experts (", m.num_experts, "), got ", m.top_k);
    if (m.num_shared < 0) fail(where, ": model field \"moe.num_shared\" must be at least 0, got ", m.num_shared);
    if (m.d_ff_expert < 1) fail(where, ": model field \"moe.d_ff_expert\" must be at least 1, got ", m.d_ff_expert);
    if (!(m.aux_loss >= 0)) fail(where, ": model field \"moe.aux_loss\" must be at least 0, got ", m.aux_loss);
    if (!(m.capacity_factor >= 0))
      fail(where, ": model field \"moe.capacity_factor\" must be at least 0 (0 = dropless), got ", m.capacity_factor);
  } else if (c.moe.num_experts < 0) {
    fail(where, ": model field \"moe.num_experts\" must be at least 1, got ", c.moe.num_experts);
  }
}

std::string gpu_unsupported_fields(const ModelConfig& c) {
  std::string out;
  auto add = [&](const char* field) { out += (out.empty() ? "\"" : ", \"") + std::string(field) + "\""; };
  if (c.dropout > 0) add("dropout");
  if (c.attention_dropout > 0) add("attention_dropout");
  if (c.d_head() > 256) add("head_dim");
  if (c.is_moe() && c.ffn != FfnKind::swiglu) add("ffn");
  if (c.is_moe() && c.bias) add("bias");
  return out;
}

}  // namespace scratchlm
