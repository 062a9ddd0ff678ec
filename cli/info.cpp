// SPDX-License-Identifier: MIT
// `diffuse list` (samplers, schedules) and `diffuse info MODEL`.
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>

#include "cli.hpp"
#include "diffuse/pipeline/pipeline.hpp"
#include "diffuse/sample/registry.hpp"

namespace diffuse_cli {
namespace {

namespace pl = diffuse::pipeline;

std::string_view sampler_description(std::string_view name) {
  static constexpr std::pair<std::string_view, std::string_view> kText[] = {
      {"euler", "Euler (Karras et al. 2022 Alg. 2), 1st order ODE"},
      {"euler_a", "Euler ancestral, stochastic"},
      {"heun", "Heun (Karras et al. 2022 Alg. 1), 2nd order, 2 calls/step"},
      {"dpm_2", "DPM-Solver-2 (k-diffusion), 2 calls/step"},
      {"dpm_2_a", "DPM-Solver-2 ancestral, stochastic"},
      {"lms", "linear multistep, order 4"},
      {"dpmpp_2m", "DPM-Solver++(2M), 2nd order multistep (Lu et al. 2022)"},
      {"dpmpp_3m", "DPM-Solver++(3M) ODE"},
      {"dpmpp_2m_sde", "DPM-Solver++(2M) SDE, stochastic"},
      {"dpmpp_3m_sde", "DPM-Solver++(3M) SDE, stochastic"},
      {"dpmpp_2s_a", "DPM-Solver++(2S) ancestral, 2 calls/step"},
      {"dpmpp_sde", "DPM-Solver++ SDE (k-diffusion), 2 calls/step"},
      {"dpm_fast", "DPM-Solver fast (orders 3, 2, 1)"},
      {"dpm_adaptive", "DPM-Solver-12/23, adaptive step size; --steps N = at most N trials (see below)"},
      {"unipc", "UniPC predictor-corrector (Zhao et al. 2023), bh2"},
      {"deis", "DEIS multistep (Zhang & Chen 2023), order 3"},
      {"lcm", "latent consistency model sampling"},
      {"ddim", "DDIM (Song et al. 2021), eta 0"},
      {"ddpm", "DDPM ancestral (Ho et al. 2020)"},
      {"pndm", "PLMS (Liu et al. 2022; PNDMScheduler, A1111 PLMS), steps + 1 calls"},
      {"flow_euler", "flow matching Euler (FlowMatchEulerDiscreteScheduler), flow models"},
      {"flow_heun", "flow matching Heun, flow models, 2 calls/step"},
  };
  for (const auto& [n, d] : kText)
    if (n == name) return d;
  return "";
}

std::string thousands(std::size_t v) {
  const std::string digits = std::to_string(v);
  std::string s;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s.push_back(',');
    s.push_back(digits[i]);
  }
  return s;
}

}  // namespace

int run_list() {
  std::printf("samplers (--sampler):\n");
  for (const auto& name : diffuse::list_samplers()) {
    std::string text(sampler_description(name));
    if (const std::size_t n = diffuse::min_sensible_steps(name); n > 1)
      text += "; noise below " + std::to_string(n) + " steps";
    std::printf("  %-14s %s\n", name.c_str(), text.c_str());
  }
  std::printf("\nschedules (--schedule):\n");
  for (const auto& s : pl::list_schedules()) std::printf("  %-14s %s\n", s.name.c_str(), s.description.c_str());
  std::printf("\ndpm_adaptive chooses its own step sizes from the model's largest to its smallest noise level\n"
              "(the ends of karras; it takes no other --schedule). One of its steps is a trial, accepted or\n"
              "rejected (2-3 network calls); --steps N allows at most N: trial N goes straight to the end with\n"
              "an Euler step, so it ends within N steps, usually sooner, and the progress total then becomes\n"
              "the steps taken.\n");
  return kOk;
}

int run_info(const std::string& path) {
  const pl::Model m = pl::Model::load(path);
  const auto& ni = m.info();
  const auto& sc = m.schedule_config();
  // Names, paths and config strings come from files: printed through printable().
  std::printf("model         %s (%s)\n", printable(m.name()).c_str(), printable(m.path().string()).c_str());
  std::printf("architecture  %s\n", printable(ni.architecture).c_str());
  std::printf("parameters    %s (weights %.2f MB on disk)\n", thousands(ni.parameters).c_str(),
              static_cast<double>(m.weights_bytes()) / 1e6);
  std::string dtypes;
  for (const auto& [dt, n] : ni.dtypes) {
    if (!dtypes.empty()) dtypes += ", ";
    dtypes += dt;
    dtypes += " x";
    dtypes += std::to_string(n);
  }
  std::printf("dtypes        %s (tensors per dtype)\n", printable(dtypes).c_str());
  if (m.latent()) {
    std::printf("pipeline      %s\n", printable(m.pipeline_class().empty() ? "(none)" : m.pipeline_class()).c_str());
    std::string by;
    if (m.vae())
      by = "the VAE (AutoencoderKL, " + thousands(m.vae()->parameters()) + " parameters)";
    else
      by = "the tiny VAE (AutoencoderTiny, " + thousands(m.tiny_vae()->parameters()) + " parameters)";
    std::printf("latents       %zu channel%s, %zux%zu, decoded by %s to %zu-channel images of %zux%zu (sizes: "
                "multiples of %zu)\n",
                m.sample_channels(), m.sample_channels() == 1 ? "" : "s", ni.sample_size, ni.sample_size, by.c_str(),
                m.image_channels(), m.image_size(), m.image_size(), ni.size_multiple * m.latent_scale());
    if (m.inpainting())
      std::printf("inpainting    the network takes %zu channels: the latents, the mask and the masked image's latents "
                  "(--init-image, --mask)\n",
                  ni.in_channels);
  } else {
    std::printf("sample        %zu channel%s, %zux%zu (sizes: multiples of %zu)\n", ni.in_channels,
                ni.in_channels == 1 ? "" : "s", ni.sample_size, ni.sample_size, ni.size_multiple);
  }
  if (m.class_conditional()) {
    std::size_t top = ni.num_classes;
    if (m.null_class() && static_cast<std::size_t>(*m.null_class()) + 1 == top) --top;
    std::printf("classes       0..%zu", top - 1);
    if (m.null_class()) std::printf(" (%lld = unconditional, used for guidance)", static_cast<long long>(*m.null_class()));
    if (!m.class_names().empty()) std::printf("; names listed below (--class takes a number or a name)");
    std::printf("\n");
  } else if (m.text_conditional()) {
    for (std::size_t i = 0; i < m.text_encoders().size(); ++i) {
      const auto& t = m.text_encoders()[i];
      const auto& c = t.encoder->config();
      std::printf("%-14s%s (%s parameters: width %zu, %zu layers, %s), %zu-token sequences, %zu-token "
                  "vocabulary; -p \"prompt\" [-n \"negative\"]\n",
                  i == 0 ? "text" : "text 2", c.with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel",
                  thousands(t.encoder->parameters()).c_str(), c.hidden_size, c.num_hidden_layers,
                  printable(c.hidden_act).c_str(), t.tokenizer->max_length(), t.tokenizer->vocab_size());
    }
  } else {
    std::printf("classes       none (unconditional)\n");
  }
  std::string pred = m.prediction() == diffuse::Prediction::flow           ? "flow (velocity)"
                     : m.prediction() == diffuse::Prediction::epsilon      ? "epsilon"
                     : m.prediction() == diffuse::Prediction::v_prediction ? "v_prediction"
                                                                           : "sample (x0)";
  std::printf("scheduler     %s, %lld train steps, prediction %s", printable(sc.class_name).c_str(),
              static_cast<long long>(sc.num_train_timesteps), pred.c_str());
  if (m.prediction() == diffuse::Prediction::flow) {
    std::printf(", shift %g%s", sc.shift, sc.use_dynamic_shifting ? ", dynamic shifting" : "");
  } else {
    std::printf(", betas %s %g..%g, sigmas %.4g..%.4g",
                std::string(diffuse::to_string(sc.beta_schedule.value_or(diffuse::BetaSchedule::linear))).c_str(),
                sc.beta_start.value_or(1e-4), sc.beta_end.value_or(0.02), static_cast<double>(m.train_sigmas().front()),
                static_cast<double>(m.train_sigmas().back()));
    if (m.parameterization().clip_sample) std::printf(", clip_sample");
  }
  std::printf("\n");
  const auto& d = m.defaults();
  std::printf("defaults      --sampler %s --schedule %s --steps %d --cfg-scale %g\n", printable(d.sampler).c_str(),
              printable(d.schedule).c_str(),
              d.steps, static_cast<double>(d.cfg_scale));
  if (!m.class_names().empty()) {
    std::printf("\nclass names:\n");
    const auto& labels = m.class_names().labels();
    for (std::size_t id = 0; id < labels.size(); ++id)
      if (!labels[id].empty()) std::printf("  %4zu %s\n", id, printable(labels[id]).c_str());
  }
  return kOk;
}

}  // namespace diffuse_cli
