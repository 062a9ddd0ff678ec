// SPDX-License-Identifier: MIT
// The generation pipeline against stand-in networks with closed-form outputs: the exact velocity
// (flow) or noise (epsilon) predictor of a data distribution that is one point per class (a flat
// image of value class/10 - 0.5; the null class gives 0). Every sampler then converges to that
// point, which checks the parameterisations, the flow-to-VE path and the guidance end to end.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "diffuse/schedule/sigmas.hpp"
#include "test_util.hpp"

namespace {

using diffuse::Tensor;
using diffuse::kernels::Context;
using diffuse_test::expect_error;
namespace pl = diffuse::pipeline;

constexpr std::int64_t kNull = 10;

float class_value(std::int64_t label) { return label == kNull ? 0.0f : static_cast<float>(label) / 10.0f - 0.5f; }

/// What the stand-in network outputs.
enum class Kind { flow, epsilon };

class StandIn final : public diffuse::models::Network {
 public:
  StandIn(Kind kind, bool conditional, bool with_null, std::vector<float> train_sigmas = {})
      : kind_(kind), train_log_sigmas_(diffuse::log_sigmas(train_sigmas)) {
    info_.architecture = kind == Kind::flow ? "StandInFlow" : "StandInEps";
    info_.in_channels = info_.out_channels = 1;
    info_.sample_size = 8;
    info_.size_multiple = 2;
    info_.num_classes = conditional ? 10 : 0;
    if (conditional && with_null) info_.null_class = kNull;
    info_.parameters = 1;
  }

  const diffuse::models::NetworkInfo& info() const noexcept override { return info_; }

  Tensor forward(const Tensor& x, std::span<const float> t, std::span<const std::int64_t> labels,
                 Context& ctx) const override {
    ++calls;
    last_batch = x.dim(0);
    const std::size_t batch = x.dim(0), per = x.size() / batch;
    if (info_.num_classes && labels.size() != batch) throw diffuse::value_error("labels/batch mismatch");
    Tensor out(x.shape());
    // Split over the pool by item, so a thread count that changed results would show.
    ctx.pool().parallel_for(batch, [&](std::size_t b0, std::size_t b1, std::size_t) {
      for (std::size_t b = b0; b < b1; ++b) {
        const float ts = t.size() == 1 ? t[0] : t[b];
        const float x0 = labels.empty() ? 0.25f : class_value(labels[b]);
        const float* px = x.data() + b * per;
        float* po = out.data() + b * per;
        for (std::size_t i = 0; i < per; ++i) {
          if (kind_ == Kind::flow) {
            const float s = std::max(ts / 1000.0f, 1e-4f);  // x = (1-s) x0 + s eps, v = (x - x0) / s
            po[i] = (px[i] - x0) / s;
          } else {  // x_vp = sqrt(ac) x0 + sqrt(1-ac) eps with ac = 1/(1+sigma^2)
            const auto sigma = static_cast<float>(diffuse::t_to_sigma(ts, train_log_sigmas_));
            po[i] = (px[i] * std::sqrt(1.0f + sigma * sigma) - x0) / sigma;
          }
          if (nan_at_call && calls == nan_at_call) po[i] = std::numeric_limits<float>::quiet_NaN();
        }
      }
    });
    return out;
  }

  mutable std::atomic<std::size_t> calls{0};
  mutable std::atomic<std::size_t> last_batch{0};
  std::size_t nan_at_call = 0;

 private:
  Kind kind_;
  std::vector<float> train_log_sigmas_;
  diffuse::models::NetworkInfo info_;
};

const nlohmann::json kFlowConfig = {{"_class_name", "FlowMatchEulerDiscreteScheduler"},
                                    {"num_train_timesteps", 1000},
                                    {"shift", 1.0}};
const nlohmann::json kDdpmConfig = {{"_class_name", "DDPMScheduler"}, {"beta_schedule", "linear"},
                                    {"beta_start", 0.0001},           {"beta_end", 0.02},
                                    {"num_train_timesteps", 1000},    {"prediction_type", "epsilon"},
                                    {"clip_sample", true},            {"timestep_spacing", "leading"}};

std::shared_ptr<StandIn> flow_net(bool conditional = true, bool with_null = true) {
  return std::make_shared<StandIn>(Kind::flow, conditional, with_null);
}

pl::Model flow_model(std::shared_ptr<StandIn> net = flow_net()) { return pl::Model(net, kFlowConfig, "standin-flow"); }

pl::Model eps_model() {
  // The VP train sigmas of the config, so the stand-in maps t back to sigma exactly.
  auto ac = diffuse::make_schedule(diffuse::ScheduleConfig::from_json(kDdpmConfig), 1).alphas_cumprod;
  auto net = std::make_shared<StandIn>(Kind::epsilon, true, true, diffuse::train_sigmas(ac));
  return pl::Model(net, kDdpmConfig, "standin-eps");
}

pl::GenerateOptions opts(std::vector<std::int64_t> labels = {3}, std::size_t batch = 1) {
  pl::GenerateOptions o;
  o.labels = std::move(labels);
  o.batch = batch;
  o.seed = 42;
  o.steps = 8;
  return o;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Pipeline, ModelFromNetworkAndConfig) {
  const auto m = flow_model();
  EXPECT_EQ(m.prediction(), diffuse::Prediction::flow);
  EXPECT_EQ(m.space(), diffuse::NoiseSpace::flow);
  EXPECT_TRUE(m.train_sigmas().empty());
  EXPECT_EQ(m.defaults().sampler, "flow_euler");
  EXPECT_EQ(m.defaults().cfg_scale, 2.0f);
  EXPECT_TRUE(m.valid_label(0));
  EXPECT_TRUE(m.valid_label(kNull));
  EXPECT_FALSE(m.valid_label(11));
  EXPECT_FALSE(m.valid_label(-1));

  const auto e = eps_model();
  EXPECT_EQ(e.prediction(), diffuse::Prediction::epsilon);
  EXPECT_EQ(e.train_sigmas().size(), 1000u);
  EXPECT_TRUE(e.parameterization().clip_sample);
  EXPECT_EQ(pl::Model(flow_net(true, false), kFlowConfig).defaults().cfg_scale, 1.0f);
}

TEST(Pipeline, DefaultsFilledIn) {
  const auto m = flow_model();
  const auto o = pl::resolve_options(m, opts());
  EXPECT_EQ(o.sampler, "flow_euler");
  EXPECT_EQ(o.schedule, "default");
  EXPECT_EQ(*o.steps, 8);
  EXPECT_EQ(*o.cfg_scale, 2.0f);
  EXPECT_EQ(*o.width, 8u);
  EXPECT_EQ(*o.height, 8u);
}

TEST(Pipeline, WholeEqualsStepwise) {
  const auto m = flow_model();
  Context ctx(1);
  auto o = opts({1, 7}, 2);
  o.sampler = "euler_a";  // stochastic: the per-step noise stream must match too
  std::size_t callbacks = 0;
  const Tensor whole = pl::generate(m, o, ctx, [&](const pl::Generation& g) {
    ++callbacks;
    EXPECT_EQ(g.step_index(), callbacks);
    EXPECT_EQ(g.preview().shape(), (diffuse::Shape{2, 1, 8, 8}));
  });
  EXPECT_EQ(callbacks, 8u);

  pl::Generation g(m, o);
  EXPECT_EQ(g.num_steps(), 8u);
  EXPECT_EQ(g.preview().size(), 0u);
  expect_error<diffuse::value_error>([&] { (void)g.result(); }, {"not done"});
  while (!g.done()) g.step(ctx);
  EXPECT_TRUE(same_bits(whole, g.result()));
  expect_error<diffuse::value_error>([&] { g.step(ctx); }, {"done"});
}

TEST(Pipeline, ConvergesToTheClassForEverySamplerKind) {
  Context ctx(1);
  const auto check = [&](const pl::Model& m, const std::string& sampler, const std::string& schedule, float tol) {
    auto o = opts({2, 9}, 2);
    o.sampler = sampler;
    o.schedule = schedule;
    o.steps = 12;
    o.cfg_scale = 1.5f;
    const Tensor x = pl::generate(m, o, ctx);
    for (std::size_t b = 0; b < 2; ++b)
      for (std::size_t i = 0; i < 64; ++i)
        ASSERT_NEAR(x.data()[b * 64 + i], class_value(o.labels[b]) * 1.5f, tol)
            << m.name() << " " << sampler << " " << schedule << " item " << b;
  };
  // Guided point targets: D = D_u + s (D_c - D_u) = 0 + 1.5 * c (the null class maps to 0).
  const auto f = flow_model();
  for (const char* s : {"flow_euler", "euler", "heun", "dpmpp_2m", "unipc", "euler_a", "dpmpp_2m_sde"})
    check(f, s, "default", 1e-3f);
  check(f, "flow_euler", "karras", 1e-3f);
  const auto e = eps_model();
  for (const char* s : {"dpmpp_2m", "ddim", "euler", "ddpm", "euler_a"}) check(e, s, "karras", 2e-3f);
  // ddim feeds the network integer timesteps (pipeline::SamplerRule, as diffusers' DDIM does), so on a
  // schedule whose sigmas fall between integer timesteps the stand-in's eps is that of the rounded
  // timestep: measured 2.07e-3 off the target on sgm_uniform.
  for (const char* sch : {"default", "exponential", "simple", "normal", "sgm_uniform", "beta"}) check(e, "ddim", sch, 3e-3f);
}

// A PNDMScheduler folder (Stable Diffusion's): the default sampler is PLMS on the class's own
// timesteps, the network gets integer timesteps, the last step goes to alphas_cumprod[0].
TEST(Pipeline, PndmConfigRunsPlms) {
  nlohmann::json cfg = kDdpmConfig;
  cfg["_class_name"] = "PNDMScheduler";
  cfg["skip_prk_steps"] = true;
  cfg["set_alpha_to_one"] = false;
  cfg["steps_offset"] = 1;
  cfg.erase("clip_sample");
  auto ac = diffuse::make_schedule(diffuse::ScheduleConfig::from_json(cfg), 1).alphas_cumprod;
  const auto train = diffuse::train_sigmas(ac);
  const pl::Model m(std::make_shared<StandIn>(Kind::epsilon, true, true, train), cfg, "standin-pndm");
  EXPECT_EQ(m.scheduler_class(), diffuse::SchedulerClass::pndm);
  EXPECT_EQ(m.defaults().sampler, "pndm");
  EXPECT_EQ(m.defaults().schedule, "default");
  EXPECT_EQ(m.defaults().steps, 50);
  for (const char* name : {"pndm", "plms"}) {
    const auto r = pl::sampler_rule(name);
    EXPECT_EQ(r.diffusers_class, diffuse::SchedulerClass::pndm) << name;
    EXPECT_TRUE(r.integer_timesteps) << name;
    EXPECT_FALSE(r.clip_sample) << name;
    EXPECT_FALSE(r.thresholding) << name;
  }
  // The default schedule: sigmas at 901 801 ... 1 (leading, offset 1), then sigma(alphas_cumprod[0]).
  const auto sg = pl::make_sigmas(m, "default", 10, "pndm");
  ASSERT_EQ(sg.size(), 11u);
  for (std::size_t i = 0; i < 10; ++i) EXPECT_EQ(sg[i], train[901 - 100 * i]) << i;
  EXPECT_EQ(sg.back(), train.front());
  EXPECT_GT(sg.back(), 0.0f);
  EXPECT_EQ(pl::make_sigmas(m, "default", 10), sg);  // no sampler: the model's own (pndm)
  // Samplers without a diffusers class take PNDM's timesteps down to 0.
  const auto other = pl::make_sigmas(m, "default", 10, "dpm_2");
  ASSERT_EQ(other.size(), 11u);
  EXPECT_EQ(other[9], sg[9]);
  EXPECT_EQ(other.back(), 0.0f);

  // The stand-in's guided estimate is the constant 1.5 c (the null class gives 0), so eps is
  // constant along the trajectory and PLMS is exact: x = D + sigma_last (x_T - D) / sigma_0.
  Context ctx(1);
  auto o = opts({4}, 1);
  o.steps = 12;
  o.cfg_scale = 1.5f;
  diffuse::TorchGenerator gen(7);
  o.initial_noise = diffuse::randn(gen, {1, 1, 8, 8});
  pl::Generation g(m, o);
  while (!g.done()) g.step(ctx);
  EXPECT_EQ(g.nfe(), 13u);  // steps + 1: the warm-up evaluates twice
  const auto& s = g.sigmas();
  ASSERT_EQ(s.size(), 13u);
  const float target = class_value(4) * 1.5f;
  const Tensor& x = g.result();
  for (std::size_t i = 0; i < 64; ++i) {
    const float xt = o.initial_noise->data()[i] * std::sqrt(1.0f + s.front() * s.front());
    EXPECT_NEAR(x.data()[i], target + s.back() * (xt - target) / s.front(), 2e-5f) << i;
  }
}

TEST(Pipeline, CfgIsOneBatchedForwardEqualToTwoSeparateOnes) {
  auto net = flow_net();
  const auto m = flow_model(net);
  Context ctx(1);
  auto o = opts({4, 6}, 2);
  o.cfg_scale = 3.0f;
  pl::Generation g(m, o);
  const Tensor x = g.sample();  // the initial noise (flow: x = noise at sigma 1)
  const float sigma = g.sigmas().front();
  net->calls = 0;
  g.step(ctx);
  EXPECT_EQ(net->calls.load(), 1u);
  EXPECT_EQ(net->last_batch.load(), 4u);  // [uncond; cond]

  // The same guided estimate from two separate forwards.
  const float t[1] = {sigma * 1000.0f};
  const std::int64_t cond[2] = {4, 6}, uncond[2] = {kNull, kNull};
  const Tensor vc = net->forward(x, t, cond, ctx), vu = net->forward(x, t, uncond, ctx);
  const Tensor& preview = g.preview();
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float dc = x.data()[i] - sigma * vc.data()[i], du = x.data()[i] - sigma * vu.data()[i];
    EXPECT_EQ(preview.data()[i], du + 3.0f * (dc - du)) << i;
  }

  // Without guidance: one forward of the batch alone.
  o.cfg_scale = 1.0f;
  pl::Generation g1(m, o);
  g1.step(ctx);
  EXPECT_EQ(net->last_batch.load(), 2u);
}

TEST(Pipeline, SameBitsAtOneAndTwoThreads) {
  for (const auto& m : {flow_model(), eps_model()}) {
    auto o = opts({0, 5, 9}, 3);
    o.sampler = "dpmpp_2m_sde";
    Context c1(1), c2(2);
    const Tensor a = pl::generate(m, o, c1), b = pl::generate(m, o, c2), c = pl::generate(m, o, c2);
    EXPECT_TRUE(same_bits(a, b)) << m.name();
    EXPECT_TRUE(same_bits(b, c)) << m.name();
    o.seed = 43;
    EXPECT_FALSE(same_bits(a, pl::generate(m, o, c1))) << "the seed must matter";
  }
}

TEST(Pipeline, InitialNoiseIsTorchRandn) {
  const auto m = flow_model();
  pl::Generation g(m, opts({3}, 2));
  diffuse::TorchGenerator gen(42);
  EXPECT_TRUE(same_bits(g.sample(), diffuse::randn(gen, {2, 1, 8, 8})));
}

TEST(Pipeline, OptionErrors) {
  const auto m = flow_model();
  const auto bad = [&](auto edit, std::initializer_list<std::string> parts) {
    auto o = opts();
    edit(o);
    expect_error<diffuse::value_error>([&] { pl::Generation g(m, o); }, parts);
  };
  using O = pl::GenerateOptions;
  bad([](O& o) { o.sampler = "nope"; }, {"unknown sampler 'nope'", "dpmpp_2m"});
  bad([](O& o) { o.schedule = "wiggly"; }, {"unknown schedule 'wiggly'", "karras"});
  bad([](O& o) { o.schedule = "simple"; }, {"VP model"});
  bad([](O& o) { o.steps = 0; }, {"steps", "got 0"});
  bad([](O& o) { o.steps = -1; }, {"steps", "got -1"});
  bad([](O& o) { o.cfg_scale = std::numeric_limits<float>::quiet_NaN(); }, {"cfg_scale", "finite"});
  bad([](O& o) { o.cfg_scale = std::numeric_limits<float>::infinity(); }, {"cfg_scale"});
  bad([](O& o) { o.labels = {99}; }, {"class 99 is out of range", "0..9", "10 = unconditional"});
  bad([](O& o) { o.labels = {-1}; }, {"class -1"});
  bad([](O& o) { o.labels = {}; }, {"class-conditional", "give a class label"});
  bad([](O& o) { o.labels = {1, 2}; o.batch = 3; }, {"2 labels for a batch of 3"});
  bad([](O& o) { o.batch = 0; }, {"batch"});
  bad([](O& o) { o.width = 7; }, {"width", "multiple of 2"});
  bad([](O& o) { o.height = 0; }, {"height"});
  // A model without a null class cannot guide; an unconditional one takes no label.
  const pl::Model no_null(flow_net(true, false), kFlowConfig, "no-null");
  auto o = opts();
  o.cfg_scale = 2.0f;
  expect_error<diffuse::value_error>([&] { pl::Generation g(no_null, o); }, {"no null class", "cfg_scale must be 1"});
  const pl::Model uncond(flow_net(false, false), kFlowConfig, "uncond");
  expect_error<diffuse::value_error>([&] { pl::Generation g(uncond, opts()); }, {"unconditional"});
  Context ctx(1);
  EXPECT_EQ(pl::generate(uncond, opts({}), ctx).size(), 64u);
  // A VP model refuses the flow-only samplers.
  auto v = opts();
  v.sampler = "flow_euler";
  expect_error<diffuse::value_error>([&] { pl::Generation g(eps_model(), v); }, {"flow-matching"});
}

// dpm_adaptive: steps is a budget of trials. On the point-target stand-in the solver is exact, so
// every budget ends at the same sample (x0 + sigma_min * noise); one trial is one Euler step
// (1 forward) over the whole range, never the initial noise handed back untouched.
TEST(Pipeline, AdaptiveStepsAreABudget) {
  const auto m = eps_model();
  Context ctx(1);
  const auto run = [&](int steps, std::size_t* taken, std::size_t* nfe) {
    auto o = opts({4});
    o.sampler = "dpm_adaptive";
    o.steps = steps;
    o.cfg_scale = 1.0f;
    pl::Generation g(m, o);
    EXPECT_EQ(g.options().schedule, "karras");
    EXPECT_EQ(g.num_steps(), static_cast<std::size_t>(steps));  // the budget until done
    while (!g.done()) {
      g.step(ctx);
      EXPECT_LE(g.step_index(), static_cast<std::size_t>(steps));
      if (!g.done()) {
        EXPECT_EQ(g.num_steps(), static_cast<std::size_t>(steps));
      }
    }
    EXPECT_EQ(g.num_steps(), g.step_index());  // the trials taken, once done
    *taken = g.step_index();
    *nfe = g.nfe();
    return g.result();
  };
  std::size_t free_trials = 0, free_nfe = 0, t = 0, n = 0;
  const Tensor unlimited = run(10000, &free_trials, &free_nfe);
  std::printf("dpm_adaptive on the stand-in: %zu trials, %zu forwards\n", free_trials, free_nfe);
  ASSERT_GE(free_trials, 3u);
  // A budget the solver does not reach changes nothing, bit for bit. (A budget of exactly
  // free_trials is reached: its last trial is the first-order step to the end.)
  EXPECT_TRUE(same_bits(run(static_cast<int>(free_trials) + 1, &t, &n), unlimited));
  EXPECT_EQ(t, free_trials);
  // Smaller budgets end within them, at the same point: the solver is exact for this target up to
  // the stand-in's sigma -> t -> sigma interpolation (measured max differences: 1 trial 0.0124, 2
  // trials 0.0287, against an initial sample of scale 157; bound 0.06, twice the larger).
  for (int steps : {1, 2}) {
    const Tensor x = run(steps, &t, &n);
    EXPECT_EQ(t, static_cast<std::size_t>(steps));
    if (steps == 1) {
      EXPECT_EQ(n, 1u);
    }
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(double(x.data()[i]) - unlimited.data()[i]));
    std::printf("budget %d: max difference to the unlimited run %.4g\n", steps, worst);
    EXPECT_LT(worst, 0.06) << steps << " steps";
  }
  const Tensor noise = pl::Generation(m, [&] {
                         auto o = opts({4});
                         o.sampler = "dpm_adaptive";
                         o.cfg_scale = 1.0f;
                         return o;
                       }()).sample();
  double moved = 0;
  for (std::size_t i = 0; i < noise.size(); ++i) moved = std::max(moved, std::abs(double(noise.data()[i]) - unlimited.data()[i]));
  EXPECT_GT(moved, 10.0);  // from sigma_max ~157 noise to sigma_min: far from the initial sample

  auto o = opts();
  o.sampler = "dpm_adaptive";
  o.schedule = "exponential";
  expect_error<diffuse::value_error>([&] { pl::Generation g(m, o); },
                                     {"'dpm_adaptive' chooses its own noise levels", "no schedule (got 'exponential')"});
  o.schedule = "karras";
  EXPECT_NO_THROW(pl::Generation g(m, o));
}

TEST(Pipeline, NanNamesTheStep) {
  auto net = flow_net();
  const auto m = flow_model(net);
  Context ctx(1);
  pl::Generation g(m, opts());
  net->calls = 0;
  net->nan_at_call = 3;
  g.step(ctx);
  g.step(ctx);
  expect_error<diffuse::value_error>([&] { g.step(ctx); }, {"Generation::step", "step 3 of 8", "non-finite"});
  expect_error<diffuse::value_error>([&] { g.step(ctx); }, {"earlier step failed"});
}

TEST(Pipeline, LoadErrors) {
  expect_error<diffuse::io_error>([] { (void)pl::Model::load("/nonexistent/model"); }, {"no such model folder"});
  expect_error<diffuse::io_error>([] { (void)pl::Model::load(DIFFUSE_TEST_DATA_DIR); }, {"config.json"});
}

TEST(Pipeline, SchedulerConfigRangesAreChecked) {
  // Issue 10, 2.2: thresholding with ratio 5 / 1.5 read past x0 (a crash), -1 before it (exit 0);
  // clip_sample_range -1 clamped every x0 to an empty interval (a black image). Refused at load,
  // naming the key, the value and the allowed range.
  auto with = [](std::initializer_list<std::pair<const char*, nlohmann::json>> kv) {
    nlohmann::json j = kDdpmConfig;
    for (const auto& [k, v] : kv) j[k] = v;
    return j;
  };
  auto net = [] { return std::make_shared<StandIn>(Kind::epsilon, true, true); };
  for (double r : {5.0, 1.5, -1.0})
    expect_error<diffuse::value_error>(
        [&] { (void)pl::Model(net(), with({{"thresholding", true}, {"dynamic_thresholding_ratio", r}})); },
        {"dynamic_thresholding_ratio", "(0, 1]"});
  expect_error<diffuse::value_error>([&] { (void)pl::Model(net(), with({{"clip_sample_range", -1.0}})); },
                                     {"clip_sample_range", "= -1", "> 0"});
  expect_error<diffuse::value_error>(
      [&] { (void)pl::Model(net(), with({{"thresholding", true}, {"sample_max_value", 1e-60}})); },
      {"sample_max_value"});  // positive as a double, 0 once rounded to float
  // Issue 10, 2.4: steps_offset 1e15 made every timestep sigma_max (an image of noise, exit 0).
  expect_error<diffuse::value_error>([&] { (void)pl::Model(net(), with({{"steps_offset", 1e15}})); },
                                     {"steps_offset", "[0, 1000)"});
  // A valid thresholding config generates, and the threshold holds on the final x0.
  auto ac = diffuse::make_schedule(diffuse::ScheduleConfig::from_json(kDdpmConfig), 1).alphas_cumprod;
  auto eps = std::make_shared<StandIn>(Kind::epsilon, true, true, diffuse::train_sigmas(ac));
  const pl::Model m(eps, with({{"thresholding", true}, {"dynamic_thresholding_ratio", 0.9}, {"sample_max_value", 1.5}}));
  auto o = opts({3});
  o.sampler = "ddim";
  Context ctx;
  const Tensor x = pl::generate(m, o, ctx);
  for (float v : x.values()) EXPECT_TRUE(std::isfinite(v));
}

TEST(Pipeline, FewStepsWarning) {
  // Issue 10, 4.4: heun / dpm_2 / dpm_2_a / dpm_fast at 3 steps give noise (their algorithm);
  // the options say so instead of passing in silence.
  const auto m = eps_model();
  auto o = opts({3});
  o.sampler = "heun";
  o.steps = 3;
  const auto w = pl::option_warnings(m, o);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("heun"), std::string::npos) << w[0];
  EXPECT_NE(w[0].find("at least 6 steps"), std::string::npos) << w[0];
  o.steps = 6;
  EXPECT_TRUE(pl::option_warnings(m, o).empty());
  o.sampler = "k_dpm_2_a";
  o.steps = 4;
  EXPECT_EQ(pl::option_warnings(m, o).size(), 1u);
  o.sampler = "euler";
  o.steps = 1;
  EXPECT_TRUE(pl::option_warnings(m, o).empty());
}

TEST(Pipeline, ImagesAndParameters) {
  const auto m = flow_model();
  Context ctx(1);
  auto o = opts({1, 2, 3}, 3);
  const Tensor x = pl::generate(m, o, ctx);
  const auto imgs = pl::to_images(x, 4);
  ASSERT_EQ(imgs.size(), 3u);
  EXPECT_EQ(imgs[0].width, 32);
  EXPECT_EQ(imgs[0].channels, 1);
  // Nearest upscaling repeats each pixel in a 4x4 block.
  const auto one = pl::to_images(x, 1);
  EXPECT_EQ(imgs[1].pixels[5 * 32 + 6], one[1].pixels[1 * 8 + 1]);
  const auto rgba = pl::to_rgba8(x, 2);
  EXPECT_EQ(rgba.channels, 4);
  EXPECT_EQ(rgba.pixels[3], 255);
  EXPECT_EQ(rgba.pixels[0], one[2].pixels[0]);
  const auto gr = pl::grid(imgs);
  EXPECT_EQ(gr.width, 3 * 32 + 4 * 2);  // padding around and between

  const auto r = pl::resolve_options(m, o);
  EXPECT_EQ(pl::parameters_text(m, r, std::nullopt, {{"Scale", "4x (nearest)"}}),
            "class: 1 2 3, Steps: 8, Sampler: flow_euler, Schedule type: default, CFG scale: 2, Seed: 42, "
            "Size: 8x8, Model: standin-flow, Batch size: 3, Scale: 4x (nearest)");
  EXPECT_EQ(pl::parameters_text(m, r, 1),
            "class: 2, Steps: 8, Sampler: flow_euler, Schedule type: default, CFG scale: 2, Seed: 42, "
            "Size: 8x8, Model: standin-flow, Batch size: 3, Batch pos: 1");
}

}  // namespace
