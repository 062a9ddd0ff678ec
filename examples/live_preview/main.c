/* SPDX-License-Identifier: MIT */
/* A live preview for interactive hosts: a window where you type a prompt and watch the image form,
 * one sampler step per frame through the C ABI (diffuse.h), the preview (the current estimate of
 * the result, as RGB) fetched and drawn after every step, the window handling its events every frame.
 *
 *   diffuse_live_preview [--model DIR] [--prompt TEXT] [--steps N] [--seed S] [--scale K]
 *                        [--threads N] [--screenshot PATH] [--screenshot-step K] [--result PATH]
 *                        [--type TEXT] [--cancel-step K] [--exit-after-done]
 *
 * Keys: type to edit the prompt, Backspace deletes, Enter generates the prompt (replacing a running
 * generation), Escape cancels a running generation, a second Escape (or closing the window) quits.
 * A class-conditional model (models/digits-unet) takes the typed text as its class number.
 *
 * One step is the unit of latency here: the program steps on the main thread, between handling
 * events and presenting, so a frame lasts as long as one sampler step (tens of ms for a small
 * model) and a key press waits at most that long. A real engine would run the job on a worker
 * thread (one context per thread; diffuse_context_cancel may be called from any thread) and upload
 * the preview when a step finishes; this example stays on one thread to stay short.
 *
 * Text is drawn with a 5x7 bitmap font defined below (SDL2 has no text API, and SDL2_ttf would be
 * one more dependency). SDL2 is needed by this example only; the library does not use it. */
#define SDL_MAIN_HANDLED
#include <SDL.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <diffuse/diffuse.h>

/* ---- a 5x7 font for printable ASCII (32-126) with a descender row (g, j, p, q, y, comma): one
 * byte per row, bit 4 the leftmost column; a cell is a glyph and a blank column and row ---- */
enum { GLYPH_W = 5, GLYPH_H = 8, CELL_W = 6, CELL_H = 9, FIRST_GLYPH = 32, GLYPH_COUNT = 95 };
static const unsigned char font5x8[GLYPH_COUNT][GLYPH_H] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ' ' */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00}, /* '!' */
    {0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* '"' */
    {0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a, 0x00}, /* '#' */
    {0x04, 0x0f, 0x14, 0x0e, 0x05, 0x1e, 0x04, 0x00}, /* '$' */
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00}, /* '%' */
    {0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d, 0x00}, /* '&' */
    {0x04, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ''' */
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00}, /* '(' */
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00}, /* ')' */
    {0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00, 0x00}, /* asterisk */
    {0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00, 0x00}, /* '+' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08}, /* ',' */
    {0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00}, /* '-' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c, 0x00}, /* '.' */
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00, 0x00}, /* slash */
    {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e, 0x00}, /* '0' */
    {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00}, /* '1' */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f, 0x00}, /* '2' */
    {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e, 0x00}, /* '3' */
    {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02, 0x00}, /* '4' */
    {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e, 0x00}, /* '5' */
    {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e, 0x00}, /* '6' */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00}, /* '7' */
    {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e, 0x00}, /* '8' */
    {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c, 0x00}, /* '9' */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00, 0x00}, /* ':' */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x04, 0x08, 0x00}, /* ';' */
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00}, /* '<' */
    {0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00, 0x00}, /* '=' */
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00}, /* '>' */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00}, /* '?' */
    {0x0e, 0x11, 0x01, 0x0d, 0x15, 0x15, 0x0e, 0x00}, /* '@' */
    {0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11, 0x00}, /* 'A' */
    {0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e, 0x00}, /* 'B' */
    {0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e, 0x00}, /* 'C' */
    {0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c, 0x00}, /* 'D' */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f, 0x00}, /* 'E' */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10, 0x00}, /* 'F' */
    {0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f, 0x00}, /* 'G' */
    {0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11, 0x00}, /* 'H' */
    {0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00}, /* 'I' */
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c, 0x00}, /* 'J' */
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00}, /* 'K' */
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f, 0x00}, /* 'L' */
    {0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00}, /* 'M' */
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00}, /* 'N' */
    {0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e, 0x00}, /* 'O' */
    {0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10, 0x00}, /* 'P' */
    {0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d, 0x00}, /* 'Q' */
    {0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11, 0x00}, /* 'R' */
    {0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e, 0x00}, /* 'S' */
    {0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00}, /* 'T' */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e, 0x00}, /* 'U' */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04, 0x00}, /* 'V' */
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a, 0x00}, /* 'W' */
    {0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11, 0x00}, /* 'X' */
    {0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04, 0x00}, /* 'Y' */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f, 0x00}, /* 'Z' */
    {0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e, 0x00}, /* '[' */
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00, 0x00}, /* backslash */
    {0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e, 0x00}, /* ']' */
    {0x04, 0x0a, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00}, /* '^' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f}, /* '_' */
    {0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* '`' */
    {0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f, 0x00}, /* 'a' */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e, 0x00}, /* 'b' */
    {0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e, 0x00}, /* 'c' */
    {0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f, 0x00}, /* 'd' */
    {0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e, 0x00}, /* 'e' */
    {0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08, 0x00}, /* 'f' */
    {0x00, 0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* 'g' */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00}, /* 'h' */
    {0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e, 0x00}, /* 'i' */
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x12, 0x0c}, /* 'j' */
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00}, /* 'k' */
    {0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00}, /* 'l' */
    {0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11, 0x00}, /* 'm' */
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00}, /* 'n' */
    {0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e, 0x00}, /* 'o' */
    {0x00, 0x00, 0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10}, /* 'p' */
    {0x00, 0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x01}, /* 'q' */
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00}, /* 'r' */
    {0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e, 0x00}, /* 's' */
    {0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06, 0x00}, /* 't' */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d, 0x00}, /* 'u' */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04, 0x00}, /* 'v' */
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a, 0x00}, /* 'w' */
    {0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x00}, /* 'x' */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* 'y' */
    {0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f, 0x00}, /* 'z' */
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02, 0x00}, /* '{' */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00}, /* '|' */
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08, 0x00}, /* '}' */
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00}, /* '~' */
};

/* ---- layout ---- */
enum {
  MIN_IMAGE_SIDE = 384, /* smaller images are enlarged by the largest integer factor that fits */
  TEXT_SCALE = 2,       /* screen pixels per font pixel: a 12x18 character cell */
  TEXT_LINES = 4,
  LINE_H = CELL_H * TEXT_SCALE + 2,
  PAD = 4,
  PROMPT_MAX = 1024
};

typedef struct options {
  const char* model;
  const char* prompt;
  const char* type;
  const char* screenshot;
  const char* result;
  int steps;
  unsigned long long seed;
  int has_scale;
  float scale;
  int screenshot_step;
  int cancel_step;
  int exit_after_done;
  int threads;
} options;

typedef enum run_state { IDLE, RUNNING, DONE, CANCELLED, FAILED } run_state;

typedef struct app {
  options opt;
  diffuse_context* ctx;
  diffuse_model* model;
  diffuse_model_info info;
  diffuse_job* job;
  run_state state;
  int img_w, img_h, zoom; /* the job's image and its enlargement in the window */
  int win_w, win_h, img_x, img_y;
  SDL_Window* window;
  SDL_Renderer* renderer;
  SDL_Texture* image;
  SDL_Texture* font;
  unsigned char* pixels; /* img_w * img_h RGBA8 */
  size_t bytes;
  char prompt[PROMPT_MAX];  /* what is being typed */
  char running[PROMPT_MAX]; /* the prompt of the current run */
  char status[128];
  int quit, exit_code;
  /* the current run's statistics */
  int run, frames, denoise_steps, previews, mid_shot_taken, escape_pushed;
  double frame_sum, frame_max, step_sum, preview_sum, encode_ms, decode_ms, last_frame_ms;
} app;

static double now_ms(void) {
  return (double)SDL_GetPerformanceCounter() * 1000.0 / (double)SDL_GetPerformanceFrequency();
}

static void usage(FILE* to, const char* argv0) {
  fprintf(to,
          "usage: %s [--model DIR] [--prompt TEXT] [--steps N] [--seed S] [--scale K] [--threads N]\n"
          "          [--screenshot PATH] [--screenshot-step K] [--result PATH] [--type TEXT] [--cancel-step K]\n"
          "          [--exit-after-done]\n"
          "  --model DIR          a text-to-image pipeline folder (default models/emoji), or a class model\n"
          "  --prompt TEXT        the prompt line's initial text (Enter generates it)\n"
          "  --steps N            sampler steps (default: the model's)\n"
          "  --seed S             noise seed (default 0)\n"
          "  --scale K            guidance scale (default: the model's)\n"
          "  --threads N          threads of a step (default 1; 0: one per hardware thread)\n"
          "  --screenshot PATH    when a generation is done, the window as a PNG\n"
          "  --screenshot-step K  also the window after step K, as PATH with _stepK before .png\n"
          "  --result PATH        when a generation is done, the result image as a PNG\n"
          "  --type TEXT          type TEXT and Enter, as events, once the window is open\n"
          "  --cancel-step K      press Escape, as an event, after step K\n"
          "  --exit-after-done    quit when the first generation ends\n"
          "keys: Enter generates, Escape cancels (a second Escape quits), Backspace deletes\n",
          argv0);
}

static int parse_int(const char* s, long lo, long hi, int* out) {
  char* end = NULL;
  long v;
  errno = 0;
  v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return 0;
  *out = (int)v;
  return 1;
}

/* 0: run; 1: error (message printed); 2: --help. */
static int parse_args(int argc, char** argv, options* o) {
  static const char* const with_value[] = {"--model", "--prompt",          "--type",        "--screenshot", "--result",
                                           "--steps", "--screenshot-step", "--cancel-step", "--threads",    "--seed",
                                           "--scale"};
  int i;
  memset(o, 0, sizeof *o);
  o->model = "models/emoji";
  o->prompt = "";
  o->steps = -1;
  o->threads = 1;
  for (i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 2;
    if (!strcmp(a, "--exit-after-done")) {
      o->exit_after_done = 1;
      continue;
    }
    {
      size_t k, known = 0;
      for (k = 0; k < sizeof with_value / sizeof with_value[0]; ++k) known |= !strcmp(a, with_value[k]);
      if (!known) {
        fprintf(stderr, "error: unknown option '%s' (--help lists the options)\n", a);
        return 1;
      }
    }
    if (!v) {
      fprintf(stderr, "error: %s needs a value\n", a);
      return 1;
    }
    ++i;
    if (!strcmp(a, "--model")) {
      o->model = v;
    } else if (!strcmp(a, "--prompt")) {
      o->prompt = v;
    } else if (!strcmp(a, "--type")) {
      o->type = v;
    } else if (!strcmp(a, "--screenshot")) {
      o->screenshot = v;
    } else if (!strcmp(a, "--result")) {
      o->result = v;
    } else if (!strcmp(a, "--steps")) {
      if (!parse_int(v, 1, 100000, &o->steps)) goto bad;
    } else if (!strcmp(a, "--screenshot-step")) {
      if (!parse_int(v, 1, 100000, &o->screenshot_step)) goto bad;
    } else if (!strcmp(a, "--cancel-step")) {
      if (!parse_int(v, 1, 100000, &o->cancel_step)) goto bad;
    } else if (!strcmp(a, "--threads")) {
      if (!parse_int(v, 0, 256, &o->threads)) goto bad;
    } else if (!strcmp(a, "--seed")) {
      char* end = NULL;
      errno = 0;
      o->seed = strtoull(v, &end, 10);
      if (errno || end == v || *end || *v == '-') goto bad;
    } else if (!strcmp(a, "--scale")) {
      char* end = NULL;
      errno = 0;
      o->scale = strtof(v, &end);
      if (errno || end == v || *end || !(o->scale >= 0.0f && o->scale <= 1000.0f)) goto bad;
      o->has_scale = 1;
    }
    continue;
  bad:
    fprintf(stderr, "error: bad value '%s' for %s\n", v, a);
    return 1;
  }
  if (strlen(o->prompt) >= PROMPT_MAX) {
    fprintf(stderr, "error: --prompt is longer than %d bytes\n", PROMPT_MAX - 1);
    return 1;
  }
  return 0;
}

static void report(app* a, diffuse_status st, const char* what) {
  fprintf(stderr, "error: %s: %s: %s\n", what, diffuse_status_string(st), diffuse_context_last_error(a->ctx));
}

/* The job options of a generation of `text` (a prompt, or a class number for a class model).
 * Returns 0 when the text is no class number for a class model. */
static int job_options(const app* a, const char* text, diffuse_job_options* jo) {
  diffuse_job_options_init(jo);
  jo->steps = a->opt.steps;
  jo->seed = (uint64_t)a->opt.seed;
  if (a->opt.has_scale) jo->guidance_scale = a->opt.scale;
  if (a->info.text_conditional) {
    jo->prompt = text;
  } else if (a->info.num_classes > 0 && *text) {
    int label;
    if (!parse_int(text, 0, a->info.num_classes - 1, &label)) return 0;
    jo->class_label = label;
  }
  return 1;
}

/* ---- drawing ---- */

static SDL_Texture* make_font_texture(SDL_Renderer* r) {
  static Uint32 px[CELL_H][GLYPH_COUNT * CELL_W];
  SDL_Texture* t;
  int g, y, x;
  memset(px, 0, sizeof px);
  for (g = 0; g < GLYPH_COUNT; ++g)
    for (y = 0; y < GLYPH_H; ++y)
      for (x = 0; x < GLYPH_W; ++x)
        if (font5x8[g][y] & (0x10 >> x)) px[y][g * CELL_W + x] = 0xffffffffu;
  t = SDL_CreateTexture(r, SDL_PIXELFORMAT_ARGB8888, SDL_TEXTUREACCESS_STATIC, GLYPH_COUNT * CELL_W, CELL_H);
  if (!t) return NULL;
  SDL_UpdateTexture(t, NULL, px, (int)sizeof px[0]);
  SDL_SetTextureBlendMode(t, SDL_BLENDMODE_BLEND);
  return t;
}

/* Draws `n` bytes of UTF-8 text at (x, y): one cell per code point, '?' for what the font lacks. */
static void draw_text(const app* a, int x, int y, const char* s, size_t n, Uint8 red, Uint8 green, Uint8 blue) {
  size_t i;
  SDL_SetTextureColorMod(a->font, red, green, blue);
  for (i = 0; i < n; ++i) {
    const unsigned char c = (unsigned char)s[i];
    int g;
    SDL_Rect src, dst;
    if ((c & 0xc0) == 0x80) continue; /* a continuation byte: the code point already has its cell */
    g = c >= FIRST_GLYPH && c < FIRST_GLYPH + GLYPH_COUNT ? c - FIRST_GLYPH : '?' - FIRST_GLYPH;
    src.x = g * CELL_W;
    src.y = 0;
    src.w = CELL_W;
    src.h = CELL_H;
    dst.x = x;
    dst.y = y;
    dst.w = CELL_W * TEXT_SCALE;
    dst.h = CELL_H * TEXT_SCALE;
    SDL_RenderCopy(a->renderer, a->font, &src, &dst);
    x += CELL_W * TEXT_SCALE;
  }
}

static size_t code_points(const char* s, size_t n) {
  size_t i, k = 0;
  for (i = 0; i < n; ++i) k += ((unsigned char)s[i] & 0xc0) != 0x80;
  return k;
}

static void draw(app* a) {
  const int columns = (a->win_w - 2 * PAD) / (CELL_W * TEXT_SCALE);
  const int text_y = a->img_y + a->img_h * a->zoom + PAD;
  SDL_Rect dst;
  char line[96];
  const char* p = a->prompt;
  size_t n = strlen(p);
  int step = 0, num_steps = 0;

  SDL_SetRenderDrawColor(a->renderer, 16, 16, 20, 255);
  SDL_RenderClear(a->renderer);
  dst.x = a->img_x;
  dst.y = a->img_y;
  dst.w = a->img_w * a->zoom;
  dst.h = a->img_h * a->zoom;
  SDL_RenderCopy(a->renderer, a->image, NULL, &dst);

  /* Line 1: the prompt being typed, its end when it is longer than the line, and a cursor. */
  while (columns > 3 && code_points(p, n) > (size_t)(columns - 3)) {
    do {
      ++p;
      --n;
    } while (n && ((unsigned char)*p & 0xc0) == 0x80);
  }
  draw_text(a, PAD, text_y, "> ", 2, 120, 200, 255);
  draw_text(a, PAD + 2 * CELL_W * TEXT_SCALE, text_y, p, n, 255, 255, 255);
  draw_text(a, PAD + (2 + (int)code_points(p, n)) * CELL_W * TEXT_SCALE, text_y, "_", 1, 120, 200, 255);

  /* Line 2: what the job is doing; line 3: the times; line 4: the keys. */
  if (a->job) diffuse_job_progress(a->job, &step, &num_steps);
  if (a->state == RUNNING) {
    diffuse_stage stage = DIFFUSE_STAGE_DENOISE;
    diffuse_job_stage(a->job, &stage);
    if (stage == DIFFUSE_STAGE_ENCODE)
      snprintf(a->status, sizeof a->status, "encoding the prompt");
    else if (stage == DIFFUSE_STAGE_DECODE)
      snprintf(a->status, sizeof a->status, "step %d/%d, decoding", step, num_steps);
    else
      snprintf(a->status, sizeof a->status, "step %d/%d", step, num_steps);
  }
  draw_text(a, PAD, text_y + LINE_H, a->status, strlen(a->status), 255, 220, 120);
  snprintf(line, sizeof line, "frame %.1f ms  step %.1f ms", a->last_frame_ms,
           a->denoise_steps ? a->step_sum / a->denoise_steps : 0.0);
  draw_text(a, PAD, text_y + 2 * LINE_H, line, strlen(line), 200, 200, 200);
  snprintf(line, sizeof line, "%s", a->state == RUNNING ? "Enter: restart  Esc: cancel" : "Enter: generate  Esc: quit");
  draw_text(a, PAD, text_y + 3 * LINE_H, line, strlen(line), 110, 110, 120);
}

/* The window's pixels (the frame drawn, not yet presented) as a PNG, with the job's parameters and
 * where the image is in the window ("Window image: x=.. y=.. scale=..", which the test reads). */
static int screenshot(app* a, const char* path) {
  int w = 0, h = 0, rc = 0;
  size_t i;
  unsigned char* buf;
  char text[4096];
  const char* params = a->job ? diffuse_job_parameters(a->job, 0) : NULL;
  diffuse_status st;
  if (SDL_GetRendererOutputSize(a->renderer, &w, &h) != 0) {
    fprintf(stderr, "error: SDL_GetRendererOutputSize: %s\n", SDL_GetError());
    return 0;
  }
  buf = (unsigned char*)malloc((size_t)w * (size_t)h * 4);
  if (!buf) {
    fprintf(stderr, "error: out of memory for a %dx%d screenshot\n", w, h);
    return 0;
  }
  if (SDL_RenderReadPixels(a->renderer, NULL, SDL_PIXELFORMAT_RGBA32, buf, w * 4) != 0) {
    fprintf(stderr, "error: SDL_RenderReadPixels: %s\n", SDL_GetError());
  } else {
    for (i = 3; i < (size_t)w * (size_t)h * 4; i += 4) buf[i] = 255; /* the window has no alpha */
    snprintf(text, sizeof text, "%s%sWindow image: x=%d y=%d scale=%d", params ? params : "", params ? ", " : "",
             a->img_x, a->img_y, a->zoom);
    if ((st = diffuse_write_png(a->ctx, path, buf, w, h, 4, 1, text)) != DIFFUSE_OK) {
      report(a, st, "diffuse_write_png");
    } else {
      printf("wrote %s (%dx%d window)\n", path, w, h);
      rc = 1;
    }
  }
  free(buf);
  return rc;
}

/* PATH with _stepK before its extension: shot.png -> shot_step2.png. */
static void step_path(char* out, size_t size, const char* path, int k) {
  const char* dot = strrchr(path, '.');
  const char* slash = strrchr(path, '/');
  if (!dot || (slash && dot < slash)) dot = path + strlen(path);
  snprintf(out, size, "%.*s_step%d%s", (int)(dot - path), path, k, dot);
}

static void clear_image(app* a) {
  size_t i;
  for (i = 0; i < a->bytes; i += 4) {
    a->pixels[i] = a->pixels[i + 1] = a->pixels[i + 2] = 48;
    a->pixels[i + 3] = 255;
  }
  SDL_UpdateTexture(a->image, NULL, a->pixels, a->img_w * 4);
}

/* ---- runs ---- */

static void print_stats(app* a, const char* how) {
  int step = 0, num_steps = 0;
  if (a->job) diffuse_job_progress(a->job, &step, &num_steps);
  printf(
      "run %d \"%s\": %s at step %d/%d after %d frames; frame mean %.1f ms, max %.1f ms; "
      "step mean %.1f ms over %d steps, preview mean %.1f ms (prompt encode %.1f ms, decode %.1f ms)\n",
      a->run, a->running, how, step, num_steps, a->frames, a->frames ? a->frame_sum / a->frames : 0.0, a->frame_max,
      a->denoise_steps ? a->step_sum / a->denoise_steps : 0.0, a->denoise_steps,
      a->previews ? a->preview_sum / a->previews : 0.0, a->encode_ms, a->decode_ms);
  fflush(stdout);
}

/* Enter: frees the running job, if any, and starts one of the typed prompt. */
static void start_run(app* a) {
  diffuse_job_options jo;
  diffuse_status st;
  if (a->state == RUNNING) print_stats(a, "replaced");
  diffuse_job_free(a->job);
  a->job = NULL;
  snprintf(a->running, sizeof a->running, "%s", a->prompt);
  ++a->run;
  a->frames = a->denoise_steps = a->previews = a->mid_shot_taken = a->escape_pushed = 0;
  a->frame_sum = a->frame_max = a->step_sum = a->preview_sum = a->encode_ms = a->decode_ms = 0.0;
  if (!job_options(a, a->running, &jo)) {
    fprintf(stderr, "error: '%s' is no class of %s (0-%d)\n", a->running, a->info.name, a->info.num_classes - 1);
    snprintf(a->status, sizeof a->status, "type a class, 0-%d", a->info.num_classes - 1);
    a->state = FAILED;
    a->exit_code = 1;
    return;
  }
  if ((st = diffuse_job_create(a->ctx, a->model, &jo, &a->job)) != DIFFUSE_OK) {
    report(a, st, "diffuse_job_create");
    snprintf(a->status, sizeof a->status, "error: %s", diffuse_status_string(st));
    a->state = FAILED;
    a->exit_code = 1;
    return;
  }
  clear_image(a);
  a->state = RUNNING;
}

/* One sampler step (or the prompt encode, or the decode) and the new preview or the result. */
static void step_run(app* a) {
  diffuse_stage stage = DIFFUSE_STAGE_DENOISE;
  diffuse_status st;
  int done = 0, step = 0, num_steps = 0;
  double t0, dt;
  diffuse_job_stage(a->job, &stage);
  t0 = now_ms();
  st = diffuse_job_step(a->job, &done);
  dt = now_ms() - t0;
  diffuse_job_progress(a->job, &step, &num_steps);
  if (st == DIFFUSE_CANCELLED) {
    a->state = CANCELLED;
    snprintf(a->status, sizeof a->status, "cancelled at step %d/%d", step, num_steps);
    return;
  }
  if (st != DIFFUSE_OK) {
    report(a, st, "diffuse_job_step");
    snprintf(a->status, sizeof a->status, "error: %s", diffuse_status_string(st));
    a->state = FAILED;
    a->exit_code = 1;
    return;
  }
  if (stage == DIFFUSE_STAGE_ENCODE || stage == DIFFUSE_STAGE_ENCODE_IMAGE) {
    a->encode_ms += dt;
  } else if (stage == DIFFUSE_STAGE_DECODE) {
    a->decode_ms += dt;
  } else {
    a->step_sum += dt;
    ++a->denoise_steps;
  }
  if (done) {
    st = diffuse_job_result_rgba8(a->job, 0, a->pixels, a->bytes);
    a->state = DONE;
    snprintf(a->status, sizeof a->status, "done: %d steps", num_steps);
  } else {
    t0 = now_ms();
    st = diffuse_job_preview_rgba8(a->job, 0, a->pixels, a->bytes);
    if (st == DIFFUSE_WRONG_STATE) return; /* the prompt encode: no estimate yet */
  }
  if (st != DIFFUSE_OK) {
    report(a, st, done ? "diffuse_job_result_rgba8" : "diffuse_job_preview_rgba8");
    a->state = FAILED;
    a->exit_code = 1;
    return;
  }
  SDL_UpdateTexture(a->image, NULL, a->pixels, a->img_w * 4);
  if (!done) { /* the preview's cost: the latents to RGB (or a tiny VAE decode) and the upload */
    a->preview_sum += now_ms() - t0;
    ++a->previews;
  }
}

/* ---- events ---- */

static void handle_event(app* a, const SDL_Event* e) {
  if (e->type == SDL_QUIT) {
    a->quit = 1;
  } else if (e->type == SDL_TEXTINPUT) {
    const size_t n = strlen(a->prompt), add = strlen(e->text.text);
    if (n + add < sizeof a->prompt) memcpy(a->prompt + n, e->text.text, add + 1);
  } else if (e->type == SDL_KEYDOWN) {
    const SDL_Keycode key = e->key.keysym.sym;
    if (key == SDLK_ESCAPE) {
      if (a->state == RUNNING) {
        /* The next diffuse_job_step returns DIFFUSE_CANCELLED: the same call a worker-thread host
         * makes from its UI thread while a step runs. */
        diffuse_context_cancel(a->ctx);
      } else if (!e->key.repeat) {
        a->quit = 1;
      }
    } else if (key == SDLK_BACKSPACE) {
      size_t n = strlen(a->prompt);
      while (n > 0 && ((unsigned char)a->prompt[n - 1] & 0xc0) == 0x80) --n; /* a whole code point */
      if (n > 0) --n;
      a->prompt[n] = '\0';
    } else if ((key == SDLK_RETURN || key == SDLK_KP_ENTER) && !e->key.repeat) {
      start_run(a);
    }
  }
}

/* A key press and release, pushed to the event queue. */
static void push_key(app* a, SDL_Keycode sym, SDL_Scancode scancode) {
  SDL_Event e;
  memset(&e, 0, sizeof e);
  e.key.type = SDL_KEYDOWN;
  e.key.timestamp = SDL_GetTicks();
  e.key.windowID = SDL_GetWindowID(a->window);
  e.key.state = SDL_PRESSED;
  e.key.keysym.scancode = scancode;
  e.key.keysym.sym = sym;
  SDL_PushEvent(&e);
  e.key.type = SDL_KEYUP;
  e.key.state = SDL_RELEASED;
  SDL_PushEvent(&e);
}

/* --type: the text as SDL_TEXTINPUT events (at most 31 bytes each, whole code points) and an Enter
 * key press, pushed to the queue, so the frames that follow handle them as typed input. */
static void push_typing(app* a, const char* text) {
  SDL_Event e;
  size_t n = strlen(text);
  while (n > 0) {
    size_t k = n < SDL_TEXTINPUTEVENT_TEXT_SIZE - 1 ? n : SDL_TEXTINPUTEVENT_TEXT_SIZE - 1;
    while (k < n && k > 0 && ((unsigned char)text[k] & 0xc0) == 0x80) --k;
    if (k == 0) k = n < SDL_TEXTINPUTEVENT_TEXT_SIZE - 1 ? n : SDL_TEXTINPUTEVENT_TEXT_SIZE - 1; /* not UTF-8 */
    memset(&e, 0, sizeof e);
    e.text.type = SDL_TEXTINPUT;
    e.text.timestamp = SDL_GetTicks();
    e.text.windowID = SDL_GetWindowID(a->window);
    memcpy(e.text.text, text, k);
    SDL_PushEvent(&e);
    text += k;
    n -= k;
  }
  push_key(a, SDLK_RETURN, SDL_SCANCODE_RETURN);
}

/* ---- setup ---- */

/* Loads the model and sizes the window from a first job of the options (a job draws its noise
 * when it is created; no network runs), so that bad options fail before a window opens. */
static int load(app* a) {
  diffuse_context_options co;
  diffuse_job_options jo;
  diffuse_job* probe = NULL;
  diffuse_status st;
  diffuse_context_options_init(&co);
  co.threads = a->opt.threads;
  if ((st = diffuse_context_create(&co, &a->ctx)) != DIFFUSE_OK) {
    fprintf(stderr, "error: diffuse_context_create: %s\n", diffuse_status_string(st));
    return 0;
  }
  if ((st = diffuse_model_load(a->ctx, a->opt.model, NULL, &a->model)) != DIFFUSE_OK) {
    fprintf(stderr, "error: cannot load the model '%s': %s: %s\n", a->opt.model, diffuse_status_string(st),
            diffuse_context_last_error(a->ctx));
    return 0;
  }
  diffuse_model_info_init(&a->info);
  diffuse_model_get_info(a->model, &a->info);
  job_options(a, "", &jo);
  if ((st = diffuse_job_create(a->ctx, a->model, &jo, &probe)) != DIFFUSE_OK) {
    report(a, st, "diffuse_job_create");
    return 0;
  }
  diffuse_job_image_size(probe, &a->img_w, &a->img_h, NULL, NULL);
  diffuse_job_free(probe);
  a->bytes = (size_t)a->img_w * (size_t)a->img_h * 4;
  a->pixels = (unsigned char*)malloc(a->bytes);
  if (!a->pixels) {
    fprintf(stderr, "error: out of memory\n");
    return 0;
  }
  a->zoom = MIN_IMAGE_SIDE / (a->img_w > a->img_h ? a->img_w : a->img_h);
  if (a->zoom < 1) a->zoom = 1;
  a->win_w = a->img_w * a->zoom > MIN_IMAGE_SIDE ? a->img_w * a->zoom : MIN_IMAGE_SIDE;
  a->win_h = a->img_h * a->zoom + 2 * PAD + TEXT_LINES * LINE_H;
  a->img_x = (a->win_w - a->img_w * a->zoom) / 2;
  a->img_y = 0;
  return 1;
}

static int open_window(app* a) {
  SDL_RendererInfo ri;
  char title[256];
  SDL_SetHint(SDL_HINT_RENDER_SCALE_QUALITY, "nearest"); /* enlarge the image pixel by pixel */
  if (SDL_Init(SDL_INIT_VIDEO) != 0) {
    fprintf(stderr, "error: SDL_Init: %s\n", SDL_GetError());
    return 0;
  }
  snprintf(title, sizeof title, "diffuse live preview: %s", a->info.name ? a->info.name : a->opt.model);
  a->window = SDL_CreateWindow(title, SDL_WINDOWPOS_CENTERED, SDL_WINDOWPOS_CENTERED, a->win_w, a->win_h, 0);
  if (!a->window) {
    fprintf(stderr, "error: SDL_CreateWindow: %s\n", SDL_GetError());
    return 0;
  }
  /* No vsync: a frame is as long as its step, not rounded up to the display's refresh. */
  a->renderer = SDL_CreateRenderer(a->window, -1, 0);
  if (!a->renderer) {
    fprintf(stderr, "error: SDL_CreateRenderer: %s\n", SDL_GetError());
    return 0;
  }
  a->image = SDL_CreateTexture(a->renderer, SDL_PIXELFORMAT_RGBA32, SDL_TEXTUREACCESS_STREAMING, a->img_w, a->img_h);
  a->font = make_font_texture(a->renderer);
  if (!a->image || !a->font) {
    fprintf(stderr, "error: SDL_CreateTexture: %s\n", SDL_GetError());
    return 0;
  }
  SDL_GetRendererInfo(a->renderer, &ri);
  if (!strcmp(SDL_GetCurrentVideoDriver(), "offscreen") || !strcmp(SDL_GetCurrentVideoDriver(), "dummy"))
    fprintf(stderr, "note: no display found (SDL video driver '%s'): the window is not shown\n",
            SDL_GetCurrentVideoDriver());
  printf("model %s: %dx%d images shown at %dx in a %dx%d window (%s video, %s renderer), %d thread(s)\n",
         a->info.name ? a->info.name : a->opt.model, a->img_w, a->img_h, a->zoom, a->win_w, a->win_h,
         SDL_GetCurrentVideoDriver(), ri.name, a->opt.threads);
  fflush(stdout);
  clear_image(a);
  SDL_StartTextInput();
  return 1;
}

int main(int argc, char** argv) {
  app a;
  SDL_Event e;
  const int parsed = parse_args(argc, argv, &a.opt);
  if (parsed == 2) {
    usage(stdout, argv[0]);
    return 0;
  }
  if (parsed) return 2;
  {
    const options opt = a.opt;
    memset(&a, 0, sizeof a);
    a.opt = opt;
  }
  snprintf(a.prompt, sizeof a.prompt, "%s", a.opt.prompt);
  snprintf(a.status, sizeof a.status, "%s", "type a prompt, then Enter");
  a.exit_code = 1;
  if (!load(&a) || !open_window(&a)) goto finish;
  a.exit_code = 0;
  if (!a.info.text_conditional && a.info.num_classes > 0)
    snprintf(a.status, sizeof a.status, "type a class, 0-%d", a.info.num_classes - 1);
  if (a.opt.type) push_typing(&a, a.opt.type);

  while (!a.quit) {
    double t0, shot_ms = 0.0;
    int stepping, step = 0;

    /* Nothing to compute: sleep until an event (a timeout keeps a slow redraw going). */
    if (a.state != RUNNING) SDL_WaitEventTimeout(NULL, 100);
    t0 = now_ms();
    while (SDL_PollEvent(&e)) handle_event(&a, &e); /* every frame, also while a job runs */
    if (a.quit) {
      if (a.state == RUNNING) print_stats(&a, "quit");
      break;
    }
    if (a.opt.exit_after_done && a.state == FAILED) break; /* the job could not be created */

    stepping = a.state == RUNNING;
    if (stepping) step_run(&a); /* at most one step per frame */
    draw(&a);

    /* Screenshots read the frame back before it is presented. */
    if (a.job) diffuse_job_progress(a.job, &step, NULL);
    if (stepping && a.opt.screenshot && a.opt.screenshot_step && !a.mid_shot_taken && a.state == RUNNING &&
        step == a.opt.screenshot_step && a.denoise_steps == step) {
      char path[1024];
      const double s0 = now_ms();
      step_path(path, sizeof path, a.opt.screenshot, step);
      if (!screenshot(&a, path)) a.exit_code = 1;
      a.mid_shot_taken = 1;
      shot_ms += now_ms() - s0;
    }
    if (stepping && a.opt.cancel_step && !a.escape_pushed && a.state == RUNNING &&
        a.denoise_steps == a.opt.cancel_step) {
      push_key(&a, SDLK_ESCAPE, SDL_SCANCODE_ESCAPE); /* handled by the next frame, as a key press would be */
      a.escape_pushed = 1;
    }
    if (stepping && a.state == DONE) {
      const double s0 = now_ms();
      if (a.opt.screenshot && !screenshot(&a, a.opt.screenshot)) a.exit_code = 1;
      if (a.opt.result) {
        const diffuse_status st =
            diffuse_write_png(a.ctx, a.opt.result, a.pixels, a.img_w, a.img_h, 4, 1, diffuse_job_parameters(a.job, 0));
        if (st != DIFFUSE_OK) {
          report(&a, st, "diffuse_write_png");
          a.exit_code = 1;
        } else {
          printf("wrote %s (%dx%d result)\n", a.opt.result, a.img_w, a.img_h);
        }
      }
      shot_ms += now_ms() - s0;
    }
    SDL_RenderPresent(a.renderer);

    if (stepping) { /* the frames of a run; the screenshots' read-back and PNG writing not counted */
      const double ms = now_ms() - t0 - shot_ms;
      a.last_frame_ms = ms;
      a.frame_sum += ms;
      if (ms > a.frame_max) a.frame_max = ms;
      ++a.frames;
      if (a.state != RUNNING) {
        print_stats(&a, a.state == DONE ? "done" : a.state == CANCELLED ? "cancelled" : "failed");
        if (a.opt.exit_after_done) break;
      }
    }
  }

finish:
  diffuse_job_free(a.job);
  diffuse_model_free(a.model);
  diffuse_context_destroy(a.ctx);
  free(a.pixels);
  if (a.font) SDL_DestroyTexture(a.font);
  if (a.image) SDL_DestroyTexture(a.image);
  if (a.renderer) SDL_DestroyRenderer(a.renderer);
  if (a.window) SDL_DestroyWindow(a.window);
  if (a.window || SDL_WasInit(SDL_INIT_VIDEO)) SDL_Quit();
  return a.exit_code;
}
