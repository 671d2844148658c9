#include "tokenizer/special_tokens.h"

namespace scratchlm {

SpecialMatcher::SpecialMatcher(std::vector<std::string> specials) : specials_(std::move(specials)) {
  for (const auto& s : specials_) max_length_ = std::max(max_length_, s.size());
}

SpecialMatcher::Match SpecialMatcher::find(std::string_view text, std::size_t from) const {
  Match best{text.size(), 0, -1};
  for (std::size_t k = 0; k < specials_.size(); ++k) {
    const std::string& s = specials_[k];
    if (s.empty()) continue;
    // Search only up to the best position so far (plus this token's length, to see ties).
    std::size_t limit = std::min(text.size(), best.pos + s.size());
    if (from >= limit) continue;
    std::size_t at = text.substr(0, limit).find(s, from);
    if (at == std::string_view::npos) continue;
    if (at < best.pos || (at == best.pos && s.size() > best.length)) best = {at, s.size(), static_cast<int>(k)};
  }
  return best;
}

}  // namespace scratchlm
