"""What the benchmark runs: its rows (method keys on a shared budget), the federated runs they need
(rows with identical configs share one) on each pretrained backbone, and the evaluation every run gets."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from privfedtalk.federated.store import run_signature

EVAL_VERSION = 1


@dataclass
class Run:
    """One federated training (a row at a seed on a backbone); several logical rows may share it."""

    key: str  # "fedavg/seed0" (backbone 0), "fedavg/b1-seed0" (backbone 1): its folder under OUT/PRESET/runs/
    cfg: object
    backbone: int = 0  # which pretrained backbone (Benchmark.checkpoints index) it fine-tunes
    status: str = "pending"
    train_s: float = 0.0
    eval_s: float = 0.0
    eval: dict | None = None
    records: list = field(default_factory=list)
    canaries: int = 0  # > 0: an audit run (privfedtalk.federated.canaries.audit_run), not evaluated
    audit: dict | None = None  # its audit.json
    evaluation: dict = field(default_factory=dict)  # EvalSpec fields this run evaluates with instead


@dataclass
class Row:
    name: str  # what --only takes
    table: str  # main | ablation | privacy | cohort | robust | flicker
    label: str
    config_file: str
    overrides: list[str]
    seeds: list[int]
    target_epsilon: float | None = None
    note: str = ""
    runs: dict = field(default_factory=dict)  # run_label(backbone, seed) -> Run, backbone 0 first
    cohort: int | None = None  # cohort rows: clients per round m
    audit: Run | None = None  # privacy rows: the canary audit of the row's seed-0 config
    curve: str = ""  # cohort rows: the curve it belongs to (privfedtalk | fedavg | local-only | a variant)
    scenario: str = ""  # robust and flicker rows: the corpus scenario (Scenario.name) it trains on
    method: str = ""  # robust and flicker rows: the method's key in SCENARIO_METHODS
    # EvalSpec fields the row's runs are evaluated with instead of the benchmark's (flicker rows:
    # {"frame_noise": "independent"}); runs of rows that differ here are separate runs.
    evaluation: dict = field(default_factory=dict)

    def first_run(self) -> Run:
        """The run on backbone 0 at the row's first seed (the one figures and samples show)."""
        return self.runs[run_label(0, self.seeds[0])]


def run_label(backbone: int, seed: int) -> str:
    """A run's key in Row.runs: "0", "1", ... on backbone 0 (as before backbones could vary), "b1-0",
    "b1-1", ... on backbone 1."""
    return str(seed) if backbone == 0 else f"b{backbone}-{seed}"


def run_key(row_name: str, backbone: int, seed: int) -> str:
    """The run's folder under OUT/PRESET/runs/: ROW/seedS on backbone 0, ROW/bB-seedS on backbone B."""
    prefix = "" if backbone == 0 else f"b{backbone}-"
    return f"{folder_name(row_name)}/{prefix}seed{seed}"


@dataclass
class EvalSpec:
    """What every run is evaluated on: the same identities' held-out clips, DDIM steps, FID network."""

    identities: list
    steps: int | None = None
    inception: str | None = None  # local TorchScript Inception file; None: FID is "n/a"
    # The corpus the held-out clips are read from; None: each run's own data.root. Scenario presets
    # name the clean corpus: every scenario's held-out clips are its clean clips, byte for byte.
    heldout_root: str | None = None
    frame_noise: str = "shared"  # TalkingHeadGenerator.sample's initial noise across frames

    def settings(self, seed: int) -> dict:
        """The evaluation's cache key in eval.json: a run evaluated otherwise is evaluated again.
        Fields at their defaults are left out, so that older eval.json files stay valid."""
        out = {
            "identities": self.identities,
            "sample_steps": self.steps,
            "seed": seed,
            "version": EVAL_VERSION,
        }
        if self.inception:
            out["inception"] = self.inception
        if self.heldout_root:
            out["heldout_root"] = self.heldout_root
        if self.frame_noise != "shared":
            out["frame_noise"] = self.frame_noise
        return out

    def for_run(self, run: Run) -> EvalSpec:
        """This spec with the run's own evaluation fields (Run.evaluation) in place."""
        return dataclasses.replace(self, **run.evaluation) if run.evaluation else self


@dataclass
class Benchmark:
    """One invocation's plan: the backbone, the shared budget, every row and the runs selected."""

    preset_name: str
    preset: dict
    data: Path
    checkpoint: Path  # backbone 0
    checkpoints: list[Path]  # every backbone, index = backbone (preset backbone_seeds, --backbone-seeds)
    split: dict
    base: object  # the fedavg config with the shared overrides: the budget every row gets
    budget: dict
    seeds: int
    rows: list[Row]
    selected: list[Row]
    runs: list[Run]  # the selected rows' runs, each once, in row order
    spec: EvalSpec
    runs_dir: Path  # OUT/PRESET/runs/
    audits: list[Run] = field(default_factory=list)  # the selected privacy rows' canary audits


def _eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def privacy_overrides(target_epsilon: float) -> list[str]:
    """Secure aggregation always; client-level DP calibrated to target ε (inf: DP off); Poisson sampling."""
    keys = ["privacy.secure_aggregation=true", "federated.sampling=poisson"]
    if math.isinf(target_epsilon):
        return keys + ["privacy.dp=false"]
    return keys + ["privacy.dp=true", f"privacy.target_epsilon={float(target_epsilon)}"]


ISFA_TDC = ["federated.method=isfa", "federated.lambda_tdc=0.1"]


def main_rows(target: float, seeds: list[int], budget: dict, private_identities: int) -> list[Row]:
    """The main table: PrivFedTalk against its baselines and the centralized bound, on every seed."""
    # The pooled data of a FedAvg round in one client's batches: m x batch_windows windows per step,
    # local_steps steps at the same lr (the large-batch equivalent of averaging m clients' local steps).
    # It used to take m x local_steps steps of batch_windows windows; with lr 1e-2 those 4x longer
    # trajectories made the row swing from far above FedAvg to below it across re-runs (issue 17).
    centralized = [
        f"federated.partition.identities_per_client={private_identities}",
        "federated.clients_per_round=1",
        f"federated.local_steps={budget['local_steps']}",
        f"federated.batch_windows={budget['clients_per_round'] * budget['batch_windows']}",
    ]
    return [
        Row(
            "local-only",
            "main",
            "local-only",
            "fedavg.yaml",
            ["federated.server_lr=0.0"],
            seeds,
            note="no federation: server_lr=0, so the global shared adapter never changes (clients still "
            "train it locally each round, and that part is thrown away); what each client keeps is its "
            "identity adapter. Nothing needs uploading, so upload is reported as 0",
        ),
        Row("fedavg", "main", "FedAvg", "fedavg.yaml", [], seeds),
        Row("fedprox", "main", "FedProx (mu=0.01)", "fedprox.yaml", ["federated.mu=0.01"], seeds),
        Row(
            "privfedtalk",
            "main",
            f"PrivFedTalk (ε={_eps(target)})",
            "privfedtalk.yaml",
            ISFA_TDC + privacy_overrides(target),
            seeds,
            target_epsilon=target,
        ),
        Row(
            "centralized",
            "main",
            "centralized (non-private upper bound)",
            "fedavg.yaml",
            centralized,
            seeds,
            note="one client owning every private identity; per round local_steps steps of "
            "clients_per_round x batch_windows windows: the windows a FedAvg round trains on, in one batch "
            "per step; upload not applicable",
        ),
    ]


def ablation_rows(target: float, seeds: list[int]) -> list[Row]:
    """Each component added alone to adapters-only FedAvg, on the main table's seeds (adapters-only and
    full then share fedavg's and privfedtalk's runs)."""
    private = privacy_overrides(target)
    isfa, tdc = ["federated.method=isfa"], ["federated.lambda_tdc=0.1"]
    return [
        Row("adapters-only", "ablation", "adapters only (FedAvg)", "fedavg.yaml", [], seeds),
        Row("+isfa", "ablation", "+ ISFA", "fedavg.yaml", isfa, seeds),
        Row("+tdc", "ablation", "+ TDC (λ=0.1)", "fedavg.yaml", tdc, seeds),
        Row("+dp", "ablation", f"+ SecAgg + DP (ε={_eps(target)})", "fedavg.yaml", private, seeds, target),
        Row("full", "ablation", "full PrivFedTalk", "privfedtalk.yaml", ISFA_TDC + private, seeds, target),
    ]


def privacy_rows(epsilons, seeds: list[int]) -> list[Row]:
    """The privacy-utility sweep of the full method, on the main table's seeds (the target-ε point then
    shares privfedtalk's runs)."""
    return [
        Row(
            f"eps-{_eps(eps)}",
            "privacy",
            f"target ε={_eps(eps)}" + (" (DP off, SecAgg on)" if math.isinf(eps) else ""),
            "privfedtalk.yaml",
            ISFA_TDC + privacy_overrides(eps),
            seeds,
            target_epsilon=float(eps),
        )
        for eps in epsilons
    ]


# PrivFedTalk at the largest cohort with one change each: (name, label, overrides). The server Adam's
# lr is per coordinate (Adam normalizes the update), so it is of the order of one coordinate's update,
# not of the update vector's 1.
COHORT_VARIANTS = [
    ("adaptive", "adaptive clipping (median quantile)", ["privacy.clip=adaptive"]),
    (
        "momentum",
        "server momentum (β=0.9, lr 1)",
        ["federated.server_optimizer=momentum", "federated.server_momentum=0.9", "federated.server_lr=1.0"],
    ),
    ("adam", "server Adam (lr 1e-3)", ["federated.server_optimizer=adam", "federated.server_lr=1e-3"]),
]
COHORT_CURVES = ("privfedtalk", "fedavg", "local-only")


def cohort_method_rows(m: int, target: float, seeds: list[int], dp_keys: tuple[str, ...] = ()) -> list[Row]:
    """PrivFedTalk (DP, with the noise-to-signal diagnostic), FedAvg and local-only at m clients per round;
    dp_keys (the preset's `dp_overrides`) go to the PrivFedTalk row only."""
    cohort = [f"federated.clients_per_round={m}"]
    dp = ISFA_TDC + privacy_overrides(target) + ["privacy.log_signal_norm=true"] + list(dp_keys)
    return [
        Row(
            f"privfedtalk-m{m}",
            "cohort",
            f"PrivFedTalk (ε={_eps(target)}), m={m}",
            "privfedtalk.yaml",
            dp + cohort,
            seeds,
            target_epsilon=target,
            cohort=m,
            curve="privfedtalk",
        ),
        Row(
            f"fedavg-m{m}", "cohort", f"FedAvg, m={m}", "fedavg.yaml", cohort, seeds, cohort=m, curve="fedavg"
        ),
        Row(
            f"local-only-m{m}",
            "cohort",
            f"local-only, m={m}",
            "fedavg.yaml",
            ["federated.server_lr=0.0"] + cohort,
            seeds,
            cohort=m,
            curve="local-only",
            note="server_lr=0: each sampled client trains its own identity adapter; nothing is shared",
        ),
    ]


def cohort_variant_rows(m: int, target: float, seeds: list[int], dp_keys: tuple[str, ...] = ()) -> list[Row]:
    """PrivFedTalk at cohort m with one of COHORT_VARIANTS' changes (clipping or server optimizer), on top
    of dp_keys (a variant's own keys win, e.g. the server optimizer's lr)."""
    base = (
        ISFA_TDC
        + privacy_overrides(target)
        + ["privacy.log_signal_norm=true", f"federated.clients_per_round={m}"]
        + list(dp_keys)
    )
    return [
        Row(
            f"privfedtalk-{name}",
            "cohort",
            f"PrivFedTalk (ε={_eps(target)}), m={m}, {label}",
            "privfedtalk.yaml",
            base + keys,
            seeds,
            target_epsilon=target,
            cohort=m,
            curve=f"privfedtalk-{name}",
        )
        for name, label, keys in COHORT_VARIANTS
    ]


def cohort_rows(preset: dict, seeds: int) -> list[Row]:
    """The cohort sweep: at every m of preset["cohorts"] PrivFedTalk, FedAvg and local-only; at the largest m
    also the variants. `seeds` runs at the largest m (its variants: preset["variant_seeds"], default the
    same), preset["cohort_seeds"] (default the same) at the smaller ones. preset["dp_overrides"] (default
    none) are keys of the DP rows alone: the clip norm and server lr a DP run is tuned with."""
    target = float(preset["target_epsilon"])
    cohorts = sorted(int(m) for m in preset["cohorts"])
    largest = cohorts[-1]
    smaller_seeds = list(range(int(preset.get("cohort_seeds", seeds))))
    dp_keys = tuple(preset.get("dp_overrides", ()))
    rows = []
    for m in cohorts:
        rows += cohort_method_rows(m, target, list(range(seeds)) if m == largest else smaller_seeds, dp_keys)
    variant_seeds = list(range(int(preset.get("variant_seeds", seeds))))
    return rows + cohort_variant_rows(largest, target, variant_seeds, dp_keys)


@dataclass(frozen=True)
class Scenario:
    """One corpus of a scenario preset: the clean corpus, or it with `fraction` of the private
    clients' training clips damaged by `corruption` (privfedtalk.data.synthetic.Corruption)."""

    corruption: str | None = None
    fraction: float = 0.0

    @property
    def name(self) -> str:
        """The scenario's name in row names and corpus folders: clean, or kind-percent (audio_shift-25)."""
        return "clean" if self.corruption is None else f"{self.corruption}-{round(100 * self.fraction)}"

    @property
    def label(self) -> str:
        return "clean" if self.corruption is None else f"{self.corruption} {round(100 * self.fraction)} %"

    def synth(self, preset: dict) -> dict:
        """synthesize_corpus's keyword arguments for this scenario's corpus."""
        if self.corruption is None:
            return dict(preset["synth"])
        return {**preset["synth"], "corruption": self.corruption, "corrupt_fraction": self.fraction}


def scenarios(preset: dict) -> list[Scenario]:
    """The clean corpus first, then every kind of preset["scenarios"]["kinds"] at every fraction."""
    from privfedtalk.data.synthetic import Corruption
    from privfedtalk.errors import ConfigError

    spec = preset["scenarios"]
    choices = [kind.value for kind in Corruption]
    unknown = [kind for kind in spec["kinds"] if kind not in choices]
    if unknown:  # fails here, before any corpus is synthesized
        raise ConfigError(f"preset scenarios: unknown corruption kinds {unknown} (choose from {choices})")
    kinds = [Corruption(kind).value for kind in spec["kinds"]]
    return [Scenario()] + [Scenario(kind, float(f)) for kind in kinds for f in spec["fractions"]]


# The methods every scenario runs: (key, label, config file, method keys). The threshold baseline's
# threshold is pinned in its row (not left to config.py's default) so its label stays true. TDC at
# λ = 1, not the main table's 0.1: on the robust preset's clean corpus (2026-12-02, 3 seeds, independent
# frame noise) λ = 0.1 moved flicker 0.0210 -> 0.0204 (inside the seed spread), λ = 1 to 0.0193 ± 0.0001,
# with sync corr 0.311 ± 0.021 against ISFA's 0.332 ± 0.056.
SCENARIO_METHODS = [
    ("fedavg", "FedAvg", "fedavg.yaml", []),
    ("fedprox", "FedProx (mu=0.01)", "fedprox.yaml", ["federated.mu=0.01"]),
    ("isfa", "ISFA", "fedavg.yaml", ["federated.method=isfa"]),
    ("isfa-tdc", "ISFA + TDC (λ=1)", "fedavg.yaml", ["federated.method=isfa", "federated.lambda_tdc=1.0"]),
    (
        "threshold",
        "ISFA threshold (s ≥ 0.95)",
        "fedavg.yaml",
        ["federated.method=isfa_threshold", "federated.signal_threshold=0.95"],
    ),
]
# The flicker rows: ISFA without and with TDC on the clean corpus, sampled with independent noise per
# frame (TalkingHeadGenerator.sample's frame_noise), which shows flicker that shared noise hides.
FLICKER_METHODS = ("isfa", "isfa-tdc")
FLICKER_EVALUATION = {"frame_noise": "independent"}


def scenario_rows(preset: dict, seeds: int, roots: dict | None = None) -> list[Row]:
    """Every method of SCENARIO_METHODS on every scenario's corpus, then (preset flicker_rows) the
    flicker rows. roots: {scenario name: corpus folder}; a corrupted scenario's rows train on theirs
    (data.root, after the common keys, so it wins); clean rows keep the common data.root. Without
    roots (listing row names) the folders are placeholders."""
    every = list(range(seeds))
    methods = {key: (label, config, keys) for key, label, config, keys in SCENARIO_METHODS}
    rows = []
    for scenario in scenarios(preset):
        root = (roots or {}).get(scenario.name, f"data-{scenario.name}")
        corpus = [] if scenario.corruption is None else [f"data.root={Path(root).resolve()}"]
        for key, (label, config, keys) in methods.items():
            name = f"{scenario.name}-{key}"
            row = Row(name, "robust", label, config, keys + corpus, every, scenario=scenario.name, method=key)
            rows.append(row)
    if preset.get("flicker_rows"):
        flicker_seeds = list(range(max(seeds, int(preset.get("flicker_seeds", seeds)))))
        for key in FLICKER_METHODS:
            label, config, keys = methods[key]
            rows.append(
                Row(
                    f"flicker-{key}",
                    "flicker",
                    f"{label}, independent frame noise",
                    config,
                    keys,
                    flicker_seeds,
                    scenario="clean",
                    method=key,
                    evaluation=dict(FLICKER_EVALUATION),
                    note="the clean row's training, evaluated with independent initial noise per frame",
                )
            )
    return rows


def row_definitions(
    preset: dict, seeds: int, budget: dict, private_identities: int, scenario_roots: dict | None = None
) -> list[Row]:
    """Every row of the three tables, each on seeds 0..seeds-1; budget = the resolved clients_per_round
    and local_steps.

    A preset with `cohorts` plans the cohort sweep alone (cohort_rows): its budget is spent on the
    utility-vs-cohort curve, not on the main, ablation and privacy tables. A preset with `scenarios`
    plans the robustness table alone (scenario_rows; scenario_roots: each scenario's corpus).
    """
    if preset.get("cohorts"):
        return cohort_rows(preset, seeds)
    if preset.get("scenarios"):
        return scenario_rows(preset, seeds, scenario_roots)
    target = float(preset["target_epsilon"])
    every = list(range(seeds))
    ablations = ablation_rows(target, every)
    if preset.get("ablations") is not None:  # the preset's subset, in the table's order
        ablations = [row for row in ablations if row.name in preset["ablations"]]
    return (
        main_rows(target, every, budget, private_identities)
        + ablations
        + privacy_rows(preset["epsilons"], every)
    )


def row_names(preset: dict) -> list[str]:
    budget = {"clients_per_round": 1, "local_steps": 1, "batch_windows": 1}
    return [r.name for r in row_definitions(preset, 1, budget, 1)]


def folder_name(row_name: str) -> str:
    return row_name.replace("+", "plus-")


def plan_runs(
    rows: list[Row], common: list[str], cli_overrides: list[str], runs_dir: Path, backbone: int = 0
) -> dict:
    """Build each row's configs on one backbone (`common` names its checkpoint); rows with identical
    configs share one run (the first row names it). Called once per backbone: runs on different
    backbones never share (the checkpoint is part of the config)."""
    from privfedtalk.config import load_config

    runs: dict[str, Run] = {}
    by_signature: dict[tuple, Run] = {}
    for row in rows:
        for seed in row.seeds:
            # Command-line overrides (threads=1, device=...) apply to every row; the row's method keys
            # and the seed come last, so that rows keep differing only in those.
            cfg = load_config(row.config_file, common + cli_overrides + row.overrides + [f"seed={seed}"])
            # Rows evaluated otherwise get runs of their own: a run folder holds one eval.json.
            sig = (run_signature(cfg), json.dumps(row.evaluation, sort_keys=True))
            if sig not in by_signature:
                key = run_key(row.name, backbone, seed)
                cfg.out_dir = str(runs_dir / key)
                run = Run(key, cfg, backbone=backbone, evaluation=dict(row.evaluation))
                by_signature[sig] = runs[key] = run
            row.runs[run_label(backbone, seed)] = by_signature[sig]
    return runs


def audit_config(cfg, canaries: int):
    """`cfg` with `canaries` canary clients added to its population and clients_per_round scaled by
    (N + canaries) / N, so that the sampling rate q = m / population, hence the calibrated noise z and
    the accountant's ε, stay those of the audited row (N: its registered real clients)."""
    from privfedtalk.federated.clients import register_clients

    population = len(register_clients(cfg))
    audited = copy.deepcopy(cfg)
    scaled = cfg.federated.clients_per_round * (population + canaries) / population
    audited.federated.clients_per_round = max(1, round(scaled))
    return audited


def plan_audits(rows: list[Row], canaries: int, runs_dir: Path) -> list[Run]:
    """One canary audit per privacy row, of its seed-0 config, under OUT/PRESET/runs/audit/ROW/."""
    audits = []
    for row in rows:
        if row.table != "privacy" or not canaries or not row.runs:
            continue
        cfg = audit_config(row.first_run().cfg, canaries)
        key = f"audit/{folder_name(row.name)}/seed0"
        cfg.out_dir = str(runs_dir / key)
        row.audit = Run(key, cfg, canaries=canaries)
        audits.append(row.audit)
    return audits


def common_overrides(preset: dict, data: Path, checkpoint: Path) -> list[str]:
    """The backbone, corpus and budget keys every run shares (before the command line's)."""
    generator = json.loads((Path(checkpoint) / "generator.json").read_text())
    return [
        f"data.root={Path(data).resolve()}",
        f"data.size={generator['size']}",
        f"federated.checkpoint={Path(checkpoint).resolve()}",
        # Every run of a backbone trains on the same clients' clips: encoded once, next to the backbone.
        f"data.latent_cache={Path(checkpoint).resolve().parent / 'client-latents'}",
        "federated.eval_every=0",
        # The thread count changes floating-point sums, hence the numbers: fixed per preset, so that
        # --jobs only changes scheduling (a threads= on the command line still wins).
        f"threads={preset.get('run_threads', 1)}",
    ] + list(preset["federated"])


def backbone_count(preset: dict, args) -> int:
    """How many backbones every row's runs span: --backbone-seeds, else the preset's backbone_seeds (1)."""
    return int(getattr(args, "backbone_seeds", None) or preset.get("backbone_seeds", 1))


def plan_benchmark(
    preset_name: str,
    preset: dict,
    data: Path,
    checkpoints: list[Path],
    args,
    runs_dir: Path,
    scenario_roots: dict | None = None,
) -> Benchmark:
    """Rows, runs and evaluation of this invocation (args: overrides, seeds, only, inception); every row
    runs each of its seeds on each backbone of `checkpoints` (index = backbone). A scenario preset
    needs scenario_roots ({scenario name: corpus}, execute.scenario_corpora); its runs are evaluated
    on the held-out clips of `data`, the clean corpus."""
    from privfedtalk.config import load_config
    from privfedtalk.data.corpus import read_split

    split = read_split(data)
    if not split or not split.get("private"):
        raise SystemExit(f"{data}: no split.json with private identities")
    common = common_overrides(preset, data, checkpoints[0])
    base = load_config("fedavg.yaml", common + args.overrides)
    budget = {
        "clients_per_round": int(base.federated.clients_per_round),
        "local_steps": int(base.federated.local_steps),
        "batch_windows": int(base.federated.batch_windows),
    }
    seeds = args.seeds or int(preset["seeds"])
    if preset.get("scenarios") and scenario_roots is None:
        raise ValueError(f"preset {preset_name!r} has scenarios: plan_benchmark needs their corpora")
    rows = row_definitions(preset, seeds, budget, len(split["private"]), scenario_roots)
    for backbone, checkpoint in enumerate(checkpoints):
        plan_runs(rows, common_overrides(preset, data, checkpoint), args.overrides, runs_dir, backbone)
    selected = [r for r in rows if not args.only or r.name in args.only]
    runs = list({id(run): run for row in selected for run in row.runs.values()}.values())
    identities = list(split["private"][: preset["eval_clients"] or None])
    inception = str(args.inception.resolve()) if args.inception else None
    heldout_root = str(Path(data).resolve()) if preset.get("scenarios") else None
    spec = EvalSpec(identities, preset["eval_sample_steps"], inception, heldout_root)
    audits = plan_audits(selected, int(preset.get("audit_canaries") or 0), runs_dir)
    return Benchmark(
        preset_name,
        preset,
        data,
        checkpoints[0],
        list(checkpoints),
        split,
        base,
        budget,
        seeds,
        rows,
        selected,
        runs,
        spec,
        runs_dir,
        audits,
    )
