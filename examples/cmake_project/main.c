/* SPDX-License-Identifier: MIT */
/* An application built against the installed diffuse package, through the C ABI only:
 *   diffuse_app MODEL_FOLDER [class] [out.png]
 * Generates one image in 4 steps and writes it; exits non-zero on any error. */
#include <stdio.h>
#include <stdlib.h>

#include <diffuse/diffuse.h>

#if DIFFUSE_ABI_VERSION < 1
#error "this program needs the diffuse C ABI version 1"
#endif

int main(int argc, char** argv) {
  diffuse_context* ctx = NULL;
  diffuse_model* model = NULL;
  diffuse_job* job = NULL;
  diffuse_job_options o;
  unsigned char pixels[16 * 16 * 4];
  int width = 0, height = 0, ok = 0;

  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL_FOLDER [class] [out.png]\n", argv[0]);
    return 2;
  }
  if (diffuse_abi_version() < DIFFUSE_ABI_VERSION) {
    fprintf(stderr, "libdiffuse is older than diffuse.h\n");
    return 1;
  }
  if (diffuse_context_create(NULL, &ctx) != DIFFUSE_OK) return 1;
  diffuse_job_options_init(&o);
  o.steps = 4;
  o.class_label = argc > 2 ? atoi(argv[2]) : 5;
  if (diffuse_model_load(ctx, argv[1], NULL, &model) == DIFFUSE_OK &&
      diffuse_job_create(ctx, model, &o, &job) == DIFFUSE_OK && diffuse_job_run(job) == DIFFUSE_OK &&
      diffuse_job_image_size(job, &width, &height, NULL, NULL) == DIFFUSE_OK && width * height * 4 <= (int)sizeof pixels &&
      diffuse_job_result_rgba8(job, 0, pixels, sizeof pixels) == DIFFUSE_OK &&
      (argc < 4 || diffuse_write_png(ctx, argv[3], pixels, width, height, 4, 4, diffuse_job_parameters(job, 0)) == DIFFUSE_OK)) {
    printf("diffuse_app: ok (diffuse %s, %dx%d)\n", diffuse_version_string(), width, height);
    ok = 1;
  } else {
    fprintf(stderr, "diffuse_app: %s\n", diffuse_context_last_error(ctx));
  }
  diffuse_job_free(job);
  diffuse_model_free(model);
  diffuse_context_destroy(ctx);
  return ok ? 0 : 1;
}
