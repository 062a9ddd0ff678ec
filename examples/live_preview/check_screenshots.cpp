// SPDX-License-Identifier: MIT
// The test of examples/live_preview: checks the window screenshots it wrote.
//
//   diffuse_live_preview_check RESULT.png FINAL.png MID.png
//
// RESULT is the job's result image (--result), FINAL the window when the job was done
// (--screenshot), MID the window after a middle step (--screenshot-step). Each screenshot says where
// the image is in the window in its "parameters" text ("Window image: x=.. y=.. scale=.."). Checks:
// the final window's image region is the result enlarged by that scale (nearest, every pixel equal);
// the middle window's image region is not one colour (the preview was drawn) and is not the result.
// Exits 0 and prints "screenshots ok" when all hold, 1 with the first difference otherwise.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <diffuse/io/image.hpp>

namespace io = diffuse::io;

namespace {

struct Region {
  int x = 0, y = 0, scale = 0;
};

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "check failed: %s\n", message.c_str());
  std::exit(1);
}

// Where the image of `width` x `height` pixels lies in the screenshot at `path`.
Region region_of(const std::string& path, const io::Image& shot, int width, int height) {
  std::string params;
  for (const auto& [key, value] : io::read_png_text(path))
    if (key == "parameters") params = value;
  const std::size_t pos = params.rfind("Window image: ");
  Region r;
  if (pos == std::string::npos ||
      std::sscanf(params.c_str() + pos, "Window image: x=%d y=%d scale=%d", &r.x, &r.y, &r.scale) != 3)
    fail(path + ": no 'Window image: x=.. y=.. scale=..' in its parameters text ('" + params + "')");
  if (r.scale < 1 || r.x < 0 || r.y < 0 || r.x + width * r.scale > shot.width || r.y + height * r.scale > shot.height)
    fail(path + ": the image region (" + std::to_string(width * r.scale) + "x" + std::to_string(height * r.scale) +
         " at " + std::to_string(r.x) + "," + std::to_string(r.y) + ") does not fit the " + std::to_string(shot.width) +
         "x" + std::to_string(shot.height) + " window");
  return r;
}

// RGB of pixel (x, y).
const std::uint8_t* at(const io::Image& im, int x, int y) {
  return im.pixels.data() +
         (static_cast<std::size_t>(y) * static_cast<std::size_t>(im.width) + static_cast<std::size_t>(x)) *
             static_cast<std::size_t>(im.channels);
}

bool same_rgb(const std::uint8_t* a, const std::uint8_t* b) { return a[0] == b[0] && a[1] == b[1] && a[2] == b[2]; }

}  // namespace

int main(int argc, char** argv) try {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s RESULT.png FINAL.png MID.png\n", argv[0]);
    return 2;
  }
  const io::Image result = io::read_image(argv[1]);
  const io::Image final_shot = io::read_image(argv[2]);
  const io::Image mid_shot = io::read_image(argv[3]);
  for (const io::Image* im : {&result, &final_shot, &mid_shot})
    if (im->channels < 3) fail("expected RGB or RGBA images, got " + std::to_string(im->channels) + " channels");
  const int w = result.width, h = result.height;

  // The final window shows the result, each pixel as a scale x scale square.
  const Region f = region_of(argv[2], final_shot, w, h);
  for (int y = 0; y < h * f.scale; ++y)
    for (int x = 0; x < w * f.scale; ++x) {
      const std::uint8_t* s = at(final_shot, f.x + x, f.y + y);
      const std::uint8_t* r = at(result, x / f.scale, y / f.scale);
      if (!same_rgb(s, r))
        fail(std::string(argv[2]) + ": window pixel (" + std::to_string(f.x + x) + "," + std::to_string(f.y + y) +
             ") is " + std::to_string(s[0]) + "," + std::to_string(s[1]) + "," + std::to_string(s[2]) +
             ", the result's pixel (" + std::to_string(x / f.scale) + "," + std::to_string(y / f.scale) + ") is " +
             std::to_string(r[0]) + "," + std::to_string(r[1]) + "," + std::to_string(r[2]));
    }

  // The middle window shows a preview: more than one colour, and not yet the result.
  const Region m = region_of(argv[3], mid_shot, w, h);
  const std::uint8_t* first = at(mid_shot, m.x, m.y);
  bool varied = false, differs = false;
  for (int y = 0; y < h * m.scale; ++y)
    for (int x = 0; x < w * m.scale; ++x) {
      const std::uint8_t* s = at(mid_shot, m.x + x, m.y + y);
      varied = varied || !same_rgb(s, first);
      differs = differs || !same_rgb(s, at(result, x / m.scale, y / m.scale));
    }
  if (!varied)
    fail(std::string(argv[3]) + ": the image region is one colour (" + std::to_string(first[0]) + "," +
         std::to_string(first[1]) + "," + std::to_string(first[2]) + "): no preview was drawn");
  if (!differs) fail(std::string(argv[3]) + ": the image region already shows the final result");

  std::printf("screenshots ok: the final window shows the %dx%d result at %dx; the step preview is drawn\n", w, h,
              f.scale);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "check failed: %s\n", e.what());
  return 1;
}
