"""Backbone pretraining on the public identities: VAE, identity encoder, audio encoder + U-Net."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from omegaconf import OmegaConf
from tqdm import tqdm

from privfedtalk.data.corpus import LoadReport, list_identities, load_identity, read_split
from privfedtalk.errors import MediaError, PrivFedTalkError
from privfedtalk.model.generator import TalkingHeadGenerator, to_unit_float
from privfedtalk.model.identity import train_identity_encoder
from privfedtalk.model.latents import cache_latents, sample_windows
from privfedtalk.runtime import (
    Precision,
    enable_gradient_checkpointing,
    peak_memory_mb,
    resolve_device,
    setup_torch,
)

log = logging.getLogger("privfedtalk")


def public_identities(root: str | Path) -> list[str]:
    """Identities reserved for backbone pretraining (split.json 'public'); clients never see them."""
    split = read_split(root)
    if split is None:
        raise PrivFedTalkError(
            f"{root}: no split.json (write one with 'public' and 'private' identity lists, "
            "or generate data with `privfedtalk synth`)"
        )
    return list(split["public"])


def load_identities(root, identities, audio_cfg, size, report: LoadReport) -> list:
    clips = []
    for identity in identities:
        try:
            clips.extend(load_identity(root, identity, audio_cfg, size=size, report=report))
        except MediaError as err:
            log.warning("%s", err)
            report.add_skip(err.path, err.reason)
    return clips


def train_vae(vae, clips, vae_cfg, seed: int, writer=None, precision: Precision | None = None) -> None:
    """Reconstruction + small KL on random frames; then set the latent scaling factor to 1/std."""
    frames = torch.as_tensor(np.concatenate([clip.frames for clip in clips]))
    generator = torch.Generator().manual_seed(seed)
    precision = precision or Precision(next(vae.parameters()).device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=vae_cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, vae_cfg.steps)
    vae.train()
    bar = tqdm(range(vae_cfg.steps), desc="vae", leave=False)
    for step in bar:
        pick = torch.randint(0, len(frames), (vae_cfg.batch_size,), generator=generator)
        pixels = to_unit_float(frames[pick]).to(next(vae.parameters()).device)
        with precision.autocast():
            posterior = vae.encode(pixels).latent_dist
            recon = vae.decode(posterior.sample(generator=generator)).sample.float()
        rec_loss = F.mse_loss(recon, pixels) + 0.5 * F.l1_loss(recon, pixels)
        kl = posterior.kl().float().mean() / pixels[0].numel()
        loss = rec_loss + vae_cfg.kl_weight * kl
        precision.step(loss, optimizer, vae.parameters(), max_norm=None)
        schedule.step()
        bar.set_postfix(loss=f"{rec_loss.item():.4f}")
        if writer is not None and step % 20 == 0:
            writer.add_scalar("pretrain/vae_loss", rec_loss.item(), step)
    vae.eval()
    with torch.no_grad():
        pick = torch.randint(0, len(frames), (min(256, len(frames)),), generator=generator)
        pixels = to_unit_float(frames[pick]).to(next(vae.parameters()).device)
        std = float(vae.encode(pixels).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))


def train_denoiser(
    model: TalkingHeadGenerator, latent_clips, cfg, writer=None, precision=None
) -> list[float]:
    unet_cfg = cfg.model.unet
    params = list(model.unet.parameters()) + list(model.audio_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=unet_cfg.lr, weight_decay=0.0)
    warmup = max(1, unet_cfg.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / unet_cfg.steps))),
    )
    precision = precision or Precision(model.device)
    ema = EMAModel(params, decay=unet_cfg.ema_decay) if unet_cfg.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    model.unet.train()
    model.audio_encoder.train()
    losses = []
    bar = tqdm(range(unet_cfg.steps), desc="unet", leave=False)
    device = model.device
    window = unet_cfg.window or cfg.data.window
    for step in bar:
        latents, reference, audio = sample_windows(latent_clips, unet_cfg.batch_windows, window, generator)
        with precision.autocast():
            out = model.loss(
                latents.to(device),
                reference.to(device),
                audio.to(device),
                generator,
                condition_dropout=cfg.model.diffusion.condition_dropout,
            )
        precision.step(out["total"], optimizer, params)
        schedule.step()
        if ema is not None:
            ema.step(params)
        losses.append(out["diffusion"].item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if writer is not None and step % 20 == 0:
            writer.add_scalar("pretrain/diffusion_loss", float(np.mean(losses[-20:])), step)
    if ema is not None:
        ema.copy_to(params)
    model.unet.eval()
    model.audio_encoder.eval()
    return losses


def pretrain(cfg) -> Path:
    """Train the backbone on the public identities and write `out_dir/checkpoint`."""
    from torch.utils.tensorboard import SummaryWriter

    setup_torch(cfg.threads)
    torch.manual_seed(cfg.seed)  # layer initialisation uses the global generator
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    writer = SummaryWriter(str(out / "tensorboard"))
    started = time.perf_counter()

    identities = public_identities(cfg.data.root)
    missing = sorted(set(identities) - set(list_identities(cfg.data.root)))
    if missing:
        raise PrivFedTalkError(f"{cfg.data.root}: split.json names missing identity folders {missing}")
    report = LoadReport()
    clips = load_identities(cfg.data.root, identities, cfg.data.audio, cfg.data.size, report)
    log.info("public data: %s", report.summary())
    if not clips:
        raise PrivFedTalkError(f"{cfg.data.root}: no usable public clips ({report.summary()})")

    model = TalkingHeadGenerator.from_config(cfg).to(device)
    precision = Precision(device, cfg.mixed_precision)
    enable_gradient_checkpointing(model.unet, cfg.gradient_checkpointing, device)
    timings = {}
    if not cfg.model.vae.pretrained:
        t0 = time.perf_counter()
        train_vae(model.vae, clips, cfg.model.vae, cfg.seed, writer, precision)
        timings["vae_s"] = time.perf_counter() - t0
    model.vae.requires_grad_(False)

    t0 = time.perf_counter()
    by_identity = {}
    for clip in clips:
        by_identity.setdefault(clip.identity, []).append(clip.frames)
    encoder = train_identity_encoder(
        [np.concatenate(v) for v in by_identity.values()], steps=cfg.model.identity_steps, seed=cfg.seed
    )
    timings["identity_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    latent_clips = cache_latents(model, clips)
    timings["latent_cache_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = train_denoiser(model, latent_clips, cfg, writer, precision)
    timings["unet_s"] = time.perf_counter() - t0

    checkpoint = out / "checkpoint"
    model.save_pretrained(checkpoint)
    encoder.save(checkpoint)
    sample = model.generate(clips[0].frames[0], clips[0].features[:8], seed=cfg.seed)
    writer.add_images("pretrain/sample", torch.as_tensor(sample).permute(0, 3, 1, 2), 0)
    writer.close()
    timings["total_s"] = time.perf_counter() - started
    (out / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
    log.info(
        "pretrained on %d public clips in %.0f s (final diffusion loss %.4f, peak memory %.0f MiB) -> %s",
        len(clips),
        timings["total_s"],
        float(np.mean(losses[-50:])),
        peak_memory_mb(device),
        checkpoint,
    )
    return checkpoint
