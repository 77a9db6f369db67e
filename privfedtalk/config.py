"""Structured configuration: typed dataclass defaults, YAML files and `key=value` overrides (omegaconf).

A choice among fixed options is an `Enum` (omegaconf refuses any other value), and `validate` checks the
invariants between keys when a config loads, so a setting that would silently weaken privacy or change
the method never reaches training.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from privfedtalk.errors import ConfigError

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


class Choice(str, Enum):
    """A config option: compares equal to its value and prints as it (`method=isfa`)."""

    def __str__(self) -> str:
        return self.value


class MixedPrecision(Choice):
    # "fp32", not "no": YAML reads a bare `no` as the boolean false.
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class PredictionType(Choice):
    v_prediction = "v_prediction"
    epsilon = "epsilon"


class BetaSchedule(Choice):
    linear = "linear"
    scaled_linear = "scaled_linear"
    squaredcos_cap_v2 = "squaredcos_cap_v2"


class SignalSource(Choice):
    """What ISFA's reliability signals measure on the client (privfedtalk/federated/signals.py)."""

    model = "model"  # the locally trained model's prediction vs the reference (the paper's signals)
    data = "data"  # the client's own training frames: identity drift and temporal roughness


class Method(Choice):
    """The aggregation strategy (privfedtalk/federated/strategy.py)."""

    fedavg = "fedavg"  # weights ∝ sample count
    fedprox = "fedprox"  # FedAvg's weights; clients add (mu/2)·‖w − w_global‖² (mu > 0)
    isfa = "isfa"  # weights ∝ n·exp(γ·s), s from on-device reliability signals
    isfa_threshold = "isfa_threshold"  # weight n if s >= signal_threshold, else 0 (robust baseline)


class Federate(Choice):
    shared_adapter = "shared_adapter"
    unet = "unet"  # the whole U-Net backbone (for users with compute)


class Sampling(Choice):
    fixed_size = "fixed_size"  # exactly m of N clients per round (replace-one accounting)
    poisson = "poisson"  # each client independently with rate m/N (add/remove accounting)


class TdcSpace(Choice):
    noise = "noise"
    x0 = "x0"


class ServerOptimizer(Choice):
    sgd = "sgd"  # FedAvg's server step: global += server_lr · released update
    momentum = "momentum"  # FedAvgM / DP-FedAvgM
    adam = "adam"  # FedAdam (Reddi et al. 2021)
    yogi = "yogi"  # FedYogi (Reddi et al. 2021)


class NoisePlacement(Choice):
    distributed = "distributed"  # each client adds a share before masking; needs secure aggregation
    trusted = "trusted"  # the aggregator adds all the noise to the decoded sum (trusts the aggregator)


class Accountant(Choice):
    rdp = "rdp"
    pld = "pld"


class ClipMode(Choice):
    fixed = "fixed"  # C = privacy.clip_norm every round
    adaptive = "adaptive"  # C follows a target quantile of update norms (Andrew et al. 2021)


class NoiseSource(Choice):
    """Where privacy randomness comes from (DP noise and, in DP runs, client sampling)."""

    os_entropy = "os_entropy"  # AES-CTR keyed from os.urandom: nobody can reproduce it
    insecure_seeded = "insecure_seeded"  # TESTS ONLY: derived from the config seed; NO privacy


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    n_mels: int = 32
    hop_ms: float = 10.0
    window_ms: float = 200.0  # log-mel window centred on each video frame


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    size: int = 64
    fps: float = 25.0
    window: int = 4  # consecutive frames per training window (TDC acts across them)
    heldout_clips: int = 1  # last clips of each identity kept for evaluation
    audio: AudioConfig = field(default_factory=AudioConfig)
    # A folder where clients' encoded clips are kept across runs of one backbone (the benchmark's
    # cache); empty = each run encodes its clients' clips itself. Keyed by everything they depend on.
    latent_cache: str = ""


@dataclass
class VAEConfig:
    pretrained: str = ""  # local folder loadable by AutoencoderKL.from_pretrained; empty = train our own
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    latent_channels: int = 4
    layers_per_block: int = 1
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-6


@dataclass
class UNetConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [64, 128])
    layers_per_block: int = 1
    cross_attention_dim: int = 64
    attention_head_dim: int = 8
    audio_tokens_dim: int = 64
    steps: int = 1500
    batch_windows: int = 4
    # Frames per pretraining window; 0 = data.window. The U-Net is per-frame and pretraining has no
    # TDC term, so window=1 with 4x batch_windows gives the same frames with 4x the timesteps.
    window: int = 0
    lr: float = 5e-4
    # > 0: keep an exponential moving average of the U-Net and audio encoder weights during
    # pretraining (diffusers' EMAModel, decay min(ema_decay, (1+k)/(10+k)) at step k) and save it
    # instead of the last weights; 0 saves the last weights.
    ema_decay: float = 0.0


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    prediction_type: PredictionType = PredictionType.v_prediction
    beta_schedule: BetaSchedule = BetaSchedule.scaled_linear
    sample_steps: int = 20
    condition_dropout: float = 0.1  # for classifier-free guidance
    guidance_scale: float = 1.0


@dataclass
class ModelConfig:
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    anchor_decode: bool = True  # decode frames as reference + D(z_t) - D(z_ref) (see generator.generate)
    identity_steps: int = 300  # identity-encoder training steps (public identities only)


@dataclass
class AdapterConfig:
    rank: int = 4
    alpha: float = 4.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


def _identity_adapter() -> AdapterConfig:
    # Resnet convolutions carry appearance; the shared adapter takes the attention layers.
    return AdapterConfig(rank=4, alpha=4.0, target_modules=["conv1", "conv2"])


@dataclass
class PartitionConfig:
    identities_per_client: int = 1  # >1 groups several private identities into one client
    unequal: bool = False  # unequal client sizes: client k keeps a random share of its clips


@dataclass
class FederatedConfig:
    checkpoint: str = "runs/pretrain/checkpoint"  # pretrained backbone (public identities only)
    method: Method = Method.fedavg
    federate: Federate = Federate.shared_adapter
    rounds: int = 10
    clients_per_round: int = 4
    sampling: Sampling = Sampling.fixed_size
    local_steps: int = 10
    batch_windows: int = 4
    # Clients trained at once in one grouped U-Net pass (federated/batched.py); 1: one after another.
    client_batch: int = 1
    lr: float = 1e-3
    server_optimizer: ServerOptimizer = ServerOptimizer.sgd
    server_lr: float = 1.0  # 0: the global state never moves (the local-only baseline)
    server_momentum: float = 0.9  # momentum: β; adam/yogi: β1
    server_beta2: float = 0.99  # adam/yogi second-moment decay
    server_tau: float = 1e-3  # adam/yogi adaptivity (added to √v)
    mu: float = 0.0  # FedProx proximal weight (method=fedprox needs mu > 0; isfa may use it too)
    lambda_tdc: float = 0.0
    tdc_space: TdcSpace = TdcSpace.noise
    isfa_alpha: float = 0.5
    isfa_gamma: float = 4.0
    signal_bits: int = 4  # quantization of the reliability scalars (they stay on the client under DP)
    # Calibration [lo, hi] of the raw data signals (federated/signals.py): (x − lo)/(hi − lo) in [0, 1].
    # From experiments/signal_distributions.py (8 private clients per kind, half corrupted, 32x32, 1.5 s):
    # clean raw identity 0.953-0.979 / temporal 0.986-0.991 (also >= 0.95 / 0.983 at 64x64); half the
    # frames of another identity 0.705-0.854 / 0.96; an occluding box 0.910-0.940 / 0.99; jitter and
    # flicker 0.93-0.96 / 0.83-0.86. hi sits just under clean, so clean clients send 1.0.
    signal_identity_range: list[float] = field(default_factory=lambda: [0.86, 0.95])
    signal_temporal_range: list[float] = field(default_factory=lambda: [0.90, 0.98])
    # isfa_threshold: weight 0 below it. 0.95 with 4 bits and α = 0.5 lets one signal drop one bin.
    signal_threshold: float = 0.95
    signal_source: SignalSource = SignalSource.model
    signal_windows: int = 4  # windows the model-based signals are computed on
    eval_every: int = 5
    eval_clips: int = 4  # held-out clips scored at each evaluation (0: none)
    # Flower backend: seconds the server waits for the nodes' replies to one message (0: no limit);
    # a node that has not answered by then is left out of the round, like a dropout.
    reply_timeout_s: float = 0.0
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    shared: AdapterConfig = field(default_factory=AdapterConfig)
    identity: AdapterConfig = field(default_factory=_identity_adapter)


@dataclass
class PrivacyConfig:
    secure_aggregation: bool = False
    threshold_fraction: float = 0.67  # Shamir threshold t = ceil(fraction * m)
    dropout_rate: float = 0.0  # simulated clients that drop after sharing their keys
    fixed_point_bits: int = 64
    dp: bool = False
    clip_norm: float = 0.05  # C: L2 bound on each client's shared-adapter update (see docs/threat-model.md)
    noise_multiplier: float = 1.0  # z: noise std = z * w_max * C on the weighted sum
    target_epsilon: float = 0.0  # > 0: calibrate z so the observer's ε after all rounds is this
    delta: float = 1e-5
    reference_samples: int = 300  # n at which a client's DP weight reaches the cap w_max = 1/m
    noise: NoisePlacement = NoisePlacement.distributed
    accountant: Accountant = Accountant.rdp
    noise_source: NoiseSource = NoiseSource.os_entropy
    clip: ClipMode = ClipMode.fixed  # adaptive: clip_norm is the first round's C
    target_quantile: float = 0.5  # adaptive: the share of clients whose update C should not clip
    clip_learning_rate: float = 0.2  # adaptive: C <- C * exp(-lr * (unclipped fraction - quantile))
    bit_noise_std: float = 0.0  # adaptive: noise on the count of unclipped clients (0: m / 20)
    log_signal_norm: bool = False  # SIMULATION ONLY: log the noise-free sum's norm (not private)


@dataclass
class Config:
    seed: int = 0
    threads: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mixed_precision: MixedPrecision = MixedPrecision.fp32  # fp16/bf16 on CUDA; fp32 on CPU, with a warning
    gradient_checkpointing: bool = False  # U-Net activation checkpointing (CUDA; slower on CPU)
    out_dir: str = "runs/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)


def resolve_config_path(path: str | Path) -> Path:
    """A YAML file path, or the name of a config shipped in the package (`privfedtalk`, `fedavg.yaml`)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    name = candidate.name if candidate.suffix == ".yaml" else candidate.name + ".yaml"
    packaged = PACKAGED_CONFIGS / name
    if candidate.parent == Path(".") and packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{path}: config file not found (give a YAML file, or a shipped config: {shipped})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, schema=Config):
    """Return a typed OmegaConf config: schema defaults, then the YAML file, then `key=value` overrides.

    Unknown keys, wrongly typed values and values outside an option's choices raise ConfigError naming
    the key and the source; for the full `Config`, `validate` then checks the cross-key invariants.
    """
    cfg = OmegaConf.structured(schema)
    source = "defaults"
    try:
        if path is not None:
            resolved = resolve_config_path(path)
            source = str(resolved)
            cfg = OmegaConf.merge(cfg, *load_yaml_chain(resolved))
        if overrides:
            source = "command line"
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override '{item}' is not key=value (e.g. model.unet.steps=200)")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        raise ConfigError(
            f"{source}: bad config key or value '{key}': {str(err).splitlines()[0]} "
            "(check the spelling against privfedtalk/config.py)"
        ) from None
    if schema is Config:
        validate(cfg)
    return cfg


def load_yaml_chain(path: Path, depth: int = 0) -> list:
    """A YAML file and the files it names with `base: other.yaml` (relative to it), base first."""
    if depth > 8:
        raise ConfigError(f"{path}: 'base:' chain deeper than 8 files (a cycle?)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (check the 'base:' path)")
    node = OmegaConf.load(path)
    base = node.pop("base", None)
    chain = load_yaml_chain(path.parent / base, depth + 1) if base else []
    return chain + [node]


def config_signature(cfg: Config) -> dict:
    """The config as plain JSON-able data (options as their values), e.g. to compare two runs."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


# ------------------------------------------------------------------------------------------ validation


def _require(ok: bool, key: str, value, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {fix}")


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def validate(cfg: Config) -> None:
    """Cross-key invariants; each failure is a one-line ConfigError naming the key and the fix.

    The privacy rules are enforced here rather than at run time, so that a run that would report an ε
    it does not have never starts: DP needs a positive clip norm and a positive noise multiplier (or a
    target ε), distributed noise needs secure aggregation (otherwise the server reads each client's
    weakly noised update), and the accountant must support the sampling scheme.
    """
    _require(
        bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device)),
        "device",
        cfg.device,
        "use auto, cpu, cuda or cuda:N",
    )
    _require(cfg.threads >= 0, "threads", cfg.threads, "use >= 0 (0: torch's default)")
    _validate_data(cfg.data)
    _require(
        0 <= cfg.model.unet.ema_decay < 1,
        "model.unet.ema_decay",
        cfg.model.unet.ema_decay,
        "use [0, 1) (0: save the last weights; e.g. 0.995 averages about the last 200 steps)",
    )
    _require(
        cfg.model.unet.window >= 0,
        "model.unet.window",
        cfg.model.unet.window,
        "use >= 0 (frames per pretraining window; 0: data.window)",
    )
    _validate_federated(cfg.federated)
    _validate_privacy(cfg.privacy, cfg.federated)


def _validate_data(data) -> None:
    _require(data.window >= 1, "data.window", data.window, "use >= 1")
    _require(data.heldout_clips >= 0, "data.heldout_clips", data.heldout_clips, "use >= 0")
    _require(_positive(data.fps), "data.fps", data.fps, "use a positive frame rate")


def _validate_federated(fed) -> None:
    _require(fed.rounds >= 0, "federated.rounds", fed.rounds, "use >= 0")
    _require(fed.clients_per_round >= 1, "federated.clients_per_round", fed.clients_per_round, "use >= 1")
    _require(fed.local_steps >= 0, "federated.local_steps", fed.local_steps, "use >= 0")
    _require(fed.batch_windows >= 1, "federated.batch_windows", fed.batch_windows, "use >= 1")
    _require(fed.client_batch >= 1, "federated.client_batch", fed.client_batch, "use >= 1 (1: one at a time)")
    if fed.client_batch > 1:
        _require(
            fed.federate == Federate.shared_adapter,
            "federated.client_batch",
            fed.client_batch,
            "batched clients need federated.federate=shared_adapter (federate=unet trains the whole "
            "backbone per client; use client_batch=1)",
        )
    _require(fed.lr >= 0, "federated.lr", fed.lr, "use >= 0")
    _require(
        fed.reply_timeout_s >= 0, "federated.reply_timeout_s", fed.reply_timeout_s, "use >= 0 (0: no limit)"
    )
    _require(fed.server_lr >= 0, "federated.server_lr", fed.server_lr, "use >= 0 (0: local-only baseline)")
    _require(0 <= fed.server_momentum < 1, "federated.server_momentum", fed.server_momentum, "use [0, 1)")
    _require(0 <= fed.server_beta2 < 1, "federated.server_beta2", fed.server_beta2, "use [0, 1)")
    _require(_positive(fed.server_tau), "federated.server_tau", fed.server_tau, "use a positive value")
    _require(fed.mu >= 0, "federated.mu", fed.mu, "use >= 0")
    if fed.method == Method.fedprox:
        _require(fed.mu > 0, "federated.mu", fed.mu, "method=fedprox needs mu > 0 (e.g. 0.01)")
    if fed.method == Method.fedavg:
        _require(
            fed.mu == 0, "federated.mu", fed.mu, "FedAvg has no proximal term: use federated.method=fedprox"
        )
    _require(fed.lambda_tdc >= 0, "federated.lambda_tdc", fed.lambda_tdc, "use >= 0")
    _require(0 <= fed.isfa_alpha <= 1, "federated.isfa_alpha", fed.isfa_alpha, "use [0, 1]")
    _require(fed.isfa_gamma >= 0, "federated.isfa_gamma", fed.isfa_gamma, "use >= 0")
    _require(1 <= fed.signal_bits <= 16, "federated.signal_bits", fed.signal_bits, "use 1..16")
    _require(fed.signal_windows >= 1, "federated.signal_windows", fed.signal_windows, "use >= 1")
    for key in ("signal_identity_range", "signal_temporal_range"):
        _validate_signal_range(f"federated.{key}", list(fed[key]))
    _require(0 <= fed.signal_threshold <= 1, "federated.signal_threshold", fed.signal_threshold, "use [0, 1]")
    _require(fed.eval_every >= 0, "federated.eval_every", fed.eval_every, "use >= 0 (0: no evaluation)")
    part = fed.partition
    _require(
        part.identities_per_client >= 1,
        "federated.partition.identities_per_client",
        part.identities_per_client,
        "use >= 1",
    )


def _validate_signal_range(key: str, value: list[float]) -> None:
    ok = len(value) == 2 and all(math.isfinite(v) for v in value) and value[0] < value[1]
    _require(ok, key, value, "use [lo, hi] with lo < hi (raw signal values mapped to 0 and 1)")


def _validate_privacy(privacy, fed) -> None:
    """Privacy keys on their own, then the rules that keep a reported ε true."""
    _require(
        0 < privacy.threshold_fraction <= 1,
        "privacy.threshold_fraction",
        privacy.threshold_fraction,
        "use (0, 1]",
    )
    _require(0 <= privacy.dropout_rate < 1, "privacy.dropout_rate", privacy.dropout_rate, "use [0, 1)")
    _require(
        2 <= privacy.fixed_point_bits <= 64, "privacy.fixed_point_bits", privacy.fixed_point_bits, "use 2..64"
    )
    _require(math.isfinite(privacy.clip_norm), "privacy.clip_norm", privacy.clip_norm, "use a finite value")
    _require(privacy.noise_multiplier >= 0, "privacy.noise_multiplier", privacy.noise_multiplier, "use >= 0")
    _require(
        privacy.target_epsilon >= 0,
        "privacy.target_epsilon",
        privacy.target_epsilon,
        "use > 0, or 0 to give z",
    )
    if privacy.secure_aggregation:
        _validate_secure_aggregation(privacy, fed)
    if privacy.clip == ClipMode.adaptive:
        _require(
            privacy.dp,
            "privacy.clip",
            str(privacy.clip),
            "adaptive clipping is part of DP: set privacy.dp=true",
        )
    if privacy.dp:
        _validate_dp(privacy, fed)


def _validate_secure_aggregation(privacy, fed) -> None:
    _require(
        _positive(privacy.clip_norm),
        "privacy.clip_norm",
        privacy.clip_norm,
        "secure aggregation encodes clipped updates in fixed point: use a positive clip norm",
    )
    from privfedtalk.privacy.secagg import MIN_CLIENTS

    _require(
        fed.clients_per_round >= MIN_CLIENTS,
        "federated.clients_per_round",
        fed.clients_per_round,
        f"secure aggregation sums at least {MIN_CLIENTS} clients: use >= {MIN_CLIENTS}",
    )


def _validate_dp(privacy, fed) -> None:
    _require(
        _positive(privacy.clip_norm),
        "privacy.clip_norm",
        privacy.clip_norm,
        "DP needs a positive clip norm C (it bounds each client's influence); e.g. 0.05",
    )
    _require(
        privacy.target_epsilon > 0 or _positive(privacy.noise_multiplier),
        "privacy.noise_multiplier",
        privacy.noise_multiplier,
        "DP needs noise: give noise_multiplier > 0 or privacy.target_epsilon > 0",
    )
    _require(0 < privacy.delta < 1, "privacy.delta", privacy.delta, "use (0, 1), e.g. 1e-5")
    _require(privacy.reference_samples > 0, "privacy.reference_samples", privacy.reference_samples, "use > 0")
    if privacy.noise == NoisePlacement.distributed:
        _require(
            privacy.secure_aggregation,
            "privacy.secure_aggregation",
            privacy.secure_aggregation,
            "distributed noise without secure aggregation lets the server read each client's "
            "update with only its share of the noise: set privacy.secure_aggregation=true or "
            "privacy.noise=trusted",
        )
    if privacy.clip == ClipMode.adaptive:
        _validate_adaptive_clipping(privacy)
    if fed.sampling == Sampling.fixed_size:
        _require(
            privacy.accountant == Accountant.rdp,
            "privacy.accountant",
            str(privacy.accountant),
            "fixed-size sampling is accounted with RDP only (dp_accounting has no PLD for it): "
            "use privacy.accountant=rdp or federated.sampling=poisson",
        )


def _validate_adaptive_clipping(privacy) -> None:
    _require(
        0 < privacy.target_quantile < 1,
        "privacy.target_quantile",
        privacy.target_quantile,
        "use (0, 1)",
    )
    _require(
        _positive(privacy.clip_learning_rate),
        "privacy.clip_learning_rate",
        privacy.clip_learning_rate,
        "use a positive value, e.g. 0.2",
    )
    _require(
        privacy.bit_noise_std >= 0,
        "privacy.bit_noise_std",
        privacy.bit_noise_std,
        "use >= 0 (0: m/20)",
    )
