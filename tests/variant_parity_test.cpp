// The architecture variants against PyTorch: each directory of tests/data/reference/variants holds a
// combination of variant fields computed in float64 by reference/make_variant_reference.py (a model
// written there from the fields' definitions, independently of this code): parameters, a batch,
// logits, the cross-entropy and the gradient of the whole objective (cross-entropy + z-loss + MoE
// auxiliary loss) for every parameter. Our CPU model in fp32 must match all of them.
//
// Bounds, as tests/parity/lm_parity.cpp argues for the default model: fp32 forward tensors land near
// 1e-7 relative (long sums in double or in sgemm's fp32 over ≤ a few hundred terms); gradients pass
// through twice the ops, near 1e-6. Bound 1e-5 for logits and gradients, 1e-6 for the loss. The
// fixtures' routers keep every top-k choice at least 1e-4 away from a tie (the script asserts it),
// far more than fp32 noise, so MoE routing is the same on both sides.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/model.h"
#include "tensor/safetensors.h"
#include "test_util.h"
#include "util/json_file.h"

namespace scratchlm {
namespace {

std::vector<std::string> fixture_dirs() {
  std::vector<std::string> dirs;
  for (const auto& e : std::filesystem::directory_iterator(test::data_path("reference/variants")))
    if (e.is_directory()) dirs.push_back(e.path().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

TEST(VariantParity, EveryCombinationMatchesPyTorch) {
  const std::vector<std::string> dirs = fixture_dirs();
  ASSERT_GE(dirs.size(), 4u) << "the four combinations the issue names, at least";
  for (const std::string& dir : dirs) {
    SCOPED_TRACE(dir);
    const nlohmann::json js = read_json_file(dir + "/reference.json");
    const SafetensorsFile ref(dir + "/reference.safetensors");
    const ModelConfig c = model_config_from_json(js["config"], dir + "/reference.json");
    Model model(c);
    // Every parameter of our table comes from the reference, and the reference has no other.
    std::size_t params_in_ref = 0;
    for (const auto& [name, info] : ref.tensors()) params_in_ref += name.rfind("param.", 0) == 0;
    EXPECT_EQ(params_in_ref, model.layout.specs.size()) << "parameter tables differ";
    for (const ParamSpec& s : model.layout.specs)
      ref.read_f32("param." + s.name, s.shape, model.params.data() + s.offset);

    const std::int64_t B = js["batch"], T = js["seq"], N = B * T;
    std::vector<std::int32_t> ids, targets;
    for (std::int64_t v : ref.ints("input.ids")) ids.push_back(static_cast<std::int32_t>(v));
    for (std::int64_t v : ref.ints("input.targets")) targets.push_back(static_cast<std::int32_t>(v));
    ASSERT_EQ(static_cast<std::int64_t>(ids.size()), N);

    Activations acts(c, B, T);
    model_forward(acts, model, ids.data(), B, T);
    const std::vector<float> logits = ref.floats("out.logits");
    EXPECT_LE(test::rel_error(acts.logits.data(), logits.data(), logits.size()), 1e-5) << "logits";
    const double loss = model_loss(acts, model, targets.data());
    EXPECT_NEAR(loss, js["loss"].get<double>(), 1e-6 * std::max(1.0, js["loss"].get<double>())) << "loss";

    std::vector<float> grads(static_cast<std::size_t>(model.layout.total), 0.0f);
    model_backward(grads, acts, model, ids.data(), targets.data(), 1.0f);
    // A key projection's bias adds q·b_k to every score of a query alike, which the softmax cancels:
    // its true gradient is 0 and both sides hold only rounding (1e-17 in float64, 1e-9 in fp32), so
    // a relative error means nothing there. Such a tensor is held to an absolute bound instead: 1e-5
    // of the root-mean-square gradient of the whole model.
    double sum_sq = 0;
    std::int64_t count = 0;
    for (const ParamSpec& s : model.layout.specs)
      for (float g : ref.floats("grad." + s.name)) sum_sq += static_cast<double>(g) * g, ++count;
    const double rms = std::sqrt(sum_sq / static_cast<double>(count));
    for (const ParamSpec& s : model.layout.specs) {
      const std::vector<float> want = ref.floats("grad." + s.name);
      if (s.name.ends_with("k_proj.bias")) {
        for (std::size_t i = 0; i < want.size(); ++i)
          EXPECT_LE(std::fabs(grads[s.offset + i] - want[i]), 1e-5 * rms) << "grad." << s.name << "[" << i << "]";
        continue;
      }
      EXPECT_LE(test::rel_error(grads.data() + s.offset, want.data(), want.size()), 1e-5) << "grad." << s.name;
    }
  }
}

}  // namespace
}  // namespace scratchlm
