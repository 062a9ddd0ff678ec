/* SPDX-License-Identifier: MIT */
/* The C ABI from C99 (built with -std=c99 -pedantic -Werror): diffuse.h compiles as C, and a C host
 * can load the shipped models, run jobs whole and step-wise with the same bits, cancel from a
 * POSIX thread, and gets status codes and messages for every misuse. Exits non-zero on failure. */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <diffuse/diffuse.h>

static int failures = 0;

#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

#define CHECK_STATUS(call, want)                                                                 \
  do {                                                                                           \
    diffuse_status got_ = (call);                                                                \
    if (got_ != (want)) {                                                                        \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__, __LINE__, #call,     \
              diffuse_status_string(got_), diffuse_status_string(want), diffuse_context_last_error(ctx)); \
      ++failures;                                                                                \
    }                                                                                            \
  } while (0)

#define SIDE 16
#define RGBA_BYTES (SIDE * SIDE * 4)

static diffuse_context* ctx = NULL;

static int contains(const char* text, const char* part) { return text && strstr(text, part) != NULL; }

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static diffuse_job_options job_options(int steps, int64_t label, uint64_t seed) {
  diffuse_job_options o;
  diffuse_job_options_init(&o);
  o.steps = steps;
  o.class_label = label;
  o.seed = seed;
  return o;
}

/* Runs a job whole (stepwise = 0) or step by step, and copies its result. */
static void run_job(diffuse_model* model, const diffuse_job_options* o, int stepwise, uint8_t* rgba, float* f32) {
  diffuse_job* job = NULL;
  int done = 0;
  CHECK_STATUS(diffuse_job_create(ctx, model, o, &job), DIFFUSE_OK);
  if (stepwise) {
    while (!done) {
      diffuse_status st = diffuse_job_step(job, &done);
      CHECK_STATUS(st, DIFFUSE_OK);
      if (st != DIFFUSE_OK) break;
    }
  } else {
    CHECK_STATUS(diffuse_job_run(job), DIFFUSE_OK);
  }
  CHECK_STATUS(diffuse_job_result_rgba8(job, 0, rgba, RGBA_BYTES), DIFFUSE_OK);
  CHECK_STATUS(diffuse_job_result_f32(job, 0, f32, SIDE * SIDE), DIFFUSE_OK);
  diffuse_job_free(job);
}

/* ---- cancel from another thread ---- */

struct cancel_state {
  volatile int started; /* written by the progress callback, read by the canceller (with the mutex) */
  pthread_mutex_t mutex;
  pthread_cond_t cond;
  double cancelled_at;
};

static void on_progress(void* user, diffuse_job* job, int step, int num_steps) {
  struct cancel_state* s = (struct cancel_state*)user;
  (void)job;
  (void)num_steps;
  if (step == 3) {
    pthread_mutex_lock(&s->mutex);
    s->started = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mutex);
  }
}

static void* canceller(void* arg) {
  struct cancel_state* s = (struct cancel_state*)arg;
  pthread_mutex_lock(&s->mutex);
  while (!s->started) pthread_cond_wait(&s->cond, &s->mutex);
  s->cancelled_at = now_ms();
  pthread_mutex_unlock(&s->mutex);
  diffuse_context_cancel(ctx);
  return NULL;
}

int main(void) {
  const char* models[2] = {DIFFUSE_SOURCE_DIR "/models/digits-unet", DIFFUSE_SOURCE_DIR "/models/digits-dit"};
  struct cancel_state cs;
  diffuse_context_options co;
  int m;

  CHECK(diffuse_version() == DIFFUSE_VERSION);
  CHECK(diffuse_abi_version() == DIFFUSE_ABI_VERSION);
  CHECK(strcmp(diffuse_status_string(DIFFUSE_CANCELLED), "cancelled") == 0);

  memset(&cs, 0, sizeof cs);
  pthread_mutex_init(&cs.mutex, NULL);
  pthread_cond_init(&cs.cond, NULL);
  diffuse_context_options_init(&co);
  co.threads = 2;
  co.progress_callback = on_progress;
  co.progress_user_data = &cs;
  CHECK_STATUS(diffuse_context_create(&co, &ctx), DIFFUSE_OK);

  for (m = 0; m < 2; ++m) {
    diffuse_model* model = NULL;
    diffuse_model_info info;
    diffuse_job_options o = job_options(4, 7, 123);
    static uint8_t rgba_whole[RGBA_BYTES], rgba_steps[RGBA_BYTES];
    static float f32_whole[SIDE * SIDE], f32_steps[SIDE * SIDE];

    CHECK_STATUS(diffuse_model_load(ctx, models[m], NULL, &model), DIFFUSE_OK);
    if (!model) continue;
    diffuse_model_info_init(&info);
    CHECK_STATUS(diffuse_model_get_info(model, &info), DIFFUSE_OK);
    CHECK(info.channels == 1 && info.sample_size == SIDE && info.num_classes == 10 && info.null_class == 10);
    printf("%s: %s, %llu parameters\n", info.name, info.architecture, (unsigned long long)info.parameters);

    /* Whole and step-wise runs give the same bits. */
    run_job(model, &o, 0, rgba_whole, f32_whole);
    run_job(model, &o, 1, rgba_steps, f32_steps);
    CHECK(memcmp(rgba_whole, rgba_steps, sizeof rgba_whole) == 0);
    CHECK(memcmp(f32_whole, f32_steps, sizeof f32_whole) == 0);

    /* Cancel from a POSIX thread while diffuse_job_run works through 1000 steps. */
    {
      pthread_t thread;
      diffuse_job* job = NULL;
      diffuse_job_options long_o = job_options(1000, 2, 1);
      diffuse_status st;
      double returned;
      int step = 0;
      cs.started = 0;
      CHECK_STATUS(diffuse_job_create(ctx, model, &long_o, &job), DIFFUSE_OK);
      pthread_create(&thread, NULL, canceller, &cs);
      st = diffuse_job_run(job);
      returned = now_ms();
      pthread_join(thread, NULL);
      CHECK_STATUS(st, DIFFUSE_CANCELLED);
      CHECK(contains(diffuse_context_last_error(ctx), "cancelled"));
      diffuse_job_progress(job, &step, NULL);
      printf("%s: cancel latency %.3f ms (stopped at step %d of 1000)\n", info.name, returned - cs.cancelled_at, step);
      CHECK(step < 1000);
      diffuse_job_free(job);
    }
    /* The context runs a new job correctly after the cancel. */
    run_job(model, &o, 1, rgba_steps, f32_steps);
    CHECK(memcmp(f32_whole, f32_steps, sizeof f32_whole) == 0);

    /* Misuse: status codes with messages, no crash. */
    {
      diffuse_job* job = NULL;
      uint8_t small[RGBA_BYTES];
      diffuse_job_options bad = o;
      bad.sampler = "not_a_sampler";
      CHECK_STATUS(diffuse_job_create(ctx, model, &bad, &job), DIFFUSE_INVALID_ARGUMENT);
      CHECK(contains(diffuse_context_last_error(ctx), "unknown sampler 'not_a_sampler'"));
      bad = o;
      bad.steps = 0;
      CHECK_STATUS(diffuse_job_create(ctx, model, &bad, &job), DIFFUSE_INVALID_ARGUMENT);
      CHECK(contains(diffuse_context_last_error(ctx), "steps must be >= 1"));
      bad = o;
      bad.class_label = 42;
      CHECK_STATUS(diffuse_job_create(ctx, model, &bad, &job), DIFFUSE_INVALID_ARGUMENT);
      CHECK(contains(diffuse_context_last_error(ctx), "class 42 is out of range"));
      CHECK(job == NULL);
      CHECK_STATUS(diffuse_job_create(ctx, (const diffuse_model*)ctx, &o, &job), DIFFUSE_INVALID_ARGUMENT);
      CHECK(contains(diffuse_context_last_error(ctx), "a diffuse_context was passed where a diffuse_model"));

      CHECK_STATUS(diffuse_job_create(ctx, model, &o, &job), DIFFUSE_OK);
      CHECK_STATUS(diffuse_job_result_rgba8(job, 0, small, sizeof small), DIFFUSE_WRONG_STATE);
      CHECK_STATUS(diffuse_job_run(job), DIFFUSE_OK);
      CHECK_STATUS(diffuse_job_result_rgba8(job, 0, small, sizeof small - 4), DIFFUSE_INVALID_ARGUMENT);
      CHECK(contains(diffuse_context_last_error(ctx), "too small"));
      CHECK_STATUS(diffuse_job_step(job, NULL), DIFFUSE_WRONG_STATE);
      diffuse_job_free(job);
      CHECK_STATUS(diffuse_job_step(job, NULL), DIFFUSE_INVALID_ARGUMENT); /* freed */
      CHECK_STATUS(diffuse_job_step(NULL, NULL), DIFFUSE_INVALID_ARGUMENT);
    }
    diffuse_model_free(model);
  }

  diffuse_context_destroy(ctx);
  pthread_cond_destroy(&cs.cond);
  pthread_mutex_destroy(&cs.mutex);
  if (failures) {
    fprintf(stderr, "capi_c_test: %d failure(s)\n", failures);
    return 1;
  }
  printf("capi_c_test: all checks passed\n");
  return 0;
}
