"""The cost model: each job's predicted wall time on 2 cores, one job at a time, and the
suite's with K jobs at once. seconds = fixed + steps x per step + evaluated examples x per
example (+ the forward-only calls of precise BN and the analyses); the coefficients are the
preset's (design.Preset), measured (BUILD_NOTES.md, "The report's suite")."""

from __future__ import annotations

import math


def seconds(preset, job) -> float:
    """The cost model's prediction of a job's wall time on 2 cores (one job at a time)."""
    if job.kind == "parity":
        return preset.parity_seconds
    if job.kind == "cost":  # per norm: build, 3 warm-up steps, an untimed round, the rounds
        params = dict(job.params)
        return sum(_fixed(preset, "default", n) + (3 + (preset.cost_rounds + 1) * preset.cost_steps)
                   * _step_ms(preset, "default", n, params["batch_size"]) / 1000
                   for n in params["norms"])  # fmt: skip
    c, p = job.config, preset
    fixed, step = _fixed(p, c.arch, c.norm), _step_ms(p, c.arch, c.norm, c.batch_size)
    per_call = _step_ms(p, c.arch, c.norm, 0) / 2000  # s per forward-only call, batch aside
    validation, test = p.base["validation_size"], 10000
    evals = c.train_steps // c.eval_every + 1
    examples = evals * validation + test  # the final validation and test
    calls = 0.0
    if c.bn_population == "precise":  # recomputed before each evaluation
        examples += (evals + 1) * c.precise_bn_examples
        calls += (evals + 1) * math.ceil(c.precise_bn_examples / c.batch_size)
    if "bn_stats" in job.analyses:  # two moving averages on val and test; train-mode passes
        examples += 2 * (validation + test) + 2 * validation
        calls += 2 * validation / c.batch_size
    if "ema_curves" in job.analyses:
        examples += 2 * evals * validation
    extra = 0.0
    if "twins" in job.analyses:
        extra += 3 * fixed + 3 * p.twin_steps * step / 1000
    per_example = dict(p.example_ms)[c.arch]
    return (fixed + c.train_steps * step / 1000 + examples * per_example / 1000
            + calls * per_call + extra)  # fmt: skip


def _fixed(preset, arch: str, norm: str) -> float:
    table = dict(preset.fixed_seconds)
    return table.get(f"{arch}/{norm}", table[arch])


def _step_ms(preset, arch: str, norm: str, batch_size: int) -> float:
    table = {k: (a, b) for k, a, b in preset.step_ms}
    a, b = table.get(f"{arch}/{norm}", table[arch])
    return a + b * batch_size


def parallel_speedup(jobs_at_once: int) -> float:
    """How much sooner K jobs at once finish than one at a time on 2 cores: measured by
    `python -m bench.jobs` (BUILD_NOTES.md, "The report's suite") for K = 2; no gain assumed
    beyond the two cores."""
    return 1.0 if jobs_at_once <= 1 else 1.6


def predicted(seconds: float, at_once=(1,)) -> str:
    """The cost model's prediction of a suite's wall time, labelled: one job at a time, and
    for each K > 1 in `at_once`, K jobs at once (divided by parallel_speedup(K))."""
    from normlab.trainer.loop import duration

    text = f"{duration(seconds)} one job at a time"
    for k in sorted(set(at_once) - {1}):
        x = parallel_speedup(k)
        text += f", {duration(seconds / x)} with {k} jobs at once (x{x:g} faster, BUILD_NOTES.md)"
    return text
