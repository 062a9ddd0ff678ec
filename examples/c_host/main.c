/* SPDX-License-Identifier: MIT */
/* A C host of diffuse: load a shipped model, generate one digit with the progress printed, write a PNG.
 *
 *   diffuse_c_host [model folder] [class 0-9] [steps] [seed] [out.png]
 *   diffuse_c_host models/digits-dit 7 25 42 seven.png
 *
 * Every call returns a diffuse_status; on failure the context says what went wrong. */
#include <stdio.h>
#include <stdlib.h>

#include <diffuse/diffuse.h>

static void on_log(void* user, diffuse_log_level level, const char* message) {
  (void)user;
  fprintf(stderr, "[diffuse %s] %s\n", level >= DIFFUSE_LOG_ERROR ? "error" : "info", message);
}

static void on_progress(void* user, diffuse_job* job, int step, int num_steps) {
  (void)user;
  (void)job;
  printf("\rstep %2d/%d", step, num_steps);
  if (step == num_steps) printf("\n");
  fflush(stdout);
}

int main(int argc, char** argv) {
  const char* model_path = argc > 1 ? argv[1] : "models/digits-dit";
  const int label = argc > 2 ? atoi(argv[2]) : 7;
  const int steps = argc > 3 ? atoi(argv[3]) : -1; /* -1: the model's default */
  const unsigned long long seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 42;
  const char* out_path = argc > 5 ? argv[5] : "c_host.png";

  diffuse_context_options co;
  diffuse_context* ctx = NULL;
  diffuse_model* model = NULL;
  diffuse_model_info info;
  diffuse_job_options jo;
  diffuse_job* job = NULL;
  unsigned char* pixels = NULL;
  int width = 0, height = 0, rc = 1;
  diffuse_status st;

  printf("diffuse %s (C ABI %d)\n", diffuse_version_string(), diffuse_abi_version());
  diffuse_context_options_init(&co);
  co.threads = 2;
  co.log_callback = on_log;
  co.progress_callback = on_progress;
  if ((st = diffuse_context_create(&co, &ctx)) != DIFFUSE_OK) {
    fprintf(stderr, "cannot create a context: %s\n", diffuse_status_string(st));
    return 1;
  }

  if ((st = diffuse_model_load(ctx, model_path, NULL, &model)) != DIFFUSE_OK) goto fail;
  diffuse_model_info_init(&info);
  diffuse_model_get_info(model, &info);
  printf("%s: %s, %dx%d, %d classes, default sampler %s\n", info.name, info.architecture, info.sample_size,
         info.sample_size, info.num_classes, info.default_sampler);

  diffuse_job_options_init(&jo);
  jo.class_label = label;
  jo.steps = steps;
  jo.seed = seed;
  if ((st = diffuse_job_create(ctx, model, &jo, &job)) != DIFFUSE_OK) goto fail;
  if ((st = diffuse_job_run(job)) != DIFFUSE_OK) goto fail;

  diffuse_job_image_size(job, &width, &height, NULL, NULL);
  pixels = (unsigned char*)malloc((size_t)width * (size_t)height * 4);
  if (!pixels) {
    st = DIFFUSE_OUT_OF_MEMORY;
    goto fail;
  }
  if ((st = diffuse_job_result_rgba8(job, 0, pixels, (size_t)width * (size_t)height * 4)) != DIFFUSE_OK) goto fail;
  /* 16x16 is tiny: enlarge 8x, and record how it was made in the PNG's "parameters" text. */
  if ((st = diffuse_write_png(ctx, out_path, pixels, width, height, 4, 8, diffuse_job_parameters(job, 0))) != DIFFUSE_OK)
    goto fail;
  printf("wrote %s (%s)\n", out_path, diffuse_job_parameters(job, 0));
  rc = 0;
  goto done;

fail:
  fprintf(stderr, "error: %s: %s\n", diffuse_status_string(st), diffuse_context_last_error(ctx));
done:
  free(pixels);
  diffuse_job_free(job);
  diffuse_model_free(model);
  diffuse_context_destroy(ctx);
  return rc;
}
