"""Running the plan: the cached corpus and backbone(s), each run trained and evaluated unless its folder
already holds the result, serially or `jobs` at a time in worker processes."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from privfedtalk.benchmark.plan import Benchmark, EvalSpec, Run
from privfedtalk.federated.store import RunFolder, atomic_write_text, run_signature

log = logging.getLogger("privfedtalk.benchmark")


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("privfedtalk").setLevel(logging.INFO)


# ------------------------------------------------------------------------------ data and backbone


def check_cache(meta_file: Path, preset_name: str, wanted: dict) -> dict:
    """A cache meta file's content ({} if new: meta.json, pretrain-bB.json); refuses a cache built with
    other corpus/backbone settings than `wanted`."""
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    built = {key: meta.get(key) for key in wanted}
    if meta and built != json.loads(json.dumps(wanted)):
        cache = meta_file.parent
        raise SystemExit(
            f"{cache} was built with other corpus/backbone settings than preset {preset_name!r} now has "
            f"({meta_file.name}); delete {cache} to rebuild it (or pass --checkpoint/--data)"
        )
    return meta


def synthesize_once(root: Path, synth: dict, name: str) -> float:
    """Seconds spent synthesizing the corpus `root` from synthesize_corpus's keyword arguments `synth`;
    0.0 when it is already there (split.json is written last: its presence means the corpus is whole)."""
    if (root / "split.json").is_file():
        log.info("%s: reused %s", name, root)
        return 0.0
    from privfedtalk.data.synthetic import synthesize_corpus

    t0 = time.perf_counter()
    log.info("%s: synthesizing %s", name, synth)
    synthesize_corpus(root, **synth)
    return time.perf_counter() - t0


def build_corpus(data: Path, preset: dict, meta: dict, times: dict) -> None:
    times["synth_s"] = seconds = synthesize_once(data, preset["synth"], "corpus")
    if seconds:
        meta["synth_s"] = seconds


def pretrain_config(pretrain_dir: Path, data: Path, preset: dict, cli_overrides, backbone: int):
    """Backbone `backbone`'s pretraining config: backbone 0 as it always was; backbone b >= 1 the same
    with the pretraining seed shifted by b (initialisation, VAE, identity encoder and U-Net batches)."""
    from privfedtalk.config import load_config

    overrides = [f"data.root={data}", f"data.size={preset['synth']['size']}"] + preset["pretrain"]
    cfg = load_config("pretrain.yaml", overrides + [f"out_dir={pretrain_dir}"] + cli_overrides)
    # Shifted after the command line's keys: a seed= there must not make two backbones identical.
    cfg.seed = int(cfg.seed) + backbone
    return cfg


def build_backbone(cfg, meta: dict, backbone: int = 0) -> tuple[Path, float]:
    """(checkpoint, seconds spent pretraining it now: 0 when reused from the cache); cfg from
    pretrain_config, its out_dir the backbone's folder."""
    checkpoint = Path(cfg.out_dir) / "checkpoint"
    name = "backbone" if backbone == 0 else f"backbone {backbone}"  # backbone 0 logs as it always did
    t0 = time.perf_counter()
    if (checkpoint / "identity_encoder.json").is_file():
        log.info("%s: reused %s", name, checkpoint)
        return checkpoint, 0.0
    from privfedtalk.pretrain import pretrain

    log.info("%s: pretraining on the public identities (seed %d)", name, cfg.seed)
    pretrain(cfg)
    meta["pretrain_s"] = seconds = time.perf_counter() - t0
    return checkpoint, seconds


def extra_backbone(cache: Path, preset_name: str, preset: dict, data: Path, cli_overrides, backbone: int):
    """Backbone b >= 1: pretrained on the same corpus under another seed, cached in pretrain-b{b}/ with
    its own meta (pretrain-b{b}.json). (checkpoint, seconds spent pretraining it now, seconds it took)."""
    cfg = pretrain_config(cache / f"pretrain-b{backbone}", data, preset, cli_overrides, backbone)
    wanted = {
        "synth": preset["synth"],
        "pretrain": preset["pretrain"],
        "pretrain_overrides": cli_overrides,
        "pretrain_seed": int(cfg.seed),
    }
    meta_file = cache / f"pretrain-b{backbone}.json"
    meta = check_cache(meta_file, preset_name, wanted)
    checkpoint, seconds = build_backbone(cfg, meta, backbone)
    meta.update(wanted)
    meta_file.write_text(json.dumps(meta, indent=1))
    return checkpoint, seconds, meta.get("pretrain_s")


def prepare_backbone(
    preset_name: str, preset: dict, out: Path, cli_overrides: list[str], times: dict, backbones: int = 1
) -> tuple[Path, list[Path]]:
    """Corpus + `backbones` backbones of the preset, built once under OUT/cache/PRESET/: backbone 0 in
    pretrain/ (meta.json), backbone b >= 1 in pretrain-b{b}/ (pretrain-b{b}.json).

    times: pretrain_s (all backbones, this invocation), pretrain_s_by_backbone (each, this invocation),
    cached_build_s (what building the cache took: synth_s, pretrain_s, pretrain_s_b1, ...).
    """
    cache = out / "cache" / preset_name
    data = cache / "data"
    # The command line's overrides (threads=, device=) reach pretraining too and change the backbone.
    wanted = {"synth": preset["synth"], "pretrain": preset["pretrain"], "pretrain_overrides": cli_overrides}
    meta = check_cache(cache / "meta.json", preset_name, wanted)
    build_corpus(data, preset, meta, times)
    cfg = pretrain_config(cache / "pretrain", data, preset, cli_overrides, 0)
    checkpoint, seconds = build_backbone(cfg, meta)
    meta.update(wanted)
    (cache / "meta.json").write_text(json.dumps(meta, indent=1))
    built = {k: meta[k] for k in ("synth_s", "pretrain_s") if k in meta}
    checkpoints, by_backbone = [checkpoint], [seconds]
    for backbone in range(1, backbones):
        checkpoint, seconds, took = extra_backbone(cache, preset_name, preset, data, cli_overrides, backbone)
        checkpoints.append(checkpoint)
        by_backbone.append(seconds)
        if took is not None:
            built[f"pretrain_s_b{backbone}"] = took
    times["pretrain_s"] = sum(by_backbone)
    times["pretrain_s_by_backbone"] = by_backbone
    times["cached_build_s"] = built
    return data, checkpoints


def scenario_corpora(args, preset: dict, data: Path, times: dict) -> dict[str, Path]:
    """{scenario name: corpus} of a scenario preset: the clean one is `data`; each corrupted scenario's
    is synthesized once into OUT/cache/PRESET/data-NAME/ from the preset's synth settings (cached with
    them: meta.json refuses the whole cache when they change). Only the chosen private clients'
    training clips differ from the clean corpus, so every scenario shares the clean corpus's backbone
    and held-out clips. Adds the seconds spent to times["synth_s"]."""
    from privfedtalk.benchmark.plan import scenarios
    from privfedtalk.data.corpus import read_split

    cache = args.out / "cache" / args.preset
    private = read_split(data)["private"]
    roots = {}
    for scenario in scenarios(preset):
        if scenario.corruption is None:
            roots[scenario.name] = Path(data)
            continue
        root = cache / f"data-{scenario.name}"
        seconds = synthesize_once(root, scenario.synth(preset), f"corpus {scenario.name}")
        times["synth_s"] = times.get("synth_s", 0.0) + seconds
        if read_split(root)["private"] != private:
            raise SystemExit(
                f"{root}: its private identities are not those of {data} (the corpus given with --data "
                f"was not made with preset {args.preset!r}'s synth settings); drop --data/--checkpoint"
            )
        roots[scenario.name] = root
    return roots


def corpus_and_backbone(args, preset: dict, times: dict, backbones: int = 1) -> tuple[Path, list[Path]]:
    """(corpus, checkpoints): the ones given with --data/--checkpoint (one backbone), else the preset's
    cached ones (`backbones` of them)."""
    if args.checkpoint is not None:
        if backbones > 1:
            raise SystemExit(
                f"{backbones} backbones (--backbone-seeds or the preset's backbone_seeds) are pretrained "
                "into the preset's cache: drop --checkpoint/--data, or pass --backbone-seeds 1"
            )
        times.update(synth_s=0.0, pretrain_s=0.0, pretrain_s_by_backbone=[0.0])
        return args.data, [args.checkpoint]
    return prepare_backbone(args.preset, preset, args.out, args.overrides, times, backbones)


# -------------------------------------------------------------------------------------- training


def reset_peak_memory() -> None:
    """Start each run's peak-memory reading afresh (CUDA peak stats; Linux RSS high-water mark)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def trained_rounds(run: Run) -> int | None:
    """Rounds the run's folder has completed for this very config; None if it holds another config."""
    folder = RunFolder(run.cfg.out_dir)
    saved = folder.signature()
    if saved is not None and saved != run_signature(run.cfg):
        return None
    return folder.completed_rounds()


def ensure_trained(run: Run, fresh: bool) -> None:
    """Train the run's missing rounds (resuming a partial run); a finished run is reused."""
    from privfedtalk.federated.simulation import train

    run_dir = Path(run.cfg.out_dir)
    rounds = run.cfg.federated.rounds
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    completed = trained_rounds(run)
    if completed is None:
        log.warning("%s: its config changed since it ran; training it again from scratch", run.key)
        shutil.rmtree(run_dir)
        completed = 0
    if completed >= rounds:
        run.status = "reused"
        return
    (run_dir / "eval.json").unlink(missing_ok=True)
    reset_peak_memory()
    t0 = time.perf_counter()
    if completed > 0:
        log.info("%s: resuming after round %d of %d", run.key, completed, rounds)
        RunFolder(run_dir).write_config(run.cfg)  # e.g. a new threads=
        train(resume=str(run_dir))
        run.status = "resumed"
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # started but no round completed: nothing to keep
        log.info("%s: training %d rounds", run.key, rounds)
        train(run.cfg)
        run.status = "trained"
    run.train_s = time.perf_counter() - t0


# ------------------------------------------------------------------------------------ evaluation


class ClipCache:
    """Held-out clips per identity, loaded once per benchmark (same clips for every run)."""

    def __init__(self):
        self.clips = {}

    def heldout(self, cfg, identity: str, root: str | None = None) -> list:
        """The identity's held-out clips with cfg's data settings, from `root` (default cfg.data.root)."""
        from privfedtalk.federated.clients import ClientSpec, heldout_clips

        root = str(root or cfg.data.root)
        key = (root, identity, cfg.data.size, cfg.data.heldout_clips)
        if key not in self.clips:
            if root != str(cfg.data.root):
                cfg = copy.deepcopy(cfg)
                cfg.data.root = root
            self.clips[key] = heldout_clips(cfg, [ClientSpec(identity, [identity])])
        return self.clips[key]


def evaluate_run(cfg, run_dir: Path, spec: EvalSpec, cache: ClipCache) -> dict:
    """privfedtalk.evaluate.evaluate_personalized on the spec's identities (held-out clips from
    spec.heldout_root, else the run's corpus); the first clip's frames are kept in eval_sample.npz for
    the qualitative figure and the sample videos."""
    from privfedtalk.evaluate import evaluate_personalized

    heldout = {identity: cache.heldout(cfg, identity, spec.heldout_root) for identity in spec.identities}
    kwargs = {"steps": int(spec.steps)} if spec.steps else {}
    if spec.frame_noise != "shared":  # the default stays out of the call, as before the option existed
        kwargs["frame_noise"] = spec.frame_noise
    result = evaluate_personalized(
        run_dir, spec.identities, heldout=heldout, seed=cfg.seed, inception=spec.inception, **kwargs
    )
    name, frames = result.pop("sample")
    np.savez_compressed(run_dir / "eval_sample.npz", frames=frames, clip=name)
    result["sample_clip"] = name
    return result


def saved_eval(run: Run, spec: EvalSpec) -> dict | None:
    """The run's eval.json if it was made with these evaluation settings (and its sample exists)."""
    spec = spec.for_run(run)
    run_dir = Path(run.cfg.out_dir)
    eval_file = run_dir / "eval.json"
    if not (eval_file.is_file() and (run_dir / "eval_sample.npz").is_file()):
        return None
    saved = json.loads(eval_file.read_text())
    return saved if saved.get("settings") == spec.settings(run.cfg.seed) else None


def ensure_evaluated(run: Run, spec: EvalSpec, cache: ClipCache) -> None:
    """Evaluate the run unless its eval.json already holds these settings' scores (the spec with the
    run's own evaluation fields, Run.evaluation)."""
    spec = spec.for_run(run)
    run_dir = Path(run.cfg.out_dir)
    saved = saved_eval(run, spec)
    if saved is not None:
        run.eval = saved
        log.info("%s: reused (%d rounds complete, eval.json present)", run.key, run.cfg.federated.rounds)
        return
    t0 = time.perf_counter()
    log.info("%s: evaluating %d identities' held-out clips", run.key, len(spec.identities))
    result = evaluate_run(run.cfg, run_dir, spec, cache)
    run.eval_s = time.perf_counter() - t0
    result["settings"] = spec.settings(run.cfg.seed)
    result["seconds"] = run.eval_s
    atomic_write_text(json.dumps(result, indent=1, default=float), run_dir / "eval.json")
    run.eval = result
    if run.status == "reused":
        run.status = "re-evaluated"


# --------------------------------------------------------------------------------- canary audits


def saved_audit(run: Run) -> dict | None:
    """The audit run's audit.json if its folder finished this very config with this many canaries."""
    audit_file = Path(run.cfg.out_dir) / "audit.json"
    rounds = trained_rounds(run) if audit_file.is_file() else None
    if rounds is None or rounds < run.cfg.federated.rounds:
        return None
    saved = json.loads(audit_file.read_text())
    return saved if saved.get("canaries_inserted") == run.canaries else None


def ensure_audited(run: Run, fresh: bool) -> None:
    """Train the row's config with run.canaries canary clients and estimate ε empirically (audit.json);
    a finished audit of the same config is reused. Not resumable: the canaries' releases are
    recorded in memory, so an interrupted audit starts again."""
    from privfedtalk.federated.canaries import audit_run

    saved = None if fresh else saved_audit(run)
    if saved is not None:
        run.audit, run.status = saved, "reused"
        return
    shutil.rmtree(run.cfg.out_dir, ignore_errors=True)
    log.info("%s: auditing with %d canary clients", run.key, run.canaries)
    t0 = time.perf_counter()
    run.audit = audit_run(run.cfg, run.canaries)
    run.train_s = time.perf_counter() - t0
    run.status = "trained"


def ensure_done(run: Run, fresh: bool, spec: EvalSpec, cache: ClipCache) -> None:
    """Whatever the run still needs: an audit run its audit, any other run its rounds and evaluation."""
    if run.canaries:
        ensure_audited(run, fresh)
    else:
        ensure_trained(run, fresh)
        ensure_evaluated(run, spec, cache)


def is_done(run: Run, spec: EvalSpec) -> bool:
    """A finished run with its evaluation, or a finished audit: nothing to do."""
    if run.canaries:
        return saved_audit(run) is not None
    done = trained_rounds(run) or 0
    return done >= run.cfg.federated.rounds and saved_eval(run, spec) is not None


# ------------------------------------------------------------------------------- worker processes


def run_worker(plan: Path, cache: ClipCache) -> dict:
    """Train and evaluate the one run PLAN describes; write PLAN's .result.json."""
    from privfedtalk.config import load_config

    job = json.loads(plan.read_text())
    run = Run(job["key"], load_config(job["config"], job["overrides"]), canaries=job.get("canaries", 0))
    ensure_done(run, job["fresh"], EvalSpec(**job["eval"]), cache)
    result = {"status": run.status, "train_s": run.train_s, "eval_s": run.eval_s}
    atomic_write_text(json.dumps(result), plan.with_suffix(".result.json"))
    return result


_worker_clips = ClipCache()  # a pool worker's held-out clips, loaded once for all the runs it takes


def run_job(plan: str) -> dict:
    """One run in a pool worker, everything it prints (logs, progress bars, a traceback) in PLAN's .log."""
    log_file = Path(plan).with_suffix(".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "w") as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        try:
            return run_worker(Path(plan), _worker_clips)
        except Exception:
            traceback.print_exc()
            raise
        except BaseException as err:  # a SystemExit would end the worker unanswered: the pool would wait
            traceback.print_exc()
            raise RuntimeError(f"{type(err).__name__}: {err}") from None
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip((1, 2), saved, strict=True):
                os.dup2(original, fd)
                os.close(original)


def run_in_parallel(runs: list[Run], jobs: int, fresh: bool, spec: EvalSpec, runs_dir: Path):
    """Train + evaluate `runs`, `jobs` at a time, in a pool of `jobs` worker processes.

    Each worker imports torch and the models once and takes run after run (a run seeds everything it
    draws, so a run's numbers do not depend on which worker took it or what ran there before). Each
    run uses its own thread count (the preset's run_threads): on a 2-core CPU two 1-thread runs finish
    sooner than one 2-thread run after another (small convolutions scale poorly across threads), and
    the numbers do not depend on --jobs. A run's folder is written only by the worker that took it; a
    failed run stops the benchmark, naming its log; finished rounds stay resumable.
    """
    import multiprocessing

    plans = runs_dir / ".jobs"
    plans.mkdir(parents=True, exist_ok=True)
    pending = []
    for run in runs:  # a finished, evaluated run (or a finished audit) needs no worker
        if fresh or not is_done(run, spec):
            pending.append(run)
        else:
            run.status = "reused"
    if not pending:
        return
    # spawn: a fresh interpreter per worker (no forked torch threads), with this process's sys.path.
    with multiprocessing.get_context("spawn").Pool(
        min(jobs, len(pending)), initializer=setup_logging
    ) as pool:
        active = [submit(pool, run, fresh, spec, plans) for run in pending]
        while active:
            time.sleep(1.0)
            collect_finished(active)


def write_plan(run: Run, fresh: bool, spec: EvalSpec, plans: Path) -> Path:
    """The run's plan file (config, threads, evaluation) for a worker."""
    from omegaconf import OmegaConf

    name = run.key.replace("/", "_")
    threads = int(run.cfg.threads)  # the run's own (preset run_threads), whatever --jobs is
    config_file = plans / f"{name}.yaml"
    config_file.write_text(OmegaConf.to_yaml(run.cfg))
    plan = plans / f"{name}.json"
    job = {
        "key": run.key,
        "config": str(config_file),
        "overrides": [f"threads={threads}"],
        "fresh": fresh,
        "eval": asdict(spec.for_run(run)),
        "canaries": run.canaries,
    }
    plan.write_text(json.dumps(job))
    plan.with_suffix(".result.json").unlink(missing_ok=True)
    return plan


def submit(pool, run: Run, fresh: bool, spec: EvalSpec, plans: Path) -> tuple:
    """Queue the run on the pool; (run, pending result, log file)."""
    plan = write_plan(run, fresh, spec, plans)
    log_file = plan.with_suffix(".log")  # run_job's
    log.info("%s: queued for a worker (%d threads; log %s)", run.key, int(run.cfg.threads), log_file)
    return run, pool.apply_async(run_job, (str(plan),)), log_file


def collect_finished(active: list) -> None:
    """Take finished runs off `active` and copy their results into their runs."""
    for item in [item for item in active if item[1].ready()]:
        run, pending, log_file = item
        active.remove(item)
        try:
            result = pending.get()
        except Exception as err:
            raise SystemExit(
                f"{run.key}: worker failed ({type(err).__name__}: {err}); full log: {log_file}"
            ) from None
        run.status, run.train_s, run.eval_s = result["status"], result["train_s"], result["eval_s"]
        log.info("%s: %s (train %.0f s, eval %.0f s)", run.key, run.status, run.train_s, run.eval_s)


def execute(bench: Benchmark, fresh: bool, jobs: int, cache: ClipCache, times: dict) -> None:
    """Train and evaluate the selected runs (reusing finished ones); read each run's metrics."""
    t0 = time.perf_counter()
    if jobs > 1:
        run_in_parallel(bench.runs + bench.audits, jobs, fresh, bench.spec, bench.runs_dir)
    for run in bench.runs + bench.audits:
        if jobs == 1:
            ensure_done(run, fresh, bench.spec, cache)
        elif run.canaries:
            run.audit = saved_audit(run)  # the worker's audit.json
        else:
            ensure_evaluated(run, bench.spec, cache)  # reads the worker's eval.json
        run.records = RunFolder(run.cfg.out_dir).records()
    times["train_s"] = sum(r.train_s for r in bench.runs)
    times["eval_s"] = sum(r.eval_s for r in bench.runs)
    times["audit_s"] = sum(r.train_s for r in bench.audits)
    times["runs_wall_s"] = time.perf_counter() - t0
    times["jobs"] = jobs
