// SPDX-License-Identifier: MIT
// Walks from one seed's image to another's: the two seeds' initial noise tensors (exactly
// torch.manual_seed(s); torch.randn(...)) are blended by spherical linear interpolation (slerp) in
// `frames` steps, every blend is sampled with a deterministic sampler, and the frames are written
// side by side as one strip (PNG with the settings in its "parameters" text chunk).
//
//   diffuse_seed_interpolation <model folder> [class] [seed A] [seed B] [frames] [steps] [out.png]
//   diffuse_seed_interpolation models/digits-dit 3 1 2 8 20 strip.png
//
// Why slerp and not a straight line: the initial noise z has d = C*H*W independent N(0, 1) values,
// so |z|^2 is a sum of d squares and |z| concentrates tightly around sqrt(d) (its spread stays
// about 0.7 whatever d is); the sampler only ever starts from noise of that size. Two seeds' tensors
// are also almost orthogonal (their cosine is about 1/sqrt(d)). The straight-line midpoint
// (a + b) / 2 then has norm about sqrt(d / 2): 71 % of what any seed gives, a "quieter" noise the
// model was never trained to start from, so the middle frames come out faint or smeared. Slerp
// moves along the great circle between a and b instead, keeping the norm at about sqrt(d) in every
// frame, so every frame is a plausible starting point and the images change smoothly.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <diffuse/core/random.hpp>
#include <diffuse/io/image.hpp>
#include <diffuse/pipeline/pipeline.hpp>

namespace pl = diffuse::pipeline;

namespace {

/// Spherical linear interpolation between a and b at t in [0, 1] (Shoemake 1985): the point at
/// angle t * theta on the arc from a to b, theta the angle between them. Falls back to a straight
/// line when a and b are (nearly) parallel, where the arc and the line coincide.
std::vector<float> slerp(const std::vector<float>& a, const std::vector<float>& b, double t) {
  double ab = 0, aa = 0, bb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  const double theta = std::acos(std::clamp(ab / std::sqrt(aa * bb), -1.0, 1.0));
  double wa = 1 - t, wb = t;
  if (std::sin(theta) > 1e-6) {
    wa = std::sin((1 - t) * theta) / std::sin(theta);
    wb = std::sin(t * theta) / std::sin(theta);
  }
  std::vector<float> out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) out[i] = static_cast<float>(wa * a[i] + wb * b[i]);
  return out;
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <model folder> [class] [seed A] [seed B] [frames] [steps] [out.png]\n", argv[0]);
    return 2;
  }
  const pl::Model model = pl::Model::load(argv[1]);
  const long long label = argc > 2 ? std::stoll(argv[2]) : 0;
  const unsigned long long seed_a = argc > 3 ? std::stoull(argv[3]) : 1, seed_b = argc > 4 ? std::stoull(argv[4]) : 2;
  const int frames = argc > 5 ? std::stoi(argv[5]) : 8;
  const std::string out = argc > 7 ? argv[7] : "seed_interpolation.png";
  if (frames < 2 || frames > 64) throw std::invalid_argument("frames must be in 2..64");

  // Every frame is one batch item, so all frames are generated together in one Generation.
  pl::GenerateOptions options;
  if (model.class_conditional()) options.labels = {label};
  options.batch = static_cast<std::size_t>(frames);
  options.seed = seed_a;
  if (argc > 6) options.steps = std::stoi(argv[6]);
  // Deterministic: Euler takes no per-step noise, so each image is a function of its initial noise
  // alone (for a noise-predicting model Euler in sigma is DDIM with eta 0; for a flow model it is
  // the flow-matching Euler step).
  options.sampler = "euler";

  // The two seeds' noise, exactly as the pipeline would draw it for a batch of one.
  const auto& info = model.info();
  const diffuse::Shape one{1, info.in_channels, info.sample_size, info.sample_size};
  diffuse::TorchGenerator gen_a(seed_a), gen_b(seed_b);
  const diffuse::Tensor za = diffuse::randn(gen_a, one), zb = diffuse::randn(gen_b, one);
  const std::vector<float> a(za.begin(), za.end()), b(zb.begin(), zb.end());

  // Frame f gets slerp(a, b, f / (frames - 1)): the first frame is seed A's image, the last seed B's.
  diffuse::Tensor noise({options.batch, info.in_channels, info.sample_size, info.sample_size});
  for (int f = 0; f < frames; ++f) {
    const std::vector<float> z = slerp(a, b, static_cast<double>(f) / (frames - 1));
    std::copy(z.begin(), z.end(), noise.data() + static_cast<std::size_t>(f) * z.size());
  }
  options.initial_noise = noise;

  diffuse::kernels::Context ctx(2);
  pl::Generation generation(model, options);
  while (!generation.done()) {
    generation.step(ctx);
    std::fprintf(stderr, "\rstep %zu/%zu", generation.step_index(), generation.num_steps());
  }
  std::fprintf(stderr, "\n");

  // One strip: all frames in a single row, enlarged 8x.
  const auto images = pl::to_images(generation.result(), 8);
  const std::string params = pl::parameters_text(
      model, generation.options(), std::nullopt,
      {{"Seed B", std::to_string(seed_b)}, {"Interpolation", "slerp of initial noise, " + std::to_string(frames) + " frames"},
       {"Scale", "8x (nearest)"}});
  diffuse::io::write_png(out, pl::grid(images, frames), {{"parameters", params}});
  std::printf("wrote %s (%d frames; %s)\n", out.c_str(), frames, params.c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "diffuse_seed_interpolation: %s\n", e.what());
  return 1;
}
