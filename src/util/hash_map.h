// Two small open-addressing hash maps for the tokenizer's hot loops, where std::unordered_map's
// node allocation and pointer chasing cost several times more:
//   - StringMap<V>: byte-string keys copied into one arena (pre-token counts, the encoder's cache);
//   - U64Map<V>: 64-bit keys such as a pair of token ids packed as (left << 32 | right).
// Linear probing, power-of-two capacity, load factor ≤ 1/2, no deletion (clear() only).
#pragma once

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

namespace scratchlm {

// A fast non-cryptographic hash of a byte string (8 bytes at a time, multiply-xorshift mixing).
inline std::uint64_t hash_bytes(std::string_view s) {
  constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ull;
  std::uint64_t h = 0x243F6A8885A308D3ull ^ (s.size() * kMul);
  const char* p = s.data();
  std::size_t n = s.size();
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n) {
    std::uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  }
  h *= kMul;
  return h ^ (h >> 32);
}

inline std::uint64_t hash_u64(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  return x ^ (x >> 33);
}

template <class V>
class StringMap {
 public:
  struct Entry {
    std::uint64_t hash;
    std::uint64_t offset;  // into the arena
    std::uint32_t length;
    V value;
  };

  explicit StringMap(std::size_t initial_capacity = 1024) { rehash(round_up(initial_capacity)); }

  // Returns the value for key, inserting V{} first if absent.
  V& operator[](std::string_view key) {
    std::uint64_t h = hash_bytes(key);
    std::size_t i = find_slot(key, h);
    if (slots_[i] == kEmpty) {
      if (2 * (entries_.size() + 1) > slots_.size()) {
        rehash(slots_.size() * 2);
        i = find_slot(key, h);
      }
      slots_[i] = static_cast<std::uint32_t>(entries_.size());
      entries_.push_back({h, arena_.size(), static_cast<std::uint32_t>(key.size()), V{}});
      arena_.insert(arena_.end(), key.begin(), key.end());
    }
    return entries_[slots_[i]].value;
  }

  // Pointer to the value, or nullptr if absent.
  const V* find(std::string_view key) const {
    std::size_t i = find_slot(key, hash_bytes(key));
    return slots_[i] == kEmpty ? nullptr : &entries_[slots_[i]].value;
  }

  std::size_t size() const { return entries_.size(); }
  std::size_t memory_bytes() const {
    return slots_.capacity() * sizeof(std::uint32_t) + entries_.capacity() * sizeof(Entry) + arena_.capacity();
  }
  std::string_view key(const Entry& e) const { return {arena_.data() + e.offset, e.length}; }
  const std::vector<Entry>& entries() const { return entries_; }

  void clear() {
    entries_.clear();
    arena_.clear();
    std::fill(slots_.begin(), slots_.end(), kEmpty);
  }

 private:
  static constexpr std::uint32_t kEmpty = 0xFFFFFFFFu;
  static std::size_t round_up(std::size_t n) {
    std::size_t c = 16;
    while (c < 2 * n) c *= 2;
    return c;
  }
  std::size_t find_slot(std::string_view key, std::uint64_t h) const {
    std::size_t mask = slots_.size() - 1;
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
      std::uint32_t s = slots_[i];
      if (s == kEmpty) return i;
      const Entry& e = entries_[s];
      if (e.hash == h && e.length == key.size() && std::memcmp(arena_.data() + e.offset, key.data(), key.size()) == 0)
        return i;
    }
  }
  void rehash(std::size_t capacity) {
    slots_.assign(capacity, kEmpty);
    std::size_t mask = capacity - 1;
    for (std::size_t k = 0; k < entries_.size(); ++k) {
      std::size_t i = entries_[k].hash & mask;
      while (slots_[i] != kEmpty) i = (i + 1) & mask;
      slots_[i] = static_cast<std::uint32_t>(k);
    }
  }

  std::vector<std::uint32_t> slots_;  // index into entries_, or kEmpty
  std::vector<Entry> entries_;
  std::vector<char> arena_;
};

template <class V>
class U64Map {
 public:
  static constexpr std::uint64_t kEmptyKey = ~0ull;  // never a valid key

  explicit U64Map(std::size_t initial_capacity = 1024) {
    std::size_t c = 16;
    while (c < 2 * initial_capacity) c *= 2;
    keys_.assign(c, kEmptyKey);
    values_.resize(c);
  }

  V& operator[](std::uint64_t key) {
    std::size_t i = find_slot(key);
    if (keys_[i] == kEmptyKey) {
      if (2 * (size_ + 1) > keys_.size()) {
        grow();
        i = find_slot(key);
      }
      keys_[i] = key;
      values_[i] = V{};
      ++size_;
    }
    return values_[i];
  }

  const V* find(std::uint64_t key) const {
    std::size_t i = find_slot(key);
    return keys_[i] == kEmptyKey ? nullptr : &values_[i];
  }
  V* find(std::uint64_t key) {
    std::size_t i = find_slot(key);
    return keys_[i] == kEmptyKey ? nullptr : &values_[i];
  }

  std::size_t size() const { return size_; }

  // Calls f(key, value) for every entry.
  template <class F>
  void for_each(F&& f) {
    for (std::size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] != kEmptyKey) f(keys_[i], values_[i]);
  }

 private:
  std::size_t find_slot(std::uint64_t key) const {
    std::size_t mask = keys_.size() - 1;
    for (std::size_t i = hash_u64(key) & mask;; i = (i + 1) & mask)
      if (keys_[i] == key || keys_[i] == kEmptyKey) return i;
  }
  void grow() {
    std::vector<std::uint64_t> old_keys = std::move(keys_);
    std::vector<V> old_values = std::move(values_);
    keys_.assign(old_keys.size() * 2, kEmptyKey);
    values_.clear();
    values_.resize(keys_.size());
    for (std::size_t i = 0; i < old_keys.size(); ++i) {
      if (old_keys[i] == kEmptyKey) continue;
      std::size_t j = find_slot(old_keys[i]);
      keys_[j] = old_keys[i];
      values_[j] = std::move(old_values[i]);
    }
  }

  std::vector<std::uint64_t> keys_;
  std::vector<V> values_;
  std::size_t size_ = 0;
};

}  // namespace scratchlm
