/* SPDX-License-Identifier: MIT */
/* A game loop driving diffuse: each frame has a time budget (16.7 ms at 60 fps). The loop takes
 * sampler steps while the budget allows (at least one per frame, so the job always advances), shows
 * the preview (the current denoised estimate) every few frames, and writes the final image.
 *
 *   diffuse_game_loop [model folder] [class 0-9] [steps] [out prefix] [fps]
 *
 * Previews go to PREFIX_frameNNN.png, the result to PREFIX_final.png. A real engine would upload the
 * RGBA8 buffer to a texture instead; the calls are the same. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <diffuse/diffuse.h>

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(double ms) {
  struct timespec ts;
  if (ms <= 0) return;
  ts.tv_sec = (time_t)(ms / 1e3);
  ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1e3) * 1e6);
  nanosleep(&ts, NULL);
}

int main(int argc, char** argv) {
  const char* model_path = argc > 1 ? argv[1] : "models/digits-unet";
  const int label = argc > 2 ? atoi(argv[2]) : 3;
  const int steps = argc > 3 ? atoi(argv[3]) : 25;
  const char* prefix = argc > 4 ? argv[4] : "game_loop";
  const double fps = argc > 5 ? atof(argv[5]) : 60.0;
  const double budget_ms = 1000.0 / fps;
  const int preview_every = 2; /* frames */

  diffuse_context* ctx = NULL;
  diffuse_model* model = NULL;
  diffuse_job* job = NULL;
  diffuse_job_options jo;
  unsigned char* pixels = NULL;
  size_t bytes;
  int width = 0, height = 0, frame = 0, done = 0, step = 0, num_steps = 0, rc = 1;
  double step_ms = 0.0; /* running estimate of one step's cost, to stay inside the budget */
  char path[512];
  diffuse_status st = DIFFUSE_OK;

  if ((st = diffuse_context_create(NULL, &ctx)) != DIFFUSE_OK) return 1; /* 1 thread: the game has the rest */
  if ((st = diffuse_model_load(ctx, model_path, NULL, &model)) != DIFFUSE_OK) goto fail;
  diffuse_job_options_init(&jo);
  jo.class_label = label;
  jo.steps = steps;
  jo.seed = 2024;
  if ((st = diffuse_job_create(ctx, model, &jo, &job)) != DIFFUSE_OK) goto fail;
  diffuse_job_image_size(job, &width, &height, NULL, NULL);
  bytes = (size_t)width * (size_t)height * 4;
  pixels = (unsigned char*)malloc(bytes);
  if (!pixels) {
    st = DIFFUSE_OUT_OF_MEMORY;
    goto fail;
  }

  while (!done) {
    const double frame_start = now_ms();
    int steps_this_frame = 0;
    /* Steps while another one still fits in the frame. */
    do {
      const double t0 = now_ms();
      if ((st = diffuse_job_step(job, &done)) != DIFFUSE_OK) goto fail;
      const double dt = now_ms() - t0;
      step_ms = step_ms == 0.0 ? dt : 0.8 * step_ms + 0.2 * dt;
      ++steps_this_frame;
    } while (!done && now_ms() - frame_start + step_ms < budget_ms);

    /* "Render": the preview every few frames (a texture upload in a real engine). */
    if (frame % preview_every == 0 || done) {
      if ((st = diffuse_job_preview_rgba8(job, 0, pixels, bytes)) != DIFFUSE_OK) goto fail;
      snprintf(path, sizeof path, "%s_frame%03d.png", prefix, frame);
      if ((st = diffuse_write_png(ctx, path, pixels, width, height, 4, 8, NULL)) != DIFFUSE_OK) goto fail;
    }
    diffuse_job_progress(job, &step, &num_steps);
    printf("frame %3d: %d step(s), %d/%d, %.2f ms of %.2f ms\n", frame, steps_this_frame, step, num_steps,
           now_ms() - frame_start, budget_ms);
    ++frame;
    sleep_ms(budget_ms - (now_ms() - frame_start)); /* the rest of the frame belongs to the game */
  }

  if ((st = diffuse_job_result_rgba8(job, 0, pixels, bytes)) != DIFFUSE_OK) goto fail;
  snprintf(path, sizeof path, "%s_final.png", prefix);
  if ((st = diffuse_write_png(ctx, path, pixels, width, height, 4, 8, diffuse_job_parameters(job, 0))) != DIFFUSE_OK)
    goto fail;
  printf("wrote %s after %d frames\n", path, frame);
  rc = 0;
  goto done_label;

fail:
  fprintf(stderr, "error: %s: %s\n", diffuse_status_string(st), diffuse_context_last_error(ctx));
done_label:
  free(pixels);
  diffuse_job_free(job);
  diffuse_model_free(model);
  diffuse_context_destroy(ctx);
  return rc;
}
