#include "model/config.h"

#include "util/error.h"

namespace scratchlm {
namespace {

std::int64_t get_int(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) fail(where, ": model field \"", key, "\" is missing");
  const auto& v = j.at(key);
  if (!v.is_number_integer()) fail(where, ": model field \"", key, "\" must be an integer, got ", v.dump());
  return v.get<std::int64_t>();
}

}  // namespace

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
                                "full_attention_position", "attn_softcap", "dropout", "attention_dropout"};
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
  c.d_ff = get_int(j, "d_ff", where);
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
  for (auto [key, value] : {std::pair{"tie_embeddings", &c.tie_embeddings}, std::pair{"qk_norm", &c.qk_norm}}) {
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
}

}  // namespace scratchlm
