// SPDX-License-Identifier: MIT
// The `diffuse` program's pieces shared between its files: exit codes, the usage error, the
// subcommands and the progress display.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace diffuse_cli {

/// Exit codes (documented in --help and the README).
enum ExitCode : int {
  kOk = 0,
  kRuntime = 1,  ///< a file could not be read or written, or the generation failed
  kUsage = 2,    ///< the command line is wrong: unknown option, bad value, value the model refuses
};

/// A command-line mistake found after parsing (exit code 2).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The options of `diffuse generate` as typed. The whole numbers are kept as the text given (empty:
/// not given) and checked by run_generate, so that a message quotes what was typed.
struct GenerateArgs {
  std::string model;
  std::string classes;  ///< "3", "0,1,2" or "all"
  std::string sampler, schedule;
  std::string steps;
  double cfg_scale = 0;
  bool cfg_set = false;
  std::string seed = "42";
  std::string rng;              ///< torch (default) | a1111-cpu | a1111-nv (aliases cpu, nv, gpu, cuda)
  std::string noise_seed_delta; ///< A1111's ENSD, with an A1111 rng
  std::string batch;  ///< not given: one per class given, else 1
  std::string width, height;
  std::string threads = "0";  ///< 0: one per hardware thread
  std::string scale = "0";    ///< 0: automatic (images at least 128 pixels on their larger side)
  std::string memory_limit;  ///< "4G", "512M"; empty: 3/4 of the physical memory
  std::string output = "diffuse.png";
  bool grid = false;
  std::string grid_columns;  ///< images per grid row (empty: up to 10)
  bool quiet = false;
  std::string vae;            ///< another VAE folder for a latent model (AutoencoderKL or a tiny one)
  std::string preview_vae;    ///< a tiny VAE (TAESD) folder for the previews
  int tiled = -1;             ///< --tiled 1, --no-tiled 0, automatic -1
  std::string preview_every;  ///< write a preview frame every N steps (empty: none)
  std::vector<std::string> prompts;  ///< -p once (all images) or once per image
  bool prompt_set = false;           ///< -p given ("" is the empty prompt)
  std::string negative_prompt;  ///< what guidance steers away from
  bool negative_set = false;
  std::string clip_skip;        ///< A1111's clip skip (empty: 1)
  double guidance_rescale = 0;  ///< phi in 0..1
  std::string emphasis;         ///< none, ignore, original (default), no_norm
  bool low_memory = false;       ///< --no-winograd, tiled decode, LoadOptions::stream_weights
  bool no_winograd = false;     ///< LoadOptions::winograd off: less memory, slower 3x3 convolutions
  std::string init_image;       ///< img2img: the PNG (or any stb_image file) to start from
  std::string strength;         ///< img2img strength, (0, 1]; empty: 0.8 (1 with a mask)
  std::string mask;             ///< inpainting: the mask image (white = repaint), with init_image
};

/// The options of `diffuse tokenize`.
struct TokenizeArgs {
  std::string model;   ///< pipeline folder (tokenizer/), tokenizer folder, or bpe_simple_vocab_16e6.txt
  std::string prompt;
  bool json = false;
  bool tokens = false;  ///< also print the token strings
  bool no_emphasis = false;  ///< chunks without A1111's emphasis syntax (text::Emphasis::none)
  bool no_chunking = false;  ///< one chunk, truncated to 75 tokens
};

int run_generate(const GenerateArgs& args);

/** `s` as it may be printed on a terminal: control characters (C0, DEL, C1) and bytes that are
 *  not UTF-8 are shown escaped (`\x1b`, `\n`), so a string from a file (a config value, a folder
 *  name, an error message quoting one) cannot move the cursor, retitle the window or hide text.
 *  Every string the program prints that it did not write itself goes through it. */
std::string printable(std::string_view s);

int run_tokenize(const TokenizeArgs& args);
int run_list();
int run_info(const std::string& model);

/** Progress on stderr. On a terminal: one line redrawn in place ("[#####.....] 12/25 3.4 steps/s").
 *  Otherwise nothing per step (logs stay clean); the final summary line is printed either way. */
class Progress {
 public:
  Progress(std::size_t total, bool enabled);
  /// `done` steps of `total` (the total may change: dpm_adaptive ends within its budget).
  void update(std::size_t done, std::size_t total);
  /// Ends the bar line (if drawn) and returns the seconds since construction.
  double finish();

 private:
  std::size_t total_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace diffuse_cli
