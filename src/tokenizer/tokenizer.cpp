#include "tokenizer/tokenizer.h"

#include <queue>

#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace scratchlm {

namespace {
constexpr std::size_t kCacheEntries = 1 << 20;  // cleared when full: memory stays bounded
constexpr std::size_t kShortPiece = 64;         // longer pieces use the heap-based merge
constexpr std::uint32_t kNoRank = 0xFFFFFFFFu;

std::uint64_t pair_key(std::uint32_t a, std::uint32_t b) { return (static_cast<std::uint64_t>(a) << 32) | b; }
}  // namespace

Tokenizer::Tokenizer(Vocab vocab, bool recognise_specials) {
  auto t = std::make_shared<Tables>();
  t->vocab = std::move(vocab);
  const Vocab& v = t->vocab;
  auto index = v.index();
  for (int b = 0; b < 256; ++b) {
    auto it = index.find(std::string(1, static_cast<char>(b)));
    if (it == index.end()) fail("tokenizer: byte ", b, " has no token; a byte-level vocabulary needs all 256");
    t->byte_ids[b] = static_cast<std::uint32_t>(it->second);
  }
  for (std::size_t rank = 0; rank < v.merges.size(); ++rank) {
    auto [a, b] = v.merges[rank];
    auto it = index.find(v.tokens[a] + v.tokens[b]);
    if (it == index.end()) fail("tokenizer: merge ", rank, " makes a token that is not in the vocabulary");
    std::uint64_t& slot = t->merges[pair_key(a, b)];
    if (slot == 0) slot = (static_cast<std::uint64_t>(rank) << 32) | static_cast<std::uint32_t>(it->second);
  }
  for (std::size_t id = 0; id < v.tokens.size(); ++id) {
    bool special = std::find(v.special_ids.begin(), v.special_ids.end(), static_cast<std::int32_t>(id)) != v.special_ids.end();
    if (!special) t->token_ids[v.tokens[id]] = static_cast<std::uint32_t>(id);
  }
  if (recognise_specials) {
    for (auto id : v.special_ids) {
      t->special_texts.push_back(v.tokens[id]);
      t->special_ids.push_back(static_cast<std::uint32_t>(id));
    }
  }
  t->specials = SpecialMatcher(t->special_texts);
  tables_ = std::move(t);
}

void Tokenizer::encode(std::string_view text, std::vector<std::uint32_t>& out) {
  auto on_text = [&](std::string_view stretch) {
    pretokenize(stretch, [&](std::string_view piece) { encode_piece(piece, out); });
  };
  if (tables_->specials.empty()) {
    on_text(text);
    return;
  }
  tables_->specials.split(text, on_text, [&](int k) { out.push_back(tables_->special_ids[k]); });
}

void Tokenizer::encode_piece(std::string_view piece, std::vector<std::uint32_t>& out) {
  if (piece.size() == 1) {
    out.push_back(tables_->byte_ids[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (const std::uint32_t* id = tables_->token_ids.find(piece)) {
    out.push_back(*id);
    return;
  }
  if (const std::uint64_t* hit = cache_.find(piece)) {
    out.insert(out.end(), cache_ids_.begin() + static_cast<std::ptrdiff_t>(*hit >> 32),
               cache_ids_.begin() + static_cast<std::ptrdiff_t>((*hit >> 32) + (*hit & 0xFFFFFFFFu)));
    return;
  }
  std::size_t before = out.size();
  bpe_merge(piece, out);
  if (cache_.size() >= kCacheEntries) {
    cache_.clear();
    cache_ids_.clear();
  }
  cache_[piece] = (static_cast<std::uint64_t>(cache_ids_.size()) << 32) | (out.size() - before);
  cache_ids_.insert(cache_ids_.end(), out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
}

// Short pieces: a plain vector of symbols, rescanned for the lowest-rank pair after each merge
// (quadratic, but with tiny n and no allocation it beats anything cleverer).
void Tokenizer::bpe_merge(std::string_view piece, std::vector<std::uint32_t>& out) const {
  if (piece.size() > kShortPiece) {
    bpe_merge_long(piece, out);
    return;
  }
  std::uint32_t symbols[kShortPiece];
  std::size_t n = piece.size();
  for (std::size_t i = 0; i < n; ++i) symbols[i] = tables_->byte_ids[static_cast<unsigned char>(piece[i])];
  while (n > 1) {
    std::uint32_t best_rank = kNoRank, best_id = 0;
    std::size_t best_pos = 0;
    for (std::size_t i = 0; i + 1 < n; ++i) {
      const std::uint64_t* m = tables_->merges.find(pair_key(symbols[i], symbols[i + 1]));
      if (m && (*m >> 32) < best_rank) {
        best_rank = static_cast<std::uint32_t>(*m >> 32);
        best_id = static_cast<std::uint32_t>(*m);
        best_pos = i;
      }
    }
    if (best_rank == kNoRank) break;
    symbols[best_pos] = best_id;
    for (std::size_t i = best_pos + 1; i + 1 < n; ++i) symbols[i] = symbols[i + 1];
    --n;
  }
  out.insert(out.end(), symbols, symbols + n);
}

// Long pieces (a run of 10,000 spaces, say): a doubly linked list of symbols and a min-heap of
// (rank, position) candidates, O(n log n). A popped candidate is used only if both of its
// symbols are still alive and unchanged; the same leftmost-lowest-rank order as above.
void Tokenizer::bpe_merge_long(std::string_view piece, std::vector<std::uint32_t>& out) const {
  const std::size_t n = piece.size();
  std::vector<std::uint32_t> id(n);
  std::vector<std::int64_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (std::size_t i = 0; i < n; ++i) {
    id[i] = tables_->byte_ids[static_cast<unsigned char>(piece[i])];
    prev[i] = static_cast<std::int64_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<std::int64_t>(i + 1) : -1;
  }
  struct Candidate {
    std::uint32_t rank;
    std::int64_t pos;  // left symbol
    std::uint32_t left, right;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto consider = [&](std::int64_t i) {
    if (i < 0 || next[i] < 0) return;
    const std::uint64_t* m = tables_->merges.find(pair_key(id[i], id[next[i]]));
    if (m) heap.push({static_cast<std::uint32_t>(*m >> 32), i, id[i], id[next[i]]});
  };
  for (std::size_t i = 0; i + 1 < n; ++i) consider(static_cast<std::int64_t>(i));
  while (!heap.empty()) {
    Candidate c = heap.top();
    heap.pop();
    std::int64_t i = c.pos;
    if (!alive[i] || next[i] < 0 || id[i] != c.left || id[next[i]] != c.right) continue;
    std::int64_t j = next[i];
    id[i] = static_cast<std::uint32_t>(*tables_->merges.find(pair_key(c.left, c.right)));
    alive[j] = false;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    consider(prev[i]);
    consider(i);
  }
  for (std::int64_t i = 0; i >= 0; i = next[i]) out.push_back(id[i]);
}

std::string Tokenizer::decode_bytes(const std::uint32_t* ids, std::size_t n) const {
  const auto& tokens = tables_->vocab.tokens;
  std::string out;
  for (std::size_t k = 0; k < n; ++k) {
    if (ids[k] >= tokens.size())
      fail("token id ", ids[k], " (at position ", k, ") is out of range: the vocabulary has ", tokens.size(), " tokens");
    out += tokens[ids[k]];
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<std::uint32_t>& ids) const {
  return utf8_replace_invalid(decode_bytes(ids));
}

}  // namespace scratchlm
