#include "tensor/safetensors.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/files.h"

namespace scratchlm {
namespace {

std::int64_t dtype_bytes(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "BF16" || dtype == "F16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "U8" || dtype == "I8" || dtype == "BOOL") return 1;
  return 0;
}

template <class T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

std::int64_t SafeTensorInfo::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path), bytes_(read_file(path)) {
  const auto size = static_cast<std::int64_t>(bytes_.size());
  if (size < 8) fail(path, ": not a safetensors file (", size, " bytes, shorter than its header length)");
  const auto header_len = static_cast<std::int64_t>(load<std::uint64_t>(bytes_.data()));
  if (header_len <= 0 || header_len > size - 8)
    fail(path, ": not a safetensors file or truncated (header length ", header_len, ", file ", size, " bytes)");
  data_start_ = 8 + header_len;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes_.data() + 8, bytes_.data() + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": malformed safetensors header: ", e.what());
  }
  if (!header.is_object()) fail(path, ": malformed safetensors header (not a JSON object)");
  const std::int64_t data_size = size - data_start_;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path, ": __metadata__ is not an object");
      for (const auto& [k, s] : v.items())
        if (s.is_string()) metadata_[k] = s.get<std::string>();
      continue;
    }
    SafeTensorInfo t;
    try {
      t.dtype = v.at("dtype").get<std::string>();
      t.shape = v.at("shape").get<std::vector<std::int64_t>>();
      const auto offsets = v.at("data_offsets").get<std::vector<std::int64_t>>();
      if (offsets.size() != 2) fail(path, ": tensor ", name, ": data_offsets must have two entries");
      t.begin = offsets[0];
      t.end = offsets[1];
    } catch (const nlohmann::json::exception& e) {
      fail(path, ": tensor ", name, ": malformed entry: ", e.what());
    }
    const std::int64_t elem = dtype_bytes(t.dtype);
    if (elem == 0) fail(path, ": tensor ", name, ": unsupported dtype ", t.dtype);
    for (std::int64_t d : t.shape)
      if (d < 0) fail(path, ": tensor ", name, ": negative dimension in shape ", shape_string(t.shape));
    if (t.begin < 0 || t.end < t.begin || t.end > data_size)
      fail(path, ": tensor ", name, ": data offsets [", t.begin, ", ", t.end, ") outside the ", data_size,
           " data bytes (truncated file?)");
    if (t.end - t.begin != t.numel() * elem)
      fail(path, ": tensor ", name, ": ", t.end - t.begin, " bytes do not match dtype ", t.dtype, " and shape ",
           shape_string(t.shape));
    tensors_[name] = std::move(t);
  }
}

const SafeTensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(path_, ": has no tensor named ", name);
  return it->second;
}

std::vector<float> SafetensorsFile::floats(const std::string& name) const {
  const SafeTensorInfo& t = info(name);
  const char* p = bytes_.data() + data_start_ + t.begin;
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (t.dtype == "F32") {
      out[i] = load<float>(p + 4 * i);
    } else if (t.dtype == "F64") {
      out[i] = static_cast<float>(load<double>(p + 8 * i));
    } else if (t.dtype == "BF16") {
      const std::uint32_t bits = std::uint32_t{load<std::uint16_t>(p + 2 * i)} << 16;
      std::memcpy(&out[i], &bits, 4);
    } else {
      fail(path_, ": tensor ", name, " has dtype ", t.dtype, ", expected a float type");
    }
  }
  return out;
}

std::vector<std::int64_t> SafetensorsFile::ints(const std::string& name) const {
  const SafeTensorInfo& t = info(name);
  const char* p = bytes_.data() + data_start_ + t.begin;
  std::vector<std::int64_t> out(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (t.dtype == "I32") out[i] = load<std::int32_t>(p + 4 * i);
    else if (t.dtype == "I64") out[i] = load<std::int64_t>(p + 8 * i);
    else fail(path_, ": tensor ", name, " has dtype ", t.dtype, ", expected I32 or I64");
  }
  return out;
}

void SafetensorsFile::read_f32(const std::string& name, const std::vector<std::int64_t>& shape, float* out) const {
  const SafeTensorInfo& t = info(name);
  if (t.dtype != "F32") fail(path_, ": tensor ", name, " has dtype ", t.dtype, ", expected F32");
  if (t.shape != shape)
    fail(path_, ": tensor ", name, " has shape ", shape_string(t.shape), ", expected ", shape_string(shape));
  std::memcpy(out, bytes_.data() + data_start_ + t.begin, static_cast<std::size_t>(t.end - t.begin));
}

void SafetensorsWriter::add_f32(const std::string& name, std::vector<std::int64_t> shape, const float* data) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  entries_.push_back({name, "F32", std::move(shape), data, 4 * n});
}

void SafetensorsWriter::add_i32(const std::string& name, std::vector<std::int64_t> shape, const std::int32_t* data) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  entries_.push_back({name, "I32", std::move(shape), data, 4 * n});
}

void SafetensorsWriter::write(const std::string& path) const {
  // ordered_json keeps insertion order, so the file lists tensors in parameter-table order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::int64_t offset = 0;
  for (const Entry& e : entries_) {
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes}}};
    offset += e.bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');   // the data section starts 8-byte aligned
  const std::uint64_t len = text.size();
  AtomicFile file(path);
  file.write(&len, 8);
  file.write(text);
  for (const Entry& e : entries_) file.write(e.data, static_cast<std::size_t>(e.bytes));
  file.commit();
}

}  // namespace scratchlm
