#include "tokenizer/vocab.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "tokenizer/unicode.h"
#include "util/error.h"
#include "util/files.h"

namespace scratchlm {

using json = nlohmann::json;

std::unordered_map<std::string, std::int32_t> Vocab::index() const {
  std::unordered_map<std::string, std::int32_t> out;
  out.reserve(tokens.size());
  for (std::size_t id = 0; id < tokens.size(); ++id) out.emplace(tokens[id], static_cast<std::int32_t>(id));
  return out;
}

void Vocab::add_special(const std::string& text) {
  if (text.empty()) fail("a special token cannot be empty");
  auto it = std::find(tokens.begin(), tokens.end(), text);
  auto id = static_cast<std::int32_t>(it - tokens.begin());
  if (it == tokens.end()) tokens.push_back(text);
  if (std::find(special_ids.begin(), special_ids.end(), id) == special_ids.end()) special_ids.push_back(id);
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100 onwards in byte order.
const std::array<char32_t, 256>& byte_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) t[b] = printable(b) ? static_cast<char32_t>(b) : next++;
    return t;
  }();
  return table;
}

std::string bytes_to_gpt2_text(std::string_view bytes) {
  const auto& map = byte_to_unicode();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(out, map[b]);
  return out;
}

bool gpt2_text_to_bytes(std::string_view text, std::string& bytes) {
  static const std::unordered_map<char32_t, unsigned char> inverse = [] {
    std::unordered_map<char32_t, unsigned char> m;
    for (int b = 0; b < 256; ++b) m[byte_to_unicode()[b]] = static_cast<unsigned char>(b);
    return m;
  }();
  bytes.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    char32_t cp;
    int len = decode_utf8(p, end, cp);
    if (len == 0) return false;
    auto it = inverse.find(cp);
    if (it == inverse.end()) return false;
    bytes += static_cast<char>(it->second);
    p += len;
  }
  return true;
}

namespace {

std::string json_quote(std::string_view s) { return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace); }

// Parses a JSON file, naming it in any error; rejects duplicate keys in the top-level object.
json parse_json_file(const std::string& path) {
  std::string text = read_file(path);
  std::unordered_set<std::string> keys;
  std::string duplicate;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && !keys.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json out;
  try {
    out = json::parse(text, callback);
  } catch (const json::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
  if (!duplicate.empty()) fail(path, ": key ", json_quote(duplicate), " appears more than once");
  return out;
}

}  // namespace

namespace {

// Token bytes from a {"token": id, ...} object (vocab.json, or model.vocab of tokenizer.json):
// ids must be integers 0..N-1, each used once; keys are special tokens (taken as they are) or in
// GPT-2's byte-level form; no two tokens may stand for the same bytes; all 256 bytes must be there.
// `where` names the object in errors.
std::vector<std::string> tokens_from_json(const json& object, const std::vector<std::string>& specials,
                                          const std::string& where) {
  if (!object.is_object() || object.empty()) fail(where, ": expected a JSON object {\"token\": id, ...}");
  std::vector<std::string> tokens(object.size());
  std::vector<std::string> key_of_id(object.size());
  std::vector<bool> seen(object.size(), false);
  std::string bytes;
  for (const auto& [key, value] : object.items()) {
    if (!value.is_number_integer()) fail(where, ": the id of ", json_quote(key), " is not an integer");
    std::int64_t id = value.get<std::int64_t>();
    if (id < 0 || id >= static_cast<std::int64_t>(object.size()))
      fail(where, ": id ", id, " of ", json_quote(key), " is out of range (ids must be 0..", object.size() - 1, ")");
    if (seen[id]) fail(where, ": id ", id, " is used by both ", json_quote(key_of_id[id]), " and ", json_quote(key));
    seen[id] = true;
    key_of_id[id] = key;
    if (std::find(specials.begin(), specials.end(), key) != specials.end())
      tokens[id] = key;
    else if (gpt2_text_to_bytes(key, bytes))
      tokens[id] = bytes;
    else
      fail(where, ": token ", json_quote(key), " is not in GPT-2's byte-level form (nor a special token)");
  }
  std::unordered_map<std::string, std::size_t> first_id;
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    auto [it, fresh] = first_id.emplace(tokens[id], id);
    if (!fresh)
      fail(where, ": tokens ", json_quote(key_of_id[it->second]), " and ", json_quote(key_of_id[id]),
           " stand for the same bytes");
  }
  for (int b = 0; b < 256; ++b)
    if (!first_id.count(std::string(1, static_cast<char>(b))))
      fail(where, ": the single byte ", b, " (", json_quote(bytes_to_gpt2_text(std::string(1, static_cast<char>(b)))),
           ") has no id; a byte-level vocabulary needs all 256");
  return tokens;
}

// The ids of one merge given as two byte-level texts; the parts and their concatenation must all
// be tokens. `where` names the merge in errors ("merges.txt:12"), `vocab_name` the vocabulary.
std::pair<std::int32_t, std::int32_t> merge_ids(std::string_view left, std::string_view right,
                                                const std::unordered_map<std::string, std::int32_t>& index,
                                                const std::string& where, const std::string& vocab_name) {
  std::string bytes[2];
  std::int32_t ids[2];
  std::string_view parts[2] = {left, right};
  for (int k = 0; k < 2; ++k) {
    if (!gpt2_text_to_bytes(parts[k], bytes[k])) fail(where, ": ", json_quote(parts[k]), " is not in GPT-2's byte-level form");
    auto it = index.find(bytes[k]);
    if (it == index.end()) fail(where, ": ", json_quote(parts[k]), " is not in ", vocab_name);
    ids[k] = it->second;
  }
  if (!index.count(bytes[0] + bytes[1]))
    fail(where, ": the merged token ", json_quote(bytes_to_gpt2_text(bytes[0] + bytes[1])), " is not in ", vocab_name);
  return {ids[0], ids[1]};
}

// A Hugging Face tokenizer.json holding a byte-level BPE model (GPT-2 style): model.vocab,
// model.merges ("a b" strings or [a, b] pairs), and added tokens marked special.
Vocab load_hf_tokenizer_json(const std::string& path) {
  json root = parse_json_file(path);
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) fail(path, ": no \"model\" object");
  const json& model = root["model"];
  if (model.value("type", "") != "BPE") fail(path, ": only BPE models are supported (model.type is not \"BPE\")");
  const json& pre = root.contains("pre_tokenizer") ? root["pre_tokenizer"] : json();
  if (!pre.is_object() || pre.value("type", "") != "ByteLevel")
    fail(path, ": only byte-level tokenizers are supported (pre_tokenizer.type must be \"ByteLevel\")");
  std::vector<std::string> specials;
  if (root.contains("added_tokens") && root["added_tokens"].is_array())
    for (const auto& t : root["added_tokens"])
      if (t.is_object() && t.value("special", false) && t.contains("content") && t["content"].is_string())
        specials.push_back(t["content"].get<std::string>());

  const std::string vocab_name = path + " model.vocab";
  Vocab vocab;
  vocab.tokens = tokens_from_json(model.contains("vocab") ? model["vocab"] : json(), specials, vocab_name);
  auto index = vocab.index();
  std::size_t merge_no = 0;
  for (const auto& m : model.value("merges", json::array())) {
    std::string where = path + ": model.merges[" + std::to_string(merge_no++) + "]";
    std::string parts[2];
    std::size_t space;
    if (m.is_string() && (space = m.get<std::string>().find(' ')) != std::string::npos) {
      parts[0] = m.get<std::string>().substr(0, space);
      parts[1] = m.get<std::string>().substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      parts[0] = m[0].get<std::string>();
      parts[1] = m[1].get<std::string>();
    } else {
      fail(where, ": expected \"a b\" or [\"a\", \"b\"]");
    }
    vocab.merges.push_back(merge_ids(parts[0], parts[1], index, where, vocab_name));
  }
  for (const auto& s : specials) vocab.add_special(s);
  return vocab;
}

}  // namespace

Vocab load_tokenizer_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    fail(dir, ": not a tokenizer directory (expected vocab.json and merges.txt, or tokenizer.json, in it)");
  const std::string vocab_path = (fs::path(dir) / "vocab.json").string();
  const std::string hf_path = (fs::path(dir) / "tokenizer.json").string();
  if (!fs::exists(vocab_path) && fs::exists(hf_path)) return load_hf_tokenizer_json(hf_path);
  const std::string merges_path = (fs::path(dir) / "merges.txt").string();
  const std::string specials_path = (fs::path(dir) / "special_tokens.json").string();

  std::vector<std::string> specials;
  if (fs::exists(specials_path)) {
    json j = parse_json_file(specials_path);
    if (!j.is_array()) fail(specials_path, ": expected a JSON array of strings");
    for (const auto& s : j) {
      if (!s.is_string() || s.get<std::string>().empty()) fail(specials_path, ": expected a JSON array of non-empty strings");
      specials.push_back(s.get<std::string>());
    }
  }

  Vocab vocab;
  vocab.tokens = tokens_from_json(parse_json_file(vocab_path), specials, vocab_path);
  auto index = vocab.index();

  std::string merges_text = read_file(merges_path);
  std::size_t pos = 0;
  std::int64_t line_no = 0;
  while (pos < merges_text.size()) {
    std::size_t eol = merges_text.find('\n', pos);
    if (eol == std::string::npos) eol = merges_text.size();
    std::string_view line(merges_text.data() + pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.starts_with("#version"))) continue;
    std::string where = str(merges_path, ":", line_no);
    std::size_t space = line.find(' ');
    if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos || space == 0 ||
        space + 1 == line.size())
      fail(where, ": expected two tokens separated by one space, got ", json_quote(line));
    vocab.merges.push_back(merge_ids(line.substr(0, space), line.substr(space + 1), index, where, vocab_path));
  }
  for (const auto& s : specials) {
    auto it = index.find(s);
    if (it == index.end()) fail(specials_path, ": special token ", json_quote(s), " is not in ", vocab_path);
    vocab.special_ids.push_back(it->second);
  }
  return vocab;
}

namespace {

bool is_special(const Vocab& vocab, std::int32_t id) {
  return std::find(vocab.special_ids.begin(), vocab.special_ids.end(), id) != vocab.special_ids.end();
}

// A token as written in vocab.json: special tokens as their own text, the rest byte-mapped.
std::string vocab_key(const Vocab& vocab, std::int32_t id) {
  return is_special(vocab, id) ? vocab.tokens[id] : bytes_to_gpt2_text(vocab.tokens[id]);
}

std::string merges_text(const Vocab& vocab) {
  std::string out;
  for (auto [a, b] : vocab.merges) out += bytes_to_gpt2_text(vocab.tokens[a]) + " " + bytes_to_gpt2_text(vocab.tokens[b]) + "\n";
  return out;
}

std::string vocab_json_text(const Vocab& vocab, const char* indent) {
  std::string out = "{";
  for (std::size_t id = 0; id < vocab.tokens.size(); ++id) {
    out += id ? ",\n" : "\n";
    out += indent + json_quote(vocab_key(vocab, static_cast<std::int32_t>(id))) + ": " + std::to_string(id);
  }
  out += "\n}";
  return out;
}

}  // namespace

std::string hf_tokenizer_json(const Vocab& vocab) {
  json added = json::array();
  for (auto id : vocab.special_ids)
    added.push_back({{"id", id}, {"content", vocab.tokens[id]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  json merges = json::array();
  for (auto [a, b] : vocab.merges) merges.push_back(bytes_to_gpt2_text(vocab.tokens[a]) + " " + bytes_to_gpt2_text(vocab.tokens[b]));
  // The model's vocab is spliced in as text to keep it in id order.
  json model = {{"type", "BPE"},        {"dropout", nullptr},      {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                {"byte_fallback", false}, {"ignore_merges", true}, {"vocab", "@VOCAB@"},
                {"merges", merges}};
  json root = {{"version", "1.0"},         {"truncation", nullptr},  {"padding", nullptr},
               {"added_tokens", added},    {"normalizer", nullptr},  {"pre_tokenizer", byte_level},
               {"post_processor", nullptr}, {"decoder", byte_level}, {"model", model}};
  std::string text = root.dump(1, ' ', false, json::error_handler_t::replace);
  std::size_t at = text.find("\"@VOCAB@\"");
  SLM_CHECK(at != std::string::npos);
  text.replace(at, 9, vocab_json_text(vocab, "   "));
  return text + "\n";
}

void save_tokenizer_dir(const std::string& dir, const Vocab& vocab) {
  namespace fs = std::filesystem;
  make_directories(dir);
  json specials = json::array();
  for (auto id : vocab.special_ids) specials.push_back(vocab.tokens[id]);
  write_file_atomic((fs::path(dir) / "vocab.json").string(), vocab_json_text(vocab, "  ") + "\n");
  write_file_atomic((fs::path(dir) / "merges.txt").string(), merges_text(vocab));
  write_file_atomic((fs::path(dir) / "special_tokens.json").string(), specials.dump() + "\n");
  write_file_atomic((fs::path(dir) / "tokenizer.json").string(), hf_tokenizer_json(vocab));
}

std::string vocab_fingerprint(const Vocab& vocab) {
  std::uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a 64
  auto mix = [&h](std::string_view bytes) {
    for (unsigned char c : bytes) h = (h ^ c) * 0x100000001B3ull;
  };
  auto mix_int = [&](std::int64_t v) { mix(std::string_view(reinterpret_cast<const char*>(&v), sizeof v)); };
  mix_int(vocab.size());
  for (const auto& t : vocab.tokens) {
    mix_int(static_cast<std::int64_t>(t.size()));
    mix(t);
  }
  for (auto [a, b] : vocab.merges) mix_int((static_cast<std::int64_t>(a) << 32) | b);
  for (auto id : vocab.special_ids) mix_int(id);
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace scratchlm
