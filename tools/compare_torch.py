#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""PyTorch side by side: times the diffusers/PyTorch eager forward of the reference networks (and the VAE decodes) and,
when they have been built, diffuse's bench/models_bench, vae_bench and taesd_bench on the same weights, input shapes and
thread count, and prints one table.

    .venv-ref/bin/python tools/compare_torch.py                       # threads 1 and 2, all models
    .venv-ref/bin/python tools/compare_torch.py --threads 1 --models unet_cifar10_b1 dit_s2
    .venv-ref/bin/python tools/compare_torch.py --bench build/bench/models_bench --repeats 20

Both sides use the same statistic: the median (and the best) of `--repeats` timings, in milliseconds per forward
call (the whole batch). Torch side: torch.set_num_threads(T), torch.inference_mode(), f32, `--warmup` untimed calls,
then `--repeats` timed calls.
Weights: the recipes of tests/data/models/*_recipe (tools/make_network_fixtures.py; the C++ benchmark materialises
the same weights with tests/models/model_fixture.hpp) and the shipped models/digits-*.
C++ side: `models_bench --benchmark_filter=<regex> --benchmark_repetitions=<repeats>` (Google Benchmark), the
real_time of the "_median" aggregate of the benchmark named in MODELS below ("{t}" is replaced by the thread count),
and the fastest repetition as the best. (Each repetition is the mean of the iterations Google Benchmark chose for it,
one or a few forwards.) If the binary is missing, only the torch column is printed. Edit MODELS when the benchmark
names change. The header names the CPU: figures from different CPUs are not comparable.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import sys
import time

import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.path.join(ROOT, "tests", "data", "models")

# name: (source, batch, size, conditional, C++ benchmark name[, C++ benchmark program])
#   source: "recipe:<fixture dir>" (weights regenerated from the recipe) or "folder:<diffusers folder>"; for a VAE
#   ("vae:" / "taesd:" + recipe) `size` is the latent's side and the timed call is `vae.decode(z)`.
MODELS = {
    "unet_cifar10_b1": ("recipe:ddpm_cifar10_recipe", 1, 32, False, "BM_unet2d_cifar10/batch:1/threads:{t}"),
    "unet_cifar10_b2": ("recipe:ddpm_cifar10_recipe", 2, 32, False, "BM_unet2d_cifar10/batch:2/threads:{t}"),
    "dit_s2_b2": ("recipe:dit_s2_recipe", 2, 32, True, "BM_dit_s2/batch:2/threads:{t}"),
    "dit_b2_b2": ("recipe:dit_b2_recipe", 2, 32, True, "BM_dit_b2/batch:2/threads:{t}"),
    "digits_unet_b2": ("folder:models/digits-unet", 2, 16, True, "BM_digits_unet/batch:2/threads:{t}"),
    "digits_dit_b2": ("folder:models/digits-dit", 2, 16, True, "BM_digits_dit/batch:2/threads:{t}"),
    "vae_decode_256": ("vae:vae_sd_recipe", 1, 32, False, "BM_vae_decode_256/threads:{t}", "vae_bench"),
    "vae_decode_512": ("vae:vae_sd_recipe", 1, 64, False, "BM_vae_decode_512/threads:{t}", "vae_bench"),
    "taesd_decode_512": ("taesd:taesd_recipe", 1, 64, False, "BM_taesd_decode_512/threads:{t}", "taesd_bench"),
}
DEFAULT_BENCH = os.path.join(ROOT, "build", "bench", "models_bench")


def load_model(source):
    from diffusers import AutoencoderKL, AutoencoderTiny, DiTTransformer2DModel, UNet2DModel
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    kind, path = source.split(":", 1)
    if kind in ("vae", "taesd"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import make_network_fixtures as mnf

        folder = os.path.join(FIXTURES, path)
        manifest = json.load(open(os.path.join(folder, "manifest.json")))
        config = json.load(open(os.path.join(folder, "config.json")))
        model = (AutoencoderKL if kind == "vae" else AutoencoderTiny).from_config(config).eval()
        plist = [(p["name"], p["shape"], p["mean"], p["std"]) for p in manifest["parameters"]]
        mnf.load_weights(model, mnf.generate(plist, manifest["seed"]))
        return model
    if kind == "recipe":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import make_network_fixtures as mnf

        folder = os.path.join(FIXTURES, path)
        manifest = json.load(open(os.path.join(folder, "manifest.json")))
        config = json.load(open(os.path.join(folder, "config.json")))
        cls = UNet2DModel if manifest["model"] == "UNet2DModel" else DiTTransformer2DModel
        model = cls.from_config(config).eval()
        plist = [(p["name"], p["shape"], p["mean"], p["std"]) for p in manifest["parameters"]]
        mnf.load_weights(model, mnf.generate(plist, manifest["seed"]))
        return model
    folder = os.path.join(ROOT, path)
    cls_name = json.load(open(os.path.join(folder, "config.json")))["_class_name"]
    cls = UNet2DModel if cls_name == "UNet2DModel" else DiTTransformer2DModel
    return cls.from_pretrained(folder, torch_dtype=torch.float32).eval()


def time_torch(model, batch, size, conditional, threads, warmup, repeats):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    if hasattr(model, "decoder"):  # a VAE: decode a latent
        z = torch.randn((batch, model.config.latent_channels, size, size), generator=g)
        return time_calls(lambda: model.decode(z), warmup, repeats)
    x = torch.randn((batch, model.config.in_channels, size, size), generator=g)
    t = torch.tensor([999.0 - 37.5 * i for i in range(batch)])
    n_cls = getattr(model.config, "num_embeds_ada_norm", None) or getattr(model.config, "num_class_embeds", None) or 1
    y = torch.tensor([i % n_cls for i in range(batch)], dtype=torch.int64) if conditional else None
    run = (lambda: model(x, t, class_labels=y)) if isinstance(model.config.get("down_block_types"), (list, tuple)) \
        else (lambda: model(x, timestep=t, class_labels=y))
    return time_calls(run, warmup, repeats)


def time_calls(run, warmup, repeats):
    """(median, best) ms of `repeats` calls of `run` after `warmup` untimed ones, in inference mode."""
    with torch.inference_mode():
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def cpu_name():
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def run_bench(binary, names, repeats):
    """{benchmark name: (median real_time, best real_time) in ms} from one models_bench run of `repeats`
    repetitions, or None when it cannot run."""
    if not binary or not os.path.exists(binary):
        return None
    # Benchmarks timed with UseRealTime() carry a "/real_time" suffix in their names.
    regex = "^(" + "|".join(names) + ")(/real_time)?$"
    # The JSON goes to its own file: the benchmark program prints a machine header on stdout first.
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "bench.json")
        try:
            subprocess.run([binary, f"--benchmark_out={report}", "--benchmark_out_format=json",
                            f"--benchmark_filter={regex}", f"--benchmark_repetitions={repeats}"],
                           capture_output=True, text=True, check=True)
            with open(report) as f:
                data = json.load(f)
        except (OSError, subprocess.CalledProcessError, json.JSONDecodeError) as e:
            print(f"note: {binary} failed: {e}", file=sys.stderr)
            return None
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    median, best = {}, {}
    for b in data.get("benchmarks", []):
        name = b.get("run_name", b["name"]).removesuffix("/real_time")
        ms = b["real_time"] * scale[b.get("time_unit", "ns")]
        if b.get("run_type", "iteration") == "iteration":
            best[name] = min(best.get(name, ms), ms)
        elif b.get("aggregate_name") == "median":
            median[name] = ms
    # With one repetition Google Benchmark writes no aggregates: the single run is the median.
    return {n: (median.get(n, best[n]), best[n]) for n in best}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="timings per side; the median is reported")
    ap.add_argument("--bench", default=DEFAULT_BENCH,
                    help="path of diffuse's models_bench; vae_bench and taesd_bench beside it (default: %(default)s)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    torch.manual_seed(0)
    rows = []
    for name in args.models:
        source, batch, size, conditional, _ = MODELS[name]
        model = load_model(source)
        for t in args.threads:
            med, best = time_torch(model, batch, size, conditional, t, args.warmup, args.repeats)
            rows.append(dict(model=name, threads=t, torch_ms=med, torch_best_ms=best))
            print(f"  {name} threads {t}: torch {med:.2f} ms (best {best:.2f})", file=sys.stderr)
        del model

    cpp = {}
    programs = sorted({MODELS[r["model"]][5] if len(MODELS[r["model"]]) > 5 else "models_bench" for r in rows})
    for prog in programs:
        binary = args.bench if prog == "models_bench" else os.path.join(os.path.dirname(args.bench), prog)
        names = [MODELS[r["model"]][4].format(t=r["threads"]) for r in rows
                 if (MODELS[r["model"]][5] if len(MODELS[r["model"]]) > 5 else "models_bench") == prog]
        got = run_bench(binary, names, args.repeats)
        if got:
            cpp.update(got)
    cpp = cpp or None
    for r in rows:
        n = MODELS[r["model"]][4].format(t=r["threads"])
        r["diffuse_ms"], r["diffuse_best_ms"] = cpp.get(n, (None, None)) if cpp else (None, None)

    print(f"{cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"{torch.get_num_interop_threads()} interop threads; times per forward call (whole batch), both sides the "
          f"median of {args.repeats} (best in brackets). Other processes on the CPUs distort 2-thread times most.")
    print(f"| {'model':16s} | threads | torch ms (best) | diffuse ms (best) | ratio diffuse/torch |")
    print("|---|---|---|---|---|")
    for r in rows:
        d = r["diffuse_ms"]
        dd = f"{d:.2f} ({r['diffuse_best_ms']:.2f})" if d is not None else "-"
        ratio = f"{d / r['torch_ms']:.2f}" if d is not None else "-"
        print(f"| {r['model']:16s} | {r['threads']} | {r['torch_ms']:.2f} ({r['torch_best_ms']:.2f}) | {dd} | {ratio} |")
    if cpp is None:
        print(f"\n(no diffuse column: {args.bench} is missing or failed; build it with -DDIFFUSE_BUILD_BENCHMARKS=ON)")
    elif any(r["diffuse_ms"] is None for r in rows):
        print("\n(some benchmarks were not found in models_bench's output: check the names in MODELS)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
