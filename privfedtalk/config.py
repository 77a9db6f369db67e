"""Structured configuration: dataclass defaults, YAML files and `key=value` overrides (omegaconf)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from privfedtalk.errors import ConfigError


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
    lr: float = 5e-4


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"  # or "epsilon"
    beta_schedule: str = "scaled_linear"
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
    method: str = "fedavg"  # fedavg | fedprox | isfa (server weighting; fedprox adds mu's term)
    federate: str = "shared_adapter"  # shared_adapter | unet (the whole U-Net, for users with compute)
    rounds: int = 10
    clients_per_round: int = 4
    sampling: str = "fixed_size"  # fixed_size (exactly m of N) | poisson (rate m/N)
    local_steps: int = 10
    batch_windows: int = 4
    lr: float = 1e-3
    server_lr: float = 1.0
    mu: float = 0.0  # FedProx proximal weight (used when > 0)
    lambda_tdc: float = 0.0
    tdc_space: str = "noise"  # noise | x0
    isfa_alpha: float = 0.5
    isfa_gamma: float = 4.0
    signal_bits: int = 4  # quantization of the reliability scalars that leave a client
    signal_windows: int = 4
    eval_every: int = 5
    eval_clips: int = 4  # held-out clips scored at each evaluation (0: none)
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
    target_epsilon: float = 0.0  # > 0: calibrate z for the configured rounds instead
    delta: float = 1e-5
    reference_samples: int = 300  # n at which a client's DP weight reaches the cap w_max = 1/m
    noise: str = "distributed"  # distributed (clients add shares) | trusted (aggregator adds)
    accountant: str = "rdp"  # rdp | pld


@dataclass
class Config:
    seed: int = 0
    threads: int = 2
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "no"  # no | fp16 | bf16 (CUDA only; fp32 runs on CPU, with a warning)
    gradient_checkpointing: bool = False  # U-Net activation checkpointing (CUDA; slower on CPU)
    out_dir: str = "runs/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, schema=Config):
    """Return a typed OmegaConf config: schema defaults, then the YAML file, then `key=value` overrides.

    Unknown keys and wrongly typed values raise ConfigError naming the key and the file.
    """
    cfg = OmegaConf.structured(schema)
    source = "defaults"
    try:
        if path is not None:
            source = str(path)
            if not Path(path).is_file():
                raise ConfigError(
                    f"{path}: config file not found (pass a YAML file from experiments/configs/)"
                )
            cfg = OmegaConf.merge(cfg, *load_yaml_chain(Path(path)))
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


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg)
