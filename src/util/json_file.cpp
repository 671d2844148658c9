#include "util/json_file.h"

#include "util/error.h"
#include "util/files.h"

namespace scratchlm {

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_file(path);   // throws naming the file
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
}

}  // namespace scratchlm
