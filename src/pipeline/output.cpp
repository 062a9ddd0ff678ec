// SPDX-License-Identifier: MIT
// pipeline output: tensors to 8-bit images, nearest upscaling, grids, the "parameters" text.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/pipeline/output.hpp"

DIFFUSE_BEGIN_NAMESPACE
namespace pipeline {
namespace {

/// Batch item `b` of [B, C, H, W] as a [C, H, W] tensor.
Tensor item(const Tensor& images, std::size_t b, std::string_view where) {
  if (images.ndim() != 4)
    raise<shape_error>(where, "images must be [B, C, H, W], got " + shape_string(images.shape()));
  if (b >= images.dim(0))
    raise<value_error>(where, "index " + std::to_string(b) + " is out of a batch of " + std::to_string(images.dim(0)));
  const std::size_t per = images.size() / images.dim(0);
  Tensor one({images.dim(1), images.dim(2), images.dim(3)});
  std::copy_n(images.data() + b * per, per, one.data());
  return one;
}

std::string fmt_float(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

io::Image upscale_nearest(const io::Image& image, int scale) {
  if (scale < 1) raise<value_error>("upscale_nearest", "scale must be >= 1, got " + std::to_string(scale));
  if (scale == 1) return image;
  io::Image out;
  out.width = image.width * scale;
  out.height = image.height * scale;
  out.channels = image.channels;
  const auto c = static_cast<std::size_t>(image.channels);
  out.pixels.resize(static_cast<std::size_t>(out.width) * static_cast<std::size_t>(out.height) * c);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const auto src = (static_cast<std::size_t>(y / scale) * static_cast<std::size_t>(image.width) +
                        static_cast<std::size_t>(x / scale)) * c;
      const auto dst = (static_cast<std::size_t>(y) * static_cast<std::size_t>(out.width) + static_cast<std::size_t>(x)) * c;
      std::copy_n(image.pixels.begin() + static_cast<std::ptrdiff_t>(src), c, out.pixels.begin() + static_cast<std::ptrdiff_t>(dst));
    }
  return out;
}

std::vector<io::Image> to_images(const Tensor& images, int scale) {
  constexpr std::string_view where = "to_images";
  if (scale < 1) raise<value_error>(where, "scale must be >= 1, got " + std::to_string(scale));
  if (images.ndim() != 4)
    raise<shape_error>(where, "images must be [B, C, H, W], got " + shape_string(images.shape()));
  std::vector<io::Image> out;
  for (std::size_t b = 0; b < images.dim(0); ++b)
    out.push_back(upscale_nearest(io::tensor_to_image(item(images, b, where)), scale));
  return out;
}

io::Image to_rgba8(const Tensor& images, std::size_t index) {
  const io::Image src = io::tensor_to_image(item(images, index, "to_rgba8"));
  io::Image out;
  out.width = src.width;
  out.height = src.height;
  out.channels = 4;
  const std::size_t n = static_cast<std::size_t>(src.width) * static_cast<std::size_t>(src.height);
  out.pixels.resize(n * 4);
  const auto sc = static_cast<std::size_t>(src.channels);
  for (std::size_t p = 0; p < n; ++p) {
    const std::uint8_t* s = src.pixels.data() + p * sc;
    std::uint8_t* d = out.pixels.data() + p * 4;
    if (sc == 1) {
      d[0] = d[1] = d[2] = s[0];
      d[3] = 255;
    } else {
      d[0] = s[0];
      d[1] = s[1];
      d[2] = s[2];
      d[3] = sc == 4 ? s[3] : std::uint8_t{255};
    }
  }
  return out;
}

io::Image grid(const std::vector<io::Image>& images, int columns, int padding) {
  if (images.empty()) raise<value_error>("grid", "no images");
  if (columns <= 0) columns = static_cast<int>(std::min<std::size_t>(images.size(), 10));
  return io::make_grid(images, columns, padding);
}

std::string parameters_text(const Model& model, const GenerateOptions& o, std::optional<std::size_t> index,
                            const std::vector<std::pair<std::string, std::string>>& extra) {
  std::string t;
  const auto add = [&](const std::string& key, const std::string& value) {
    if (!t.empty()) t += ", ";
    t += key;
    t += ": ";
    t += value;
  };
  if (!o.labels.empty()) {
    if (index && o.labels.size() > 1) {
      add("class", std::to_string(o.labels.at(*index)));
    } else {
      std::string cls;
      for (std::int64_t l : o.labels) {
        if (!cls.empty()) cls += ' ';
        cls += std::to_string(l);
      }
      add("class", cls);
    }
  }
  if (o.steps) add("Steps", std::to_string(*o.steps));
  add("Sampler", o.sampler.empty() ? model.defaults().sampler : o.sampler);
  add("Schedule type", o.schedule.empty() ? model.defaults().schedule : o.schedule);
  if (o.cfg_scale) add("CFG scale", fmt_float(*o.cfg_scale));
  // A1111's modes: image b's own seed, seed + b (what A1111 writes per image).
  const bool a1111 = o.rng != NoiseRng::torch;
  add("Seed", std::to_string(o.seed + (a1111 && index ? *index : 0)));
  add("Size", std::to_string(o.width.value_or(model.image_size())) + "x" +
                  std::to_string(o.height.value_or(model.image_size())));
  add("Model", model.name());
  if (o.clip_skip > 1) add("Clip skip", std::to_string(o.clip_skip));
  if (o.guidance_rescale != 0.0f) add("Guidance rescale", fmt_float(o.guidance_rescale));
  if (o.init_image) add("Denoising strength", fmt_float(o.strength.value_or(0.8f)));  // A1111's img2img key
  if (o.rng == NoiseRng::a1111_cpu) add("RNG", "CPU");  // A1111's keys; its GPU default writes none
  if (o.rng == NoiseRng::a1111_nv) add("RNG", "NV");
  if (a1111 && o.noise_seed_delta != 0) add("ENSD", std::to_string(o.noise_seed_delta));
  if (o.batch > 1) add("Batch size", std::to_string(o.batch));
  if (index && o.batch > 1) add("Batch pos", std::to_string(*index));
  for (const auto& [k, v] : extra) add(k, v);
  // A1111's layout: the prompt on the first line, "Negative prompt: ..." on the second, then the settings.
  const auto pick = [&](const std::vector<std::string>& v) -> std::string {
    if (v.empty()) return {};
    if (v.size() == 1) return v[0];
    if (index && *index < v.size()) return v[*index];
    std::string all;
    for (const std::string& p : v) all += (all.empty() ? "" : " | ") + p;
    return all;
  };
  std::string head;
  if (!o.prompts.empty()) head = pick(o.prompts) + "\n";
  if (!o.negative_prompts.empty()) head += "Negative prompt: " + pick(o.negative_prompts) + "\n";
  return head + t;
}

}  // namespace pipeline
DIFFUSE_END_NAMESPACE
