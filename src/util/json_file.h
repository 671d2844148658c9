// Reading a JSON file with the project's error convention: a missing file or malformed JSON throws
// Error naming the file ("<path>: invalid JSON: ...").
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace scratchlm {

nlohmann::json read_json_file(const std::string& path);

}  // namespace scratchlm
