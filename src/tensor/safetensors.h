// safetensors files (the Hugging Face format, https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON {name: {"dtype", "shape", "data_offsets"}, and an
// optional "__metadata__" of string pairs}, then the raw little-endian tensor bytes. We read F32,
// F64, BF16, I32 and I64 and write F32 and I32; a file that is truncated, has offsets outside the
// data, or sizes that do not match its shapes is rejected with an error naming the file.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace scratchlm {

struct SafeTensorInfo {
  std::string dtype;                 // "F32", "I32", ...
  std::vector<std::int64_t> shape;
  std::int64_t begin = 0, end = 0;   // byte range inside the data section
  std::int64_t numel() const;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const SafeTensorInfo& info(const std::string& name) const;
  const std::map<std::string, SafeTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor converted to float (from F32, F64 or BF16) / to int64 (from I32 or I64).
  std::vector<float> floats(const std::string& name) const;
  std::vector<std::int64_t> ints(const std::string& name) const;
  // Copies a tensor of exactly `shape` (F32) into `out`; throws naming the tensor otherwise.
  void read_f32(const std::string& name, const std::vector<std::int64_t>& shape, float* out) const;

 private:
  std::string path_;
  std::string bytes_;   // the whole file
  std::int64_t data_start_ = 0;
  std::map<std::string, SafeTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors (pointers must stay valid until write) and writes them in insertion order,
// atomically (temporary name, then rename).
class SafetensorsWriter {
 public:
  void add_f32(const std::string& name, std::vector<std::int64_t> shape, const float* data);
  void add_i32(const std::string& name, std::vector<std::int64_t> shape, const std::int32_t* data);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name, dtype;
    std::vector<std::int64_t> shape;
    const void* data;
    std::int64_t bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// "[3, 24]" for messages.
std::string shape_string(const std::vector<std::int64_t>& shape);

}  // namespace scratchlm
