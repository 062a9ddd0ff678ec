// SPDX-License-Identifier: MIT
// A generator with no network at all: the exact optimal denoiser of a small set of pictures
// (Karras et al. 2022, eq. 57) sampled with any diffuse sampler from torch-identical noise.
// Every sample lands on one of the pictures: the closed-form denoiser memorises its data, which is
// what makes it a useful, fully checkable stand-in for a trained network.
//
//   diffuse_custom_denoiser [--sampler dpmpp_2m] [--steps 25] [--seed 0] [--batch 8] [-o out.png]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <diffuse/core/random.hpp>
#include <diffuse/denoise/analytic.hpp>
#include <diffuse/io/image.hpp>
#include <diffuse/sample/registry.hpp>
#include <diffuse/sample/torch_noise.hpp>
#include <diffuse/schedule/sigmas.hpp>

namespace {

constexpr int kSize = 32;

struct Rgb {
  float r, g, b;
};

// Eight small pictures drawn from formulas; u, v in [0, 1) across and down.
Rgb picture(int k, float u, float v) {
  const auto disk = [&](float cx, float cy, float rad) { return std::hypot(u - cx, v - cy) < rad; };
  switch (k) {
    case 0:  // sunset over the sea
      if (v > 0.65f) return {0.05f, 0.15f + 0.3f * (v - 0.65f), 0.45f};
      if (disk(0.5f, 0.55f, 0.18f)) return {1.0f, 0.85f, 0.2f};
      return {0.9f, 0.35f + 0.4f * v, 0.4f * (1 - v)};
    case 1:  // checkerboard
      return ((static_cast<int>(u * 4) + static_cast<int>(v * 4)) % 2) ? Rgb{0.85f, 0.1f, 0.1f} : Rgb{1, 1, 1};
    case 2: {  // rings
      const bool ring = static_cast<int>(std::hypot(u - 0.5f, v - 0.5f) * 10) % 2 == 0;
      return ring ? Rgb{0.1f, 0.2f, 0.8f} : Rgb{1.0f, 0.9f, 0.2f};
    }
    case 3:  // diagonal stripes
      return (static_cast<int>((u + v) * 6) % 2) ? Rgb{0.1f, 0.7f, 0.2f} : Rgb{0.05f, 0.05f, 0.05f};
    case 4:  // a flag
      return u < 1.0f / 3 ? Rgb{0.0f, 0.3f, 0.7f} : (u < 2.0f / 3 ? Rgb{1, 1, 1} : Rgb{0.9f, 0.1f, 0.2f});
    case 5:  // a smiley
      if (!disk(0.5f, 0.5f, 0.42f)) return {0.6f, 0.8f, 1.0f};
      if (disk(0.35f, 0.38f, 0.06f) || disk(0.65f, 0.38f, 0.06f)) return {0.1f, 0.1f, 0.1f};
      if (v > 0.6f && v < 0.68f && std::abs(u - 0.5f) < 0.2f) return {0.6f, 0.1f, 0.1f};
      return {1.0f, 0.85f, 0.1f};
    case 6:  // a mountain
      if (v > 0.8f) return {0.2f, 0.6f, 0.2f};
      if (v > 0.25f + 1.4f * std::abs(u - 0.5f)) return v < 0.4f ? Rgb{1, 1, 1} : Rgb{0.45f, 0.4f, 0.4f};
      return {0.5f, 0.75f, 1.0f};
    default:  // dots
      return disk(std::floor(u * 4) / 4 + 0.125f, std::floor(v * 4) / 4 + 0.125f, 0.08f) ? Rgb{0.9f, 0.4f, 0.0f}
                                                                                       : Rgb{0.15f, 0.1f, 0.3f};
  }
}

// The dataset: N rows of 3 x 32 x 32 values in [-1, 1], channel-major like a network's input.
std::vector<float> make_dataset(int n) {
  std::vector<float> data;
  for (int k = 0; k < n; ++k) {
    std::vector<float> img(3 * kSize * kSize);
    for (int y = 0; y < kSize; ++y)
      for (int x = 0; x < kSize; ++x) {
        const Rgb c = picture(k, (x + 0.5f) / kSize, (y + 0.5f) / kSize);
        const int at = y * kSize + x;
        img[at] = 2 * c.r - 1;
        img[kSize * kSize + at] = 2 * c.g - 1;
        img[2 * kSize * kSize + at] = 2 * c.b - 1;
      }
    data.insert(data.end(), img.begin(), img.end());
  }
  return data;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string sampler = "dpmpp_2m", out = "custom_denoiser.png";
  long steps = 25, batch = 8;
  unsigned long long seed = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--sampler") sampler = value;
    else if (flag == "--steps") steps = std::stol(value);
    else if (flag == "--seed") seed = std::stoull(value);
    else if (flag == "--batch") batch = std::stol(value);
    else if (flag == "-o") out = value;
    else throw std::invalid_argument("unknown option " + flag);
  }
  if (steps < 1 || batch < 1) throw std::invalid_argument("--steps and --batch must be at least 1");

  // 1. The denoiser: exact for the empirical distribution of eight pictures.
  const diffuse::EmpiricalDenoiser<float> denoiser(make_dataset(8), 3 * kSize * kSize);

  // 2. The schedule: Karras et al. sigmas from 80 down to 0.002, then 0.
  const std::vector<float> sigmas = diffuse::get_sigmas_karras<float>(steps, 0.002, 80.0);

  // 3. Initial noise exactly as torch.manual_seed(seed); torch.randn(batch, 3, 32, 32) * 80.
  diffuse::TorchGenerator gen(seed);
  diffuse::Tensor x = diffuse::randn(gen, {static_cast<std::size_t>(batch), 3, kSize, kSize});
  x.array() *= sigmas.front();

  // 4. Sample, reporting progress; stochastic samplers continue the same torch stream.
  auto s = diffuse::make_sampler<float>(sampler, sigmas);
  auto noise = diffuse::torch_noise<float>(gen);
  s->run(diffuse::denoiser_ref<float>(denoiser), x, noise, [&](const diffuse::StepInfo<float>& info) {
    std::fprintf(stderr, "\rstep %zu/%zu  sigma %.4f", info.step + 1, s->num_steps(), static_cast<double>(info.sigma));
  });
  std::fprintf(stderr, "\n");

  // 5. One image per sample, in a grid, with the parameters in the PNG.
  std::vector<diffuse::io::Image> images;
  const std::size_t per = 3 * kSize * kSize;
  for (long b = 0; b < batch; ++b) {
    diffuse::Tensor one({3, kSize, kSize});
    std::copy_n(x.data() + static_cast<std::size_t>(b) * per, per, one.data());
    images.push_back(diffuse::io::tensor_to_image(one));
  }
  const std::string params = "sampler: " + sampler + ", steps: " + std::to_string(steps) +
                             ", seed: " + std::to_string(seed) + ", schedule: karras, model: empirical (8 pictures)";
  diffuse::io::write_png(out, diffuse::io::make_grid(images, 4), {{"parameters", params}});
  std::printf("wrote %s (%ld samples, %s, %ld steps, %zu denoiser calls)\n", out.c_str(), batch, sampler.c_str(),
              steps, s->nfe());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "diffuse_custom_denoiser: %s\n", e.what());
  return 1;
}
