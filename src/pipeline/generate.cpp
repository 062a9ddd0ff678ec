// SPDX-License-Identifier: MIT
// pipeline::Generation: options, noise, denoiser (parameterisation + batched CFG), sampler loop.
#include <algorithm>
#include <charconv>
#include <limits>
#include <cmath>
#include <cstdio>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/core/memory.hpp"
#include "diffuse/core/random.hpp"
// GCC 12 at -O3 reports a false -Wfree-nonheap-object inside guidance.hpp's concat_batch (a
// std::vector assignment from an initializer list) once it is inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#endif
#include "diffuse/denoise/guidance.hpp"
#include "diffuse/denoise/parameterization.hpp"
#include "diffuse/pipeline/generate.hpp"
#include "diffuse/pipeline/preview.hpp"
#include "diffuse/sample/torch_noise.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {
namespace {

constexpr int kMaxSteps = 10000;
constexpr std::size_t kMaxBatch = 1024;
constexpr std::size_t kMaxSide = 4096;

std::string label_range(const Model& m) {
  const auto& ni = m.info();
  std::size_t top = ni.num_classes;
  const auto null = m.null_class();
  if (null && static_cast<std::size_t>(*null) + 1 == top) --top;  // the null row counted in num_classes
  std::string s = top ? "0.." + std::to_string(top - 1) : "none";
  if (null) s += "; " + std::to_string(*null) + " = unconditional";
  return s;
}

/// The adaptive DPM-Solver, whose steps are trials within a budget (see GenerateOptions::steps).
bool adaptive(const Sampler<float>& s) { return s.name() == "dpm_adaptive"; }

/// A sampler that accepts flow-space denoisers directly (flow_euler, euler, heun, lms, lcm).
bool runs_in_flow_space(const Sampler<float>& s) { return s.accepts(NoiseSpace::flow); }

/// The largest clip_skip the model's text encoders allow (at most 12, A1111's range).
std::size_t max_clip_skip(const Model& m) {
  std::size_t n = 12;
  const bool xl = m.info().pooled_dim > 0;  // SDXL's states are already the penultimate layer's
  for (const auto& t : m.text_encoders()) n = std::min(n, t.encoder->config().num_hidden_layers - (xl ? 1 : 0));
  return std::max<std::size_t>(n, 1);
}

std::string fmt_float(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// ---- img2img: the init image and strength (GenerateOptions::init_image) ----

/// Checks the init image against the model and takes the generation's width and height from it
/// (before the defaults fill them in). Nothing without one, but a strength alone is refused.
void resolve_init_image(const Model& model, GenerateOptions& o, std::string_view where) {
  if (o.mask && !o.init_image)
    raise<value_error>(where, "a mask is for inpainting: it needs an init_image (the image whose masked part is "
                              "generated anew)");
  if (!o.init_image) {
    if (o.strength)
      raise<value_error>(where, "strength " + fmt_float(*o.strength) + " is for image-to-image: it needs an init_image");
    return;
  }
  if (!model.vae())
    raise<value_error>(where, model.name() + (model.latent() ? " has only a tiny VAE (TAESD)" : " generates images directly") +
                                  ": image-to-image (init_image) needs a VAE to encode the image");
  const Tensor& im = *o.init_image;
  const std::size_t ch = model.vae()->config().in_channels;
  if (im.ndim() != 4 || im.dim(1) != ch)
    raise<value_error>(where, "init_image must be [1 or batch, " + std::to_string(ch) + ", height, width], got " +
                                  shape_string(im.shape()));
  if (im.dim(0) != 1 && im.dim(0) != o.batch)
    raise<value_error>(where, "give one init_image for all images or one per image: " + std::to_string(im.dim(0)) +
                                  " images for a batch of " + std::to_string(o.batch));
  const std::size_t H = im.dim(2), W = im.dim(3);
  if ((o.width && *o.width != W) || (o.height && *o.height != H))
    raise<value_error>(where, "init_image is " + std::to_string(W) + "x" + std::to_string(H) + " but width x height is " +
                                  (o.width ? std::to_string(*o.width) : std::string("(unset)")) + "x" +
                                  (o.height ? std::to_string(*o.height) : std::string("(unset)")) +
                                  ": leave them unset (the image's size) or give the image's");
  const std::size_t mult = std::max<std::size_t>(model.info().size_multiple, 1) * model.latent_scale();
  if (W % mult != 0 || H % mult != 0 || W < mult || H < mult || W > kMaxSide || H > kMaxSide)
    raise<value_error>(where, "init_image is " + std::to_string(W) + "x" + std::to_string(H) + ": " + model.name() +
                                  " needs sizes that are multiples of " + std::to_string(mult) + " up to " +
                                  std::to_string(kMaxSide) + " (e.g. " + std::to_string(std::max(mult, W / mult * mult)) +
                                  "x" + std::to_string(std::max(mult, H / mult * mult)) + ")");
  for (float v : im.values())
    if (!std::isfinite(v)) raise<value_error>(where, "init_image contains a non-finite value");
  if (o.mask) {
    const Tensor& m = *o.mask;
    if (m.ndim() != 4 || m.dim(1) != 1)
      raise<value_error>(where, "mask must be [1 or batch, 1, height, width] (one channel, 1 = repaint), got " +
                                    shape_string(m.shape()));
    if (m.dim(0) != 1 && m.dim(0) != o.batch)
      raise<value_error>(where, "give one mask for all images or one per image: " + std::to_string(m.dim(0)) +
                                    " masks for a batch of " + std::to_string(o.batch));
    if (m.dim(2) != H || m.dim(3) != W)
      raise<value_error>(where, "the mask is " + std::to_string(m.dim(3)) + "x" + std::to_string(m.dim(2)) +
                                    " but init_image is " + std::to_string(W) + "x" + std::to_string(H) +
                                    ": they must be the same size");
    for (float v : m.values())
      if (!std::isfinite(v)) raise<value_error>(where, "the mask contains a non-finite value");
  }
  o.width = W;
  o.height = H;
  if (!o.strength) o.strength = o.mask ? 1.0f : 0.8f;  // diffusers' defaults (inpainting, img2img)
  if (!(*o.strength > 0.0f && *o.strength <= 1.0f))
    raise<value_error>(where, "strength must be in (0, 1] (0 keeps the image, 1 replaces it), got " + fmt_float(*o.strength));
}

/** diffusers' get_timesteps: the steps run, min(int(n * strength), n), with strength the double
 *  Python would hold for the number typed: the float's shortest decimal (0.7f is 0.69999999, and
 *  10 x that would run 6 steps where diffusers' 10 x 0.7 runs 7). */
std::size_t init_timesteps(int steps, float strength) {
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, strength);
  double s = static_cast<double>(strength);
  if (ec == std::errc()) (void)std::from_chars(buf, end, s);
  const auto n = static_cast<std::size_t>(steps);
  return std::min(static_cast<std::size_t>(static_cast<double>(steps) * s), n);
}

}  // namespace

std::vector<std::string> option_warnings(const Model& model, const GenerateOptions& in) {
  const GenerateOptions o = resolve_options(model, in);
  std::vector<std::string> out;
  const std::size_t need = min_sensible_steps(o.sampler);
  if (static_cast<std::size_t>(*o.steps) < need)
    out.push_back("sampler '" + o.sampler + "' at " + std::to_string(*o.steps) + " step" + (*o.steps == 1 ? "" : "s") +
                  " will most likely give noise: its second-order step needs at least " + std::to_string(need) +
                  " steps (see `diffuse list`)");
  return out;
}

GenerateOptions resolve_options(const Model& model, const GenerateOptions& in) {
  constexpr std::string_view where = "resolve_options";
  GenerateOptions o = in;
  const Defaults& d = model.defaults();
  const auto& ni = model.info();
  if (o.sampler.empty()) o.sampler = d.sampler;
  // The sampler: make_sampler names the known ones when the name is unknown.
  const auto probe = make_sampler<float>(o.sampler, {1.0f, 0.5f, 0.0f}, o.sampler_params);
  if (adaptive(*probe)) {
    // dpm_adaptive picks its own step sizes over the model's whole noise range: the ends of the
    // karras schedule (as A1111 does); no other schedule's interior points would be used.
    if (!o.schedule.empty() && o.schedule != "karras")
      raise<value_error>(where, "sampler 'dpm_adaptive' chooses its own noise levels between the model's largest and "
                                "smallest; it takes no schedule (got '" + o.schedule + "')");
    o.schedule = "karras";
  }
  if (o.schedule.empty()) o.schedule = d.schedule;
  if (!o.steps) o.steps = d.steps;
  if (!o.cfg_scale) o.cfg_scale = model.guidable() ? d.cfg_scale : 1.0f;
  resolve_init_image(model, o, where);  // img2img: the size comes from the image
  if (model.inpainting() && !model.vae())
    raise<value_error>(where, model.name() + " is an inpainting model: it needs its VAE to encode the masked image "
                                             "(it has only a tiny VAE)");
  if (!o.width) o.width = model.image_size();
  if (!o.height) o.height = model.image_size();

  if (model.space() == NoiseSpace::ve && !probe->accepts(NoiseSpace::ve))
    raise<value_error>(where, "sampler '" + o.sampler + "' is for flow-matching models; " + model.name() +
                                  " is a diffusion (VP) model");
  bool known_schedule = false;
  for (const auto& s : list_schedules()) known_schedule = known_schedule || s.name == o.schedule;
  if (!known_schedule) {
    std::string names;
    for (const auto& s : list_schedules()) names += (names.empty() ? "" : ", ") + s.name;
    raise<value_error>(where, "unknown schedule '" + o.schedule + "' (known: " + names + ")");
  }
  if (*o.steps < 1 || *o.steps > kMaxSteps)
    raise<value_error>(where, "steps must be in 1.." + std::to_string(kMaxSteps) + ", got " + std::to_string(*o.steps));
  if (o.init_image) {  // img2img: the schedule's cut must keep a step
    if (adaptive(*probe))
      raise<value_error>(where, "sampler 'dpm_adaptive' chooses its own noise levels from the model's largest; it cannot "
                                "start part-way for an init_image (strength): choose another sampler");
    if (init_timesteps(*o.steps, *o.strength) < 1)
      raise<value_error>(where, "strength " + fmt_float(*o.strength) + " with " + std::to_string(*o.steps) +
                                    " steps runs int(" + std::to_string(*o.steps) + " x " + fmt_float(*o.strength) +
                                    ") = 0 steps: give a strength of at least " + fmt_float(1.0 / *o.steps) +
                                    " or more steps");
  }
  if (!std::isfinite(*o.cfg_scale))
    raise<value_error>(where, "cfg_scale must be a finite number, got " + fmt_float(*o.cfg_scale));
  if (*o.cfg_scale != 1.0f && !model.guidable())
    raise<value_error>(where, model.name() + " has no null class, so it cannot use classifier-free guidance: cfg_scale must be 1, got " +
                                  fmt_float(*o.cfg_scale));
  if (o.batch < 1 || o.batch > kMaxBatch)
    raise<value_error>(where, "batch must be in 1.." + std::to_string(kMaxBatch) + ", got " + std::to_string(o.batch));

  if (model.class_conditional()) {
    if (o.labels.empty())
      raise<value_error>(where, model.name() + " is class-conditional: give a class label (" + label_range(model) + ")");
    if (o.labels.size() != 1 && o.labels.size() != o.batch)
      raise<value_error>(where, "give one class label for all images or one per image: " + std::to_string(o.labels.size()) +
                                    " labels for a batch of " + std::to_string(o.batch));
    for (std::int64_t l : o.labels)
      if (!model.valid_label(l))
        raise<value_error>(where, "class " + std::to_string(l) + " is out of range for " + model.name() + " (" +
                                      label_range(model) + ")");
  } else if (!o.labels.empty()) {
    raise<value_error>(where, model.name() + " is unconditional: it takes no class label");
  }

  if (model.text_conditional()) {
    if (o.prompts.empty())
      raise<value_error>(where, model.name() + " generates from text: give a prompt (\"\" for the empty prompt)");
    if (o.prompts.size() != 1 && o.prompts.size() != o.batch)
      raise<value_error>(where, "give one prompt for all images or one per image: " + std::to_string(o.prompts.size()) +
                                    " prompts for a batch of " + std::to_string(o.batch));
    if (o.negative_prompts.size() > 1 && o.negative_prompts.size() != o.batch)
      raise<value_error>(where, "give one negative prompt for all images or one per image: " +
                                    std::to_string(o.negative_prompts.size()) + " negative prompts for a batch of " +
                                    std::to_string(o.batch));
    if (!o.negative_prompts.empty() && *o.cfg_scale == 1.0f)
      raise<value_error>(where, "a negative prompt needs classifier-free guidance: cfg_scale 1 ignores it");
    // Every prompt parsed and tokenized now, so that a bad one is refused before any work.
    for (const auto* list : {&o.prompts, &o.negative_prompts})
      for (std::size_t i = 0; i < list->size(); ++i) try {
          for (const auto& t : model.text_encoders()) (void)text::tokenize_prompt(*t.tokenizer, (*list)[i], o.prompt);
        } catch (const value_error& e) {
          raise<value_error>(where, std::string(list == &o.prompts ? "prompt " : "negative prompt ") +
                                        std::to_string(i + 1) + ": " + e.what());
        }
    const std::size_t max_skip = max_clip_skip(model);
    if (o.clip_skip < 1 || o.clip_skip > max_skip)
      raise<value_error>(where, "clip_skip must be in 1.." + std::to_string(max_skip) + " for " + model.name() +
                                    ", got " + std::to_string(o.clip_skip));
  } else {
    if (!o.prompts.empty() || !o.negative_prompts.empty())
      raise<value_error>(where, model.name() + " is not conditioned on text: it takes no prompt" +
                                    (model.class_conditional() ? " (give a class label)" : ""));
  }
  if (!(o.guidance_rescale >= 0.0f && o.guidance_rescale <= 1.0f))
    raise<value_error>(where, "guidance_rescale must be in 0..1, got " + fmt_float(o.guidance_rescale));

  const std::size_t mult = std::max<std::size_t>(ni.size_multiple, 1) * model.latent_scale();
  for (const auto& [name, v] : {std::pair{"width", *o.width}, std::pair{"height", *o.height}}) {
    if (v < 1 || v > kMaxSide)
      raise<value_error>(where, std::string(name) + " must be in 1.." + std::to_string(kMaxSide) + ", got " + std::to_string(v));
    if (v % mult != 0)
      raise<value_error>(where, std::string(name) + " must be a multiple of " + std::to_string(mult) + " for " +
                                    model.name() + ", got " + std::to_string(v));
  }
  if (o.tiny_decode && !model.tiny_vae())
    raise<value_error>(where, model.name() + (model.latent() ? " has no tiny VAE (TAESD) for tiny_decode"
                                                             : " generates images directly: there is nothing to decode"));
  {
    const std::uint64_t need = estimate_generation_bytes(model, o);
    const std::uint64_t limit = resolve_memory_limit(o.memory_limit);
    if (need > limit)
      raise<memory_error>(where, std::to_string(o.batch) + " image" + (o.batch == 1 ? "" : "s") + " of " +
                                     std::to_string(*o.width) + "x" + std::to_string(*o.height) + " on " + model.name() +
                                     (o.batch == 1 ? " needs about " : " need about ") + format_bytes(need) + " (the network's activations for a batch of " +
                                     std::to_string(o.batch * (*o.cfg_scale != 1.0f ? 2 : 1)) +
                                     (*o.cfg_scale != 1.0f ? " with guidance" : "") + " and the sampler's state); the memory limit is " +
                                     format_bytes(limit) +
                                     (o.memory_limit ? "" : " (3/4 of the physical memory; set memory_limit / --memory-limit)"));
  }
  if (o.noise_seed_delta != 0 && o.rng == NoiseRng::torch)
    raise<value_error>(where, "noise_seed_delta (A1111's ENSD) applies to the A1111 generators: set rng to a1111_cpu or "
                              "a1111_nv");
  if (o.rng != NoiseRng::torch && o.rng != NoiseRng::a1111_cpu && o.rng != NoiseRng::a1111_nv)
    raise<value_error>(where, "rng is not one of torch, a1111_cpu, a1111_nv");
  if (o.initial_noise) {
    const std::size_t ls = model.latent_scale();
    const Shape want{o.batch, model.sample_channels(), *o.height / ls, *o.width / ls};
    if (o.initial_noise->shape() != want)
      raise<value_error>(where, "initial_noise has shape " + shape_string(o.initial_noise->shape()) + ", expected " +
                                    shape_string(want));
    for (float v : o.initial_noise->values())
      if (!std::isfinite(v)) raise<value_error>(where, "initial_noise contains a non-finite value");
  }
  return o;
}

std::uint64_t estimate_generation_bytes(const Model& model, const GenerateOptions& o) {
  const std::size_t ls = model.latent_scale();
  const std::size_t batch = o.batch, h = o.height.value_or(model.image_size()) / ls,
                    w = o.width.value_or(model.image_size()) / ls;
  const bool cfg = o.cfg_scale && *o.cfg_scale != 1.0f;
  const double state = static_cast<double>(kGenerationStateTensors) * static_cast<double>(batch) *
                       static_cast<double>(model.sample_channels()) * static_cast<double>(h) * static_cast<double>(w) *
                       sizeof(float);
  const double net = static_cast<double>(model.network().forward_bytes(cfg ? 2 * batch : batch, h, w));
  double total = state + net;
  if (model.latent()) {  // the decode runs image by image, after the sampler: whichever is larger
    const double images = static_cast<double>(batch) * static_cast<double>(model.image_channels()) *
                          static_cast<double>(h * ls) * static_cast<double>(w * ls) * sizeof(float);
    const bool tiny = o.tiny_decode || !model.vae();
    const double decode = static_cast<double>(tiny ? model.tiny_vae()->decode_bytes(1, h, w)
                                                   : model.vae()->decode_peak_bytes(h, w, o.decode));
    total = std::max(total, state + images + decode);
    if ((o.init_image || model.inpainting()) && model.vae()) {  // img2img, inpainting: the encodes run image by
      // image, before the sampler (the init images, the masked images and the masks kept)
      const double inputs =
          2.0 * static_cast<double>(o.init_image ? o.init_image->size() : 3 * h * ls * w * ls) * sizeof(float) +
          (o.mask ? static_cast<double>(o.mask->size()) * sizeof(float) : 0.0);
      const double encode = static_cast<double>(model.vae()->encode_bytes(1, h * ls, w * ls));
      total = std::max(total, state + inputs + encode);
    }
  }
  return total >= 1.8e19 ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(total);
}

namespace {
/// std::bad_alloc / std::length_error (a vector asked for too much) as the typed memory_error.
[[noreturn]] void rethrow_allocation_failure(std::string_view where, const std::exception& e) {
  raise<memory_error>(where, std::string("an allocation failed (out of memory: ") + e.what() + ")");
}

/// Caps a context's activation arena for the duration of a step.
class ArenaLimit {
 public:
  ArenaLimit(kernels::Arena& a, std::uint64_t limit) : a_(a), old_(a.limit()) { a_.set_limit(limit); }
  ~ArenaLimit() { a_.set_limit(old_); }
  ArenaLimit(const ArenaLimit&) = delete;
  ArenaLimit& operator=(const ArenaLimit&) = delete;

 private:
  kernels::Arena& a_;
  std::uint64_t old_;
};
}  // namespace

// ---- Generation ----

struct Generation::State {
  Model model;
  GenerateOptions opt;
  std::vector<float> sigmas;           // in the sampler's space
  /// What one kind of forward is conditioned on: labels, or text states (+ SDXL's added ones).
  struct Cond {
    std::vector<std::int64_t> labels;
    Tensor text, pooled, time_ids;
  };
  Cond cond, uncond, both;  // per forward kind
  bool encoded = false;     // the prompts' text states are in cond / uncond / both
  kernels::Context* ctx = nullptr;     // set for the duration of step()
  AnyDenoiser<float> denoiser;
  std::unique_ptr<Sampler<float>> sampler;
  TorchGenerator gen;
  std::optional<ImageNoise> image_rng;  // the A1111 modes' per-image generators (GenerateOptions::rng)
  NoiseSource<float> noise;
  Tensor x;
  Tensor images;  // the decoded result of a latent model
  bool decoded = false;
  // img2img (GenerateOptions::init_image): the generator as it was before the posterior noise,
  // the noise to add at sigmas[0], whether the sampler walks flow space, and whether it is done.
  TorchGenerator posterior_gen;
  Tensor added_noise;
  bool flow_sampler = false;
  bool image_encoded = false;
  // Inpainting (GenerateOptions::mask, Model::inpainting()): whether the sample starts from pure
  // noise (strength 1), whether the init image's latents z0 are drawn, the generator before the
  // masked image's posterior noise, the mask at latent size [1 or B, 1, h, w] in {0, 1}, the
  // masked image's latents [1 or B, C, h, w] (inpainting model), z0 [1 or B, C, h, w] and whether
  // the known region is blended back after each step (legacy inpainting).
  bool from_noise = false;
  bool draw_z0 = false;
  TorchGenerator masked_gen;
  Tensor mask_latent, masked_latents, image_latents;
  bool blend = false;
  Tensor empty;
  bool failed = false;

  State(const Model& m, GenerateOptions o) : model(m), opt(std::move(o)), gen(opt.seed) {
    if (opt.rng != NoiseRng::torch) image_rng.emplace(opt.rng, opt.seed, opt.batch, opt.noise_seed_delta);
  }
  /// The first noise of the batch: torch.randn(shape) from the seed's generator (diffusers), or
  /// each image's generator's first randn (A1111).
  Tensor first_noise(const Shape& shape) { return image_rng ? image_rng->first(shape) : randn(gen, shape); }
  NoiseSource<float> step_noise() { return image_rng ? image_noise_source<float>(*image_rng) : torch_noise<float>(gen); }

  void encode(kernels::Context& c);
  void encode_image(kernels::Context& c);
  void blend_known_region();
  /// Clean latents `z0` noised with `e` to noise level `sigma` (diffusers' add_noise in VE form,
  /// z0 + sigma e; a flow sampler's scale_noise, (1 - sigma) z0 + sigma e).
  float noised(float z0, float e, float sigma) const {
    return flow_sampler ? (1.0f - sigma) * z0 + sigma * e : z0 + sigma * e;
  }

  /// An inpainting network's input: [x_in, mask, masked image latents] along the channels, row r
  /// of a batch of B or 2B (guidance) taking image r mod B's mask and latents.
  Tensor inpaint_input(const Tensor& x_in) const {
    const std::size_t N = x_in.dim(0), C = x_in.dim(1), hw = x_in.dim(2) * x_in.dim(3), B = opt.batch;
    const std::size_t mc = masked_latents.dim(1);
    Tensor in({N, C + 1 + mc, x_in.dim(2), x_in.dim(3)});
    for (std::size_t r = 0; r < N; ++r) {
      const std::size_t b = r % B;
      float* o = in.data() + r * (C + 1 + mc) * hw;
      std::copy_n(x_in.data() + r * C * hw, C * hw, o);
      std::copy_n(mask_latent.data() + (mask_latent.dim(0) == 1 ? 0 : b) * hw, hw, o + C * hw);
      std::copy_n(masked_latents.data() + (masked_latents.dim(0) == 1 ? 0 : b) * mc * hw, mc * hw, o + (C + 1) * hw);
    }
    return in;
  }

  /// The network as `(x_in, t) -> output` with the conditioning of one branch bound.
  struct Net {
    State* s;
    const Cond* c;
    Tensor operator()(const Tensor& x_in, float t) const {
      const float ts[1] = {t};
      Tensor joined;
      if (s->model.inpainting()) joined = s->inpaint_input(x_in);
      const Tensor& in = s->model.inpainting() ? joined : x_in;
      if (c->text.size() == 0) return s->model.network().forward(in, ts, c->labels, *s->ctx);
      models::Conditioning mc;
      mc.text = &c->text;
      if (c->pooled.size() != 0) mc.pooled = &c->pooled;
      if (c->time_ids.size() != 0) mc.time_ids = &c->time_ids;
      return s->model.network().forward_conditioned(in, ts, mc, *s->ctx);
    }
  };
  using Parameterized = ParameterizedDenoiser<float, Net>;

  /// The guidance model: the uncond / cond branches, or both in one batch-2B forward.
  struct Branches {
    static constexpr bool batched_cfg = true;
    Parameterized u, c, b;
    Tensor operator()(const Tensor& x, float sigma, Branch br) const {
      switch (br) {
        case Branch::uncond: return u(x, sigma);
        case Branch::cond: return c(x, sigma);
        case Branch::both: break;
      }
      return b(x, sigma);
    }
  };
};

namespace {
/// Rows first .. first + n - 1 of `t` along dim 0.
Tensor batch_rows(const Tensor& t, std::size_t first, std::size_t n) {
  Shape shape = t.shape();
  const std::size_t row = t.size() / shape[0];
  shape[0] = n;
  Tensor out(shape);
  std::copy_n(t.data() + first * row, n * row, out.data());
  return out;
}
}  // namespace

// The encode stage: every prompt of the generation in one batch, [negative...; prompt...] when
// guiding (the order of the guidance batch), split into the branches' text states.
void Generation::State::encode(kernels::Context& c) {
  const std::size_t B = opt.batch;
  const bool cfg = *opt.cfg_scale != 1.0f;
  const auto& ni = model.info();
  auto pick = [](const std::vector<std::string>& v, std::size_t b) {
    return v.empty() ? std::string() : v.size() == 1 ? v[0] : v[b];
  };
  // SDXL without a negative prompt: zero states for the unconditional branch (diffusers).
  const bool zero_uncond = cfg && ni.pooled_dim > 0 && opt.negative_prompts.empty() && model.force_zeros_for_empty_prompt();
  std::vector<std::string> prompts;
  if (cfg && !zero_uncond)
    for (std::size_t b = 0; b < B; ++b) prompts.push_back(pick(opt.negative_prompts, b));
  for (std::size_t b = 0; b < B; ++b) prompts.push_back(pick(opt.prompts, b));
  TextConditioning tc = encode_text(model, prompts, c, opt.clip_skip, opt.prompt);
  if (cfg && !zero_uncond && opt.clip_skip > 1 && !opt.clip_skip_negative) {
    // diffusers: the negative prompts at the last layer. The same batch again (so the chunk
    // counts agree), its negative rows taken.
    const TextConditioning last = encode_text(model, prompts, c, 1, opt.prompt);
    std::copy_n(last.hidden.data(), last.hidden.size() / 2, tc.hidden.data());
  }
  const bool pooled = tc.pooled.size() != 0;
  if (!cfg) {
    cond.text = std::move(tc.hidden);
    cond.pooled = std::move(tc.pooled);
  } else if (zero_uncond) {
    cond.text = std::move(tc.hidden);
    cond.pooled = std::move(tc.pooled);
    uncond.text = Tensor(cond.text.shape());
    if (pooled) uncond.pooled = Tensor(cond.pooled.shape());
  } else {
    cond.text = batch_rows(tc.hidden, B, B);
    uncond.text = batch_rows(tc.hidden, 0, B);
    if (pooled) {
      cond.pooled = batch_rows(tc.pooled, B, B);
      uncond.pooled = batch_rows(tc.pooled, 0, B);
    }
  }
  if (ni.time_ids > 0) {  // (original size, crop top-left, target size) of the image, as diffusers' defaults
    const auto h = static_cast<float>(*opt.height), w = static_cast<float>(*opt.width);
    const float ids[6] = {h, w, 0.0f, 0.0f, h, w};
    cond.time_ids = Tensor({B, ni.time_ids});
    for (std::size_t b = 0; b < B; ++b) std::copy_n(ids, std::min<std::size_t>(6, ni.time_ids), cond.time_ids.data() + b * ni.time_ids);
    uncond.time_ids = cond.time_ids;
  }
  if (cfg) {
    both.text = detail::concat_batch(uncond.text, cond.text);
    if (pooled) both.pooled = detail::concat_batch(uncond.pooled, cond.pooled);
    if (ni.time_ids > 0) both.time_ids = detail::concat_batch(uncond.time_ids, cond.time_ids);
  }
  encoded = true;
}

// The img2img encode stage: the init images' posterior moments (image by image), a sample of the
// posterior with the generator's first draws (retrieve_latents(..., generator), sample_mode
// "sample"), scaled to model latents, repeated for the batch when one image serves all, and the
// noise added at the first noise level (scheduler.add_noise / scale_noise).
void Generation::State::encode_image(kernels::Context& c) {
  const models::AutoencoderKL& vae = *model.vae();
  const std::size_t B = opt.batch, ls = model.latent_scale();
  // The posterior moments of `images`, image by image (the activations of one encode).
  auto moments_of = [&](const Tensor& pictures) {
    const std::size_t n = pictures.dim(0);
    Tensor moments;
    for (std::size_t b = 0; b < n; ++b) {
      const Tensor m = vae.encode_moments(batch_rows(pictures, b, 1), c);
      if (b == 0) moments = Tensor({n, m.dim(1), m.dim(2), m.dim(3)});
      std::copy_n(m.data(), m.size(), moments.data() + b * m.size());
    }
    return moments;
  };
  auto check = [](const Tensor& t, std::string_view what) {
    for (float v : t.values())
      if (!std::isfinite(v)) raise<value_error>("Generation::step", "the VAE encode of " + std::string(what) + " gave a non-finite value");
  };
  Tensor z;
  if (draw_z0) {
    z = vae.to_model_latents(models::AutoencoderKL::posterior_sample(moments_of(*opt.init_image), posterior_gen));
    check(z, "init_image");
  }
  // The mask, binarized at 0.5 (diffusers' mask processor), at latent size by nearest sampling
  // (F.interpolate's default: pixel (ls i, ls j)); all-repaint for an inpainting model without one.
  if (opt.mask || model.inpainting()) {
    const std::size_t h = *opt.height / ls, w = *opt.width / ls, H = *opt.height, W = *opt.width;
    if (opt.mask) {
      const Tensor& m = *opt.mask;
      mask_latent = Tensor({m.dim(0), 1, h, w});
      for (std::size_t b = 0; b < m.dim(0); ++b)
        for (std::size_t i = 0; i < h; ++i)
          for (std::size_t j = 0; j < w; ++j)
            mask_latent.data()[(b * h + i) * w + j] = m.data()[(b * H + i * ls) * W + j * ls] >= 0.5f ? 1.0f : 0.0f;
    } else {
      mask_latent = Tensor({1, 1, h, w});
      std::fill(mask_latent.values().begin(), mask_latent.values().end(), 1.0f);
    }
  }
  if (model.inpainting()) {
    // The masked image init_image * (mask < 0.5): one per init image or mask (either may be one for
    // all), encoded and sampled with the generator's draws after the noise; without init_image,
    // mid grey (0) everywhere, its posterior mean.
    if (opt.init_image) {
      const Tensor& im = *opt.init_image;
      const std::size_t n = std::max(im.dim(0), opt.mask ? opt.mask->dim(0) : std::size_t{1});
      const std::size_t ch = im.dim(1), H = im.dim(2), W = im.dim(3);
      Tensor masked({n, ch, H, W});
      for (std::size_t b = 0; b < n; ++b)
        for (std::size_t p = 0; p < H * W; ++p) {
          const float keep =
              opt.mask ? (opt.mask->data()[(opt.mask->dim(0) == 1 ? 0 : b) * H * W + p] < 0.5f ? 1.0f : 0.0f) : 0.0f;
          for (std::size_t k = 0; k < ch; ++k)
            masked.data()[(b * ch + k) * H * W + p] = im.data()[((im.dim(0) == 1 ? 0 : b) * ch + k) * H * W + p] * keep;
        }
      masked_latents = vae.to_model_latents(models::AutoencoderKL::posterior_sample(moments_of(masked), masked_gen));
    } else {
      const Tensor grey({1, vae.config().in_channels, *opt.height, *opt.width});
      masked_latents = vae.to_model_latents(models::AutoencoderKL::posterior_mean(moments_of(grey)));
    }
    check(masked_latents, "the masked image");
  }
  if (blend) image_latents = z;
  if (!from_noise) {  // z0 plus the noise at the first noise level (scheduler.add_noise / scale_noise)
    const std::size_t n = z.dim(0), row = z.size() / n;
    const float sigma = sigmas.front();
    Tensor out(added_noise.shape());
    for (std::size_t b = 0; b < B; ++b) {
      const float* z0 = z.data() + (n == 1 ? 0 : b) * row;
      const float* e = added_noise.data() + b * row;
      float* px = out.data() + b * row;
      for (std::size_t i = 0; i < row; ++i) px[i] = noised(z0[i], e[i], sigma);
    }
    x = std::move(out);
  }
  image_encoded = true;
}

// Legacy inpainting, after each sampler step (diffusers' inpaint loop for a 4-channel U-Net): the
// known region (mask 0) replaced by z0 noised to the next noise level with the initial noise, the
// clean z0 after the last step.
void Generation::State::blend_known_region() {
  const std::size_t i = sampler->step_index();  // the step just taken is i - 1
  const bool last = sampler->done();
  const float sigma = last ? 0.0f : sigmas[std::min(i, sigmas.size() - 1)];
  const std::size_t B = opt.batch, row = x.size() / B, hw = mask_latent.dim(2) * mask_latent.dim(3);
  const std::size_t C = row / hw;
  for (std::size_t b = 0; b < B; ++b) {
    const float* z0 = image_latents.data() + (image_latents.dim(0) == 1 ? 0 : b) * row;
    const float* e = added_noise.data() + b * row;
    const float* m = mask_latent.data() + (mask_latent.dim(0) == 1 ? 0 : b) * hw;
    float* px = x.data() + b * row;
    for (std::size_t k = 0; k < C; ++k)
      for (std::size_t p = 0; p < hw; ++p) {
        const std::size_t q = k * hw + p;
        const float known = last ? z0[q] : noised(z0[q], e[q], sigma);
        px[q] = (1.0f - m[p]) * known + m[p] * px[q];
      }
  }
}

Generation::Generation(const Model& model, const GenerateOptions& options) try
    : s_(std::make_unique<State>(model, resolve_options(model, options))) {
  init();
} catch (const std::bad_alloc& e) {
  rethrow_allocation_failure("Generation", e);
} catch (const std::length_error& e) {
  rethrow_allocation_failure("Generation", e);
}

void Generation::init() {
  State& s = *s_;
  const Model& model = s.model;
  const GenerateOptions& o = s.opt;
  const bool flow = model.space() == NoiseSpace::flow;

  // Labels: cond per image; uncond all null; both = [uncond; cond] (guidance.hpp's batch order).
  // Text states come later, from the encode stage (encode_prompts).
  if (model.class_conditional()) {
    auto& cond = s.cond.labels;
    for (std::size_t b = 0; b < o.batch; ++b) cond.push_back(o.labels.size() == 1 ? o.labels[0] : o.labels[b]);
    if (model.null_class()) {
      s.uncond.labels.assign(o.batch, *model.null_class());
      s.both.labels = s.uncond.labels;
      s.both.labels.insert(s.both.labels.end(), cond.begin(), cond.end());
    }
  }

  // The schedule and the sampler; a flow model with a VE-only sampler goes through flow_to_ve.
  // dpm_adaptive: steps is its budget of trials, the interval the ends of the karras schedule.
  SamplerParams<float> params = o.sampler_params;
  const bool budgeted = adaptive(*make_sampler<float>(o.sampler, {1.0f, 0.5f, 0.0f}, params));
  if (budgeted) params.max_steps = static_cast<std::size_t>(*o.steps);
  std::vector<float> sigmas = make_sigmas(model, o.schedule, budgeted ? 2 : *o.steps, o.sampler);
  const std::vector<float> full_schedule = sigmas;  // before img2img's cut: the timestep table's keys
  if (o.init_image) {  // img2img: the full schedule's noise levels from t_start on (diffusers' get_timesteps)
    const std::size_t t_start = static_cast<std::size_t>(*o.steps) - init_timesteps(*o.steps, *o.strength);
    sigmas.erase(sigmas.begin(), sigmas.begin() + static_cast<std::ptrdiff_t>(t_start));
  }
  s.sampler = make_sampler<float>(o.sampler, sigmas, params);
  const bool to_ve = flow && !runs_in_flow_space(*s.sampler);
  if (to_ve) {
    const double cap = 1.0 - 1.0 / static_cast<double>(model.schedule_config().num_train_timesteps);
    for (float& v : sigmas) v = static_cast<float>(flow_sigma_to_ve(std::min(static_cast<double>(v), cap)));
    s.sampler = make_sampler<float>(o.sampler, sigmas, params);
  }
  s.sigmas = sigmas;

  // The denoiser: parameterisation per branch, CFG, then the config's x0 clipping/thresholding on
  // the guided estimate (where diffusers applies it: in the scheduler step, after guidance).
  // The sampler's diffusers rule (SamplerRule): integer network timesteps, and which of the
  // config's x0 clipping and thresholding apply.
  const SamplerRule rule = sampler_rule(o.sampler);
  ParameterizationOptions<float> po = model.parameterization();
  ParameterizationOptions<float> post = po;
  post.clip_sample = post.clip_sample && rule.clip_sample;
  post.thresholding = post.thresholding && rule.thresholding;
  po.clip_sample = false;
  po.thresholding = false;
  po.integer_timesteps = !flow && rule.integer_timesteps;
  if (!flow && !to_ve && !budgeted) {  // the schedule's own timesteps, where diffusers passes them
    const std::vector<float> ts = schedule_timesteps(model, o.schedule, *o.steps, o.sampler);
    for (std::size_t k = 0; k < ts.size() && k < full_schedule.size(); ++k)
      po.timestep_table.emplace_back(full_schedule[k], ts[k]);
  }
  State* sp = &s;
  auto branch = [&](const State::Cond& c) {
    return State::Parameterized(State::Net{sp, &c}, model.prediction(), model.train_sigmas(), po);
  };
  GuidanceOptions<float> go;
  go.scale = *o.cfg_scale;
  go.guidance_rescale = o.guidance_rescale;
  // In the space of the network's output, as diffusers' rescale_noise_cfg on noise_pred.
  if (model.prediction() == Prediction::v_prediction) go.rescale_space = RescaleSpace::v_prediction;
  if (model.prediction() == Prediction::sample) go.rescale_space = RescaleSpace::denoised;
  auto guided = make_guided<float>(State::Branches{branch(s.uncond), branch(s.cond), branch(s.both)}, go, model.space());
  AnyDenoiser<float> any(
      [g = std::move(guided), post](const Tensor& x, float sigma) {
        Tensor d = g(x, sigma);
        if (post.thresholding) {
          dynamic_threshold(d, post.dynamic_thresholding_ratio, post.sample_max_value);
        } else if (post.clip_sample) {
          for (float& v : d.values()) v = std::clamp(v, -post.clip_sample_range, post.clip_sample_range);
        }
        return d;
      },
      model.space());
  s.denoiser = to_ve ? flow_to_ve(std::move(any)) : std::move(any);

  const std::size_t ls = model.latent_scale();
  const std::size_t C = model.sample_channels(), h = *o.height / ls, w = *o.width / ls;
  // The first sample of a generation from pure noise: randn scaled as the sampler's class starts.
  const float s0 = sigmas.front();
  float scale = 1.0f;
  if (to_ve) {
    scale = 1.0f + s0;  // x_ve = x_flow / (1 - s) with s = sigma / (1 + sigma)
  } else if (!flow) {
    scale = initial_noise_factor(model, o.sampler, s0);  // as the sampler's diffusers class starts
  }
  auto scaled_noise = [scale](Tensor t) {
    if (scale != 1.0f)
      for (float& v : t.values()) v *= scale;
    return t;
  };
  if (o.init_image || model.inpainting()) {
    // img2img and inpainting, diffusers' order of draws: the init image's posterior noise [images,
    // C, h, w] (drawn at the encode stage from a copy of the generator as it is now: skipped here),
    // the noise [batch, C, h, w], the masked image's posterior noise (inpainting), then the
    // per-step noise. Inpainting at strength 1 starts from pure noise (is_strength_max) and then
    // needs z0 only to blend it back (a 4-channel network).
    const bool masking = o.mask.has_value() || model.inpainting();
    s.from_noise = masking && (!o.init_image || *o.strength == 1.0f);
    s.draw_z0 = o.init_image && !(model.inpainting() && s.from_noise);
    const bool draw_masked = masking && o.init_image;
    s.blend = o.mask && !model.inpainting();
    s.posterior_gen = s.gen;
    if (s.draw_z0) (void)randn(s.gen, {o.init_image->dim(0), C, h, w});
    s.added_noise = s.first_noise({o.batch, C, h, w});
    if (o.initial_noise) s.added_noise = *o.initial_noise;
    if (draw_masked) {
      s.masked_gen = s.gen;
      (void)randn(s.gen, {std::max(o.init_image->dim(0), o.mask ? o.mask->dim(0) : std::size_t{1}), C, h, w});
    }
    s.flow_sampler = flow && !to_ve;
    s.x = s.from_noise ? scaled_noise(s.added_noise) : s.added_noise;
    s.noise = s.step_noise();
    return;
  }

  // Initial noise, torch.randn(batch, C, H, W) for the seed; per-step noise continues the stream.
  // Given initial noise replaces the draw, which is still made so the per-step stream is unchanged.
  s.x = s.first_noise({o.batch, C, h, w});
  if (o.initial_noise) s.x = *o.initial_noise;
  s.x = scaled_noise(std::move(s.x));
  s.noise = s.step_noise();
}

Generation::~Generation() = default;
Generation::Generation(Generation&&) noexcept = default;
Generation& Generation::operator=(Generation&&) noexcept = default;

namespace {
/** Runs one stage of a generation: the context's arena capped at the memory limit; an allocation
 *  failure as memory_error; a value_error with `what()` (what the stage was doing) before its
 *  message; any exception leaves the generation failed (`failed` set). */
template <class Body, class What>
void run_stage(kernels::Context& ctx, std::uint64_t memory_limit, bool& failed, std::string_view where, Body&& body,
               What&& what) {
  const ArenaLimit cap(ctx.arena(), resolve_memory_limit(memory_limit));
  try {
    body();
  } catch (const std::bad_alloc& e) {
    failed = true;
    rethrow_allocation_failure(where, e);
  } catch (const std::length_error& e) {
    failed = true;
    rethrow_allocation_failure(where, e);
  } catch (const value_error& e) {
    failed = true;
    raise<value_error>(where, what() + e.what());
  } catch (...) {
    failed = true;
    throw;
  }
}
}  // namespace

void Generation::step(kernels::Context& ctx) {
  constexpr std::string_view where = "Generation::step";
  State& s = *s_;
  if (s.failed) raise<value_error>(where, "an earlier step failed; start a new generation");
  if (done()) raise<value_error>(where, "the generation is done (" + std::to_string(num_steps()) + " steps)");
  const auto run = [&](auto&& body, auto&& what) { run_stage(ctx, s.opt.memory_limit, s.failed, where, body, what); };
  switch (stage()) {
    case Stage::encode:  // a text model's first stage: the prompts' text states
      run([&] { s.encode(ctx); }, [] { return std::string("encoding the prompts: "); });
      return;
    case Stage::encode_image:  // img2img: the init image's encode and the added noise
      run([&] { s.encode_image(ctx); }, [] { return std::string("encoding init_image: "); });
      return;
    case Stage::decode:  // a latent model's last stage: the decode
      run(
          [&] {
            s.images = decode_latents(s.model, s.x, ctx, s.opt.decode, s.opt.tiny_decode);
            s.decoded = true;
          },
          [] { return std::string("decoding the latents: "); });
      return;
    case Stage::denoise:
    case Stage::done:
      break;
  }
  const std::size_t i = s.sampler->step_index();
  const float sigma = s.sigmas[std::min(i, s.sigmas.size() - 1)];
  struct ContextFor {  // the network's context, for the duration of the step (exceptions included)
    State& s;
    ContextFor(State& st, kernels::Context& c) : s(st) { s.ctx = &c; }
    ~ContextFor() { s.ctx = nullptr; }
    ContextFor(const ContextFor&) = delete;
    ContextFor& operator=(const ContextFor&) = delete;
  } bound(s, ctx);
  run(
      [&] {
        s.sampler->step(s.denoiser, s.x, s.noise);
        // A schedule that ends above sigma 0 (DDIM without set_alpha_to_one): the last sample in the
        // VP form diffusers returns, x_vp = x_ve / sqrt(1 + sigma^2).
        if (s.sampler->done() && s.model.space() == NoiseSpace::ve && s.sigmas.back() > 0.0f) {
          const float k = 1.0f / std::sqrt(1.0f + s.sigmas.back() * s.sigmas.back());
          for (float& v : s.x.values()) v *= k;
        }
        if (s.blend) s.blend_known_region();
      },
      [&] {
        return "step " + std::to_string(i + 1) + " of " + std::to_string(num_steps()) + " (sigma " + fmt_float(sigma) +
               "): ";
      });
}

Generation::Stage Generation::stage() const {
  if (s_->model.text_conditional() && !s_->encoded) return Stage::encode;
  if ((s_->opt.init_image || s_->model.inpainting()) && !s_->image_encoded) return Stage::encode_image;
  if (!s_->sampler->done()) return Stage::denoise;
  if (s_->model.latent() && !s_->decoded) return Stage::decode;
  return Stage::done;
}
bool Generation::done() const { return stage() == Stage::done; }
std::size_t Generation::step_index() const { return s_->sampler->step_index(); }
std::size_t Generation::num_steps() const { return s_->sampler->num_steps(); }
std::size_t Generation::nfe() const { return s_->sampler->nfe(); }
const Tensor& Generation::preview() const { return s_->sampler->denoised(); }
const Tensor& Generation::sample() const { return s_->x; }
const std::vector<float>& Generation::sigmas() const { return s_->sigmas; }
const GenerateOptions& Generation::options() const { return s_->opt; }
const Model& Generation::model() const { return s_->model; }

const Tensor& Generation::result() const {
  if (!done())
    raise<value_error>("Generation::result", "the generation is not done: " + std::to_string(step_index()) + " of " +
                                                 std::to_string(num_steps()) + " steps taken" +
                                                 (stage() == Stage::decode ? ", the latents not decoded yet" : ""));
  return s_->model.latent() ? s_->images : s_->x;
}

const Tensor& Generation::latents() const {
  if (!s_->sampler->done())
    raise<value_error>("Generation::latents", "the sampler is not done: " + std::to_string(step_index()) + " of " +
                                                  std::to_string(num_steps()) + " steps taken");
  return s_->x;
}

Tensor Generation::preview_image(kernels::Context& ctx) const {
  const Tensor& p = preview();
  if (p.size() == 0) raise<value_error>("Generation::preview_image", "no preview before the first step");
  const Model& m = s_->model;
  if (!m.latent()) return p;
  const ArenaLimit cap(ctx.arena(), resolve_memory_limit(s_->opt.memory_limit));
  if (m.tiny_vae()) return decode_latents(m, p, ctx, s_->opt.decode, true);
  if (const auto proj = latent_rgb_projection(m.vae()->config())) return project_latents(p, *proj, m.latent_scale());
  return decode_latents(m, p, ctx, s_->opt.decode);
}

Tensor decode_latents(const Model& model, const Tensor& latents, kernels::Context& ctx,
                      const models::VaeDecodeOptions& options, bool tiny) {
  constexpr std::string_view where = "decode_latents";
  if (!model.latent()) raise<value_error>(where, model.name() + " is not a latent model: its samples are images");
  if (tiny && !model.tiny_vae())
    raise<value_error>(where, model.name() + " has no tiny VAE (TAESD) to decode with; set one (--preview-vae)");
  tiny = tiny || !model.vae();
  const std::size_t lc = model.sample_channels();
  if (latents.ndim() != 4 || latents.dim(1) != lc)
    raise<shape_error>(where, "latents must be [B, " + std::to_string(lc) + ", h, w], got " + shape_string(latents.shape()));
  const std::size_t B = latents.dim(0), C = latents.dim(1), h = latents.dim(2), w = latents.dim(3);
  Tensor out;
  for (std::size_t b = 0; b < B; ++b) {  // one image at a time: the activations of one decode
    Tensor one({1, C, h, w});
    std::copy_n(latents.data() + b * C * h * w, C * h * w, one.data());
    const Tensor img = tiny ? model.tiny_vae()->decode(model.tiny_vae()->to_vae_latents(one), ctx)
                            : model.vae()->decode(model.vae()->to_vae_latents(one), ctx, options);
    if (b == 0) out = Tensor({B, img.dim(1), img.dim(2), img.dim(3)});
    std::copy_n(img.data(), img.size(), out.data() + b * img.size());
  }
  for (float v : out.values())
    if (!std::isfinite(v)) raise<value_error>(where, "the VAE decode gave a non-finite value");
  return out;
}

Tensor generate(const Model& model, const GenerateOptions& options, kernels::Context& ctx, const StepCallback& callback) {
  Generation g(model, options);
  while (!g.done()) {
    g.step(ctx);
    if (callback) callback(g);
  }
  return g.result();
}

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
