// SPDX-License-Identifier: MIT
// `diffuse generate`: options -> pipeline::Generation -> PNG file(s) with the parameters text.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <memory>
#include <cstdint>
#include <limits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "cli.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/json.hpp"
#include "diffuse/core/memory.hpp"
#include "diffuse/io/image.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/pipeline/pipeline.hpp"

namespace diffuse_cli {
namespace {

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;

/** "3", "0,1,2", "all" (every class but the null one) or class names ("golden retriever",
 *  "tench,goldfish"): a name may contain no comma, but a whole label (which may) is tried first. */
std::vector<std::int64_t> parse_classes(const std::string& text, const pl::Model& model) {
  if (text.empty()) return {};
  if (!model.class_names().empty() && text.find(',') != std::string::npos && text != "all") {
    try {
      return {model.class_label(text)};
    } catch (const diffuse::value_error&) {
      // not one name: a list
    }
  }
  std::vector<std::string> items;
  for (std::size_t at = 0; at <= text.size();) {
    const std::size_t comma = std::min(text.find(',', at), text.size());
    items.push_back(text.substr(at, comma - at));
    at = comma + 1;
  }
  std::vector<std::int64_t> out;
  for (const auto& s : items) {
    if (s == "all") {
      for (std::size_t c = 0; c < model.info().num_classes; ++c)
        if (!model.null_class() || static_cast<std::int64_t>(c) != *model.null_class())
          out.push_back(static_cast<std::int64_t>(c));
      continue;
    }
    const bool number = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || c == '-'; });
    if (number || model.class_names().empty()) {
      std::size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(s, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != s.size())
        throw UsageError("--class: '" + s + "' is not a class number (or 'all')" +
                         (model.class_names().empty() ? "; " + model.name() + " has no class names" : ""));
      out.push_back(v);
      continue;
    }
    try {
      out.push_back(model.class_label(s));
    } catch (const diffuse::value_error& e) {
      throw UsageError(std::string("--class: ") + e.what());
    }
  }
  return out;
}

/// "out.png" + "-step-5" -> "out-step-5.png".
fs::path suffixed(const fs::path& p, const std::string& suffix) {
  fs::path r = p;
  r.replace_filename(p.stem().string() + suffix + p.extension().string());
  return r;
}

/// "out.png" -> "out-3.png".
fs::path numbered(const fs::path& p, std::size_t i) {
  std::string suffix = "-";
  suffix += std::to_string(i);
  return suffixed(p, suffix);
}

/** The whole number `text` given to `option`, checked to lie in [lo, hi]: decimal digits only (no
 *  sign, exponent or fraction), so that "1e22", "-1" or 2^64 are refused quoting what was typed
 *  rather than read as some other number. */
std::uint64_t whole_number(const char* option, const std::string& text, std::uint64_t lo, std::uint64_t hi,
                           const char* note = "") {
  std::uint64_t v = 0;
  const char* end = text.data() + text.size();
  const bool digits = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (!digits || ec != std::errc() || ptr != end || v < lo || v > hi)
    throw UsageError(std::string(option) + " must be a whole number in " + std::to_string(lo) + ".." + std::to_string(hi) +
                     note + ", got '" + text + "'");
  return v;
}

/// ", VAE decode 1.23 s" for the summary line of a latent model.
std::string decode_note(bool latent, double secs) {
  if (!latent) return {};
  char buf[64];
  std::snprintf(buf, sizeof buf, " (VAE decode %.2f s)", secs);
  return buf;
}

/// True when `dir` holds a tiny VAE: config.json says AutoencoderTiny, or the original TAESD files.
bool is_tiny_vae(const fs::path& dir) {
  std::error_code ec;
  if (fs::exists(dir / "config.json", ec)) {
    const auto cfg = diffuse::read_json_file(dir / "config.json", "generate", "VAE config");
    const auto it = cfg.find("_class_name");
    return it != cfg.end() && it->is_string() && *it == "AutoencoderTiny";
  }
  for (const char* f : {"taesd_decoder.safetensors", "taesdxl_decoder.safetensors", "taesd3_decoder.safetensors",
                        "taef1_decoder.safetensors"})
    if (fs::exists(dir / f, ec)) return true;
  return false;
}

void check_writable_dir(const fs::path& file) {
  const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw diffuse::io_error("[generate] cannot write " + file.string() + ": no such directory " + dir.string());
}

}  // namespace

int run_generate(const GenerateArgs& a) {
  // Checks that need no model. An option given is checked as typed: 0 is refused where it is not
  // documented to mean "default" (--threads 0 and --scale 0 are).
  const bool steps_set = !a.steps.empty();
  const int steps = steps_set ? static_cast<int>(whole_number("--steps", a.steps, 1, 10000)) : 0;
  if (a.cfg_set && !std::isfinite(a.cfg_scale)) throw UsageError("--cfg-scale must be a finite number");
  const std::uint64_t seed = whole_number("--seed", a.seed, 0, std::numeric_limits<std::uint64_t>::max());
  const std::size_t batch = a.batch.empty() ? 0 : whole_number("--batch", a.batch, 1, 1024);
  const int grid_columns =
      a.grid_columns.empty() ? 0 : static_cast<int>(whole_number("--grid-columns", a.grid_columns, 1, 1024));
  const std::size_t width = a.width.empty() ? 0 : whole_number("--width", a.width, 1, 4096);
  const std::size_t height = a.height.empty() ? 0 : whole_number("--height", a.height, 1, 4096);
  const std::size_t threads = whole_number("--threads", a.threads, 0, diffuse::kernels::ThreadPool::kMaxThreads,
                                           " (0 = one per hardware thread)");
  const std::size_t scale_arg = whole_number("--scale", a.scale, 0, 64, " (0 = automatic)");
  if (a.output.empty()) throw UsageError("-o needs a file name");

  std::uint64_t memory_limit = 0;  // 0: the library's default
  if (!a.memory_limit.empty()) {
    try {
      memory_limit = diffuse::parse_memory_size(a.memory_limit);
    } catch (const diffuse::value_error& e) {
      throw UsageError(std::string("--memory-limit: ") + e.what());
    }
  }
  diffuse::nn::LoadOptions load;
  load.memory_limit = memory_limit;
  load.winograd = !a.no_winograd && !a.low_memory;
  load.stream_weights = a.low_memory;
  const std::size_t preview_every =
      a.preview_every.empty() ? 0 : whole_number("--preview-every", a.preview_every, 1, 10000);
  pl::Model model = pl::Model::load(a.model, load);
  for (const auto& [option, dir] : {std::pair<std::string, std::string>{"--vae", a.vae}, {"--preview-vae", a.preview_vae}}) {
    if (dir.empty()) continue;
    if (!model.latent()) throw UsageError(option + ": " + model.name() + " generates images, not latents; it needs no VAE");
    const bool tiny = is_tiny_vae(dir);
    if (option == "--preview-vae" && !tiny)
      throw UsageError("--preview-vae: " + dir + " is not a tiny VAE (AutoencoderTiny / TAESD)");
    try {
      if (tiny) {
        model.set_tiny_vae(std::make_shared<const diffuse::models::AutoencoderTiny>(
            diffuse::models::AutoencoderTiny::load(dir, load)));
        if (option == "--vae") model.set_vae(nullptr);  // the tiny VAE becomes the decoder
      } else {
        model.set_vae(
            std::make_shared<const diffuse::models::AutoencoderKL>(diffuse::models::AutoencoderKL::load(dir, load)));
      }
    } catch (const diffuse::value_error& e) {
      throw UsageError(option + " " + dir + ": " + e.what());
    }
  }
  if (a.tiled >= 0 && !model.latent()) {
    std::string msg = a.tiled ? "--tiled: " : "--no-tiled: ";
    msg += model.name();
    msg += " generates images directly; there is no decode to tile";
    throw UsageError(msg);
  }

  pl::GenerateOptions o;
  o.labels = parse_classes(a.classes, model);
  o.sampler = a.sampler;
  o.schedule = a.schedule;
  if (steps_set) o.steps = steps;
  if (a.cfg_set) o.cfg_scale = static_cast<float>(a.cfg_scale);
  o.seed = seed;
  if (!a.rng.empty()) {
    if (a.rng == "torch" || a.rng == "diffusers") o.rng = diffuse::NoiseRng::torch;
    else if (a.rng == "a1111-nv" || a.rng == "nv" || a.rng == "gpu" || a.rng == "cuda") o.rng = diffuse::NoiseRng::a1111_nv;
    else if (a.rng == "a1111-cpu" || a.rng == "cpu") o.rng = diffuse::NoiseRng::a1111_cpu;
    else throw UsageError("--rng must be torch, a1111-nv or a1111-cpu, got '" + printable(a.rng) + "'");
  }
  if (!a.noise_seed_delta.empty()) {
    if (o.rng == diffuse::NoiseRng::torch)
      throw UsageError("--noise-seed-delta (A1111's ENSD) needs --rng a1111-nv or a1111-cpu");
    o.noise_seed_delta =
        whole_number("--noise-seed-delta", a.noise_seed_delta, 0, std::numeric_limits<std::uint64_t>::max());
  }
  o.memory_limit = memory_limit;
  if (a.prompt_set) o.prompts = a.prompts;
  o.batch = batch > 0 ? batch : std::max<std::size_t>({o.labels.size(), o.prompts.size(), 1});
  // A class or prompt list repeats to fill a batch that is a multiple of it ("--class all --batch 30",
  // "-p apple -p rocket --batch 4").
  const auto repeat_to_batch = [&o](auto& list) {
    if (list.size() > 1 && o.batch > list.size() && o.batch % list.size() == 0) {
      const auto one = list;
      while (list.size() < o.batch) list.insert(list.end(), one.begin(), one.end());
    }
  };
  repeat_to_batch(o.labels);
  repeat_to_batch(o.prompts);
  if (a.low_memory && a.tiled < 0 && model.latent()) o.decode.tiling = diffuse::models::VaeDecodeOptions::Tiling::on;
  if (a.tiled >= 0) o.decode.tiling = a.tiled ? diffuse::models::VaeDecodeOptions::Tiling::on
                                             : diffuse::models::VaeDecodeOptions::Tiling::off;
  if (width > 0) o.width = width;
  if (height > 0) o.height = height;
  if (a.negative_set) o.negative_prompts = {a.negative_prompt};
  if (model.text_conditional() && !a.prompt_set)
    throw UsageError(model.name() + " generates from text: give a prompt with -p \"...\"");
  if (!a.clip_skip.empty()) o.clip_skip = whole_number("--clip-skip", a.clip_skip, 1, 12);
  if (!(a.guidance_rescale >= 0.0 && a.guidance_rescale <= 1.0))
    throw UsageError("--guidance-rescale must be in 0..1, got " + std::to_string(a.guidance_rescale));
  o.guidance_rescale = static_cast<float>(a.guidance_rescale);
  if (!a.emphasis.empty()) {
    using E = diffuse::text::Emphasis;
    if (a.emphasis == "original") o.prompt.emphasis = E::original;
    else if (a.emphasis == "no_norm") o.prompt.emphasis = E::no_norm;
    else if (a.emphasis == "ignore") o.prompt.emphasis = E::ignore;
    else if (a.emphasis == "none") o.prompt.emphasis = E::none;
    else throw UsageError("--emphasis must be original, no_norm, ignore or none, got '" + printable(a.emphasis) + "'");
  }
  if (!a.strength.empty()) {
    if (a.init_image.empty()) throw UsageError("--strength is for image-to-image: give --init-image too");
    char* end = nullptr;
    const float s = std::strtof(a.strength.c_str(), &end);
    if (end == a.strength.c_str() || *end != '\0' || !(s > 0.0f && s <= 1.0f))
      throw UsageError("--strength must be a number in (0, 1], got '" + printable(a.strength) + "'");
    o.strength = s;
  }
  if (!a.init_image.empty()) {  // read as diffusers' load_image + VaeImageProcessor: RGB, 2 v / 255 - 1
    if (!model.vae())
      throw UsageError("--init-image: " + model.name() +
                       (model.latent() ? " has only a tiny VAE" : " generates images directly") +
                       "; image-to-image needs a latent model with a VAE to encode the image");
    o.init_image = diffuse::io::to_rgb_tensor(diffuse::io::read_image(a.init_image));
  }
  if (!a.mask.empty()) {  // read as diffusers' mask processor: PIL's convert("L"), v / 255
    if (a.init_image.empty()) throw UsageError("--mask is for inpainting: give --init-image (the image to repaint) too");
    o.mask = diffuse::io::to_mask_tensor(diffuse::io::read_image(a.mask));
    if (o.mask->dim(2) != o.init_image->dim(2) || o.mask->dim(3) != o.init_image->dim(3))
      throw UsageError("--mask " + printable(a.mask) + " is " + std::to_string(o.mask->dim(3)) + "x" +
                       std::to_string(o.mask->dim(2)) + " but --init-image " + printable(a.init_image) + " is " +
                       std::to_string(o.init_image->dim(3)) + "x" + std::to_string(o.init_image->dim(2)) +
                       ": give a mask of the image's size");
  }
  try {
    o = pl::resolve_options(model, o);
  } catch (const diffuse::value_error& e) {
    throw UsageError(e.what());
  }

  for (const auto& w : pl::option_warnings(model, o)) std::fprintf(stderr, "diffuse: warning: %s\n", w.c_str());

  const fs::path out = a.output;
  check_writable_dir(out);
  const std::size_t side = std::max(*o.width, *o.height);
  const int scale = scale_arg > 0 ? static_cast<int>(scale_arg) : static_cast<int>(std::max<std::size_t>(1, 128 / side));

  diffuse::kernels::Context ctx(threads);
  pl::Generation gen(model, o);
  Progress progress(gen.num_steps(), !a.quiet);
  double decode_secs = 0;
  while (!gen.done()) {
    if (gen.stage() == pl::Generation::Stage::encode || gen.stage() == pl::Generation::Stage::encode_image) {
      // the prompts' text encoding, an init image's VAE encode: before step 1
      gen.step(ctx);
      continue;
    }
    if (gen.stage() == pl::Generation::Stage::decode) {
      const auto t0 = std::chrono::steady_clock::now();
      gen.step(ctx);
      decode_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      continue;
    }
    gen.step(ctx);
    progress.update(gen.step_index(), gen.num_steps());
    if (preview_every > 0 && (gen.step_index() % preview_every == 0 || gen.step_index() == gen.num_steps())) {
      const auto frames = pl::to_images(gen.preview_image(ctx), scale);
      const fs::path f = suffixed(out, "-step-" + std::to_string(gen.step_index()));
      const std::string what = "step " + std::to_string(gen.step_index()) + " of " + std::to_string(gen.num_steps());
      diffuse::io::write_png(f, frames.size() == 1 ? frames[0] : pl::grid(frames, grid_columns),
                             {{"parameters", pl::parameters_text(model, o, std::nullopt, {{"Preview", what}})}});
    }
  }
  const double secs = progress.finish();

  const auto images = pl::to_images(gen.result(), scale);
  std::vector<std::pair<std::string, std::string>> extra;
  if (scale > 1) extra.emplace_back("Scale", std::to_string(scale) + "x (nearest)");
  std::vector<fs::path> written;
  if (a.grid || images.size() == 1) {
    diffuse::io::write_png(out, images.size() == 1 ? images[0] : pl::grid(images, grid_columns),
                           {{"parameters", pl::parameters_text(model, o, std::nullopt, extra)}});
    written.push_back(out);
  } else {
    for (std::size_t i = 0; i < images.size(); ++i) {
      diffuse::io::write_png(numbered(out, i), images[i], {{"parameters", pl::parameters_text(model, o, i, extra)}});
      written.push_back(numbered(out, i));
    }
  }
  for (const auto& p : written) std::printf("%s\n", printable(p.string()).c_str());
  if (!a.quiet)
    std::fprintf(stderr, "diffuse: %zu image%s from %s (%s, %s, %zu steps, %zu network calls, cfg %g) in %.2f s: %.2f steps/s, "
                 "%.2f images/s, %zu threads%s\n",
                 images.size(), images.size() == 1 ? "" : "s", printable(model.name()).c_str(), printable(o.sampler).c_str(),
                 printable(o.schedule).c_str(),
                 gen.step_index(), gen.nfe(), static_cast<double>(*o.cfg_scale), secs,
                 secs - decode_secs > 0 ? static_cast<double>(gen.step_index()) / (secs - decode_secs) : 0.0,
                 secs > 0 ? static_cast<double>(images.size()) / secs : 0.0, ctx.threads(),
                 decode_note(model.latent(), decode_secs).c_str());
  return kOk;
}

}  // namespace diffuse_cli
