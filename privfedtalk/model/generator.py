"""The talking-head generator: VAE latent space + reference- and audio-conditioned U-Net denoiser.

Shapes: frames are (frames, height, width, 3) uint8 or float in [0, 1]; latents are
(frames, latent_channels, height/f, width/f) already multiplied by the VAE scaling factor; audio
features are (frames, tokens, n_mels) log-mel windows centred on each video frame.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from privfedtalk.config import Choice
from privfedtalk.errors import PrivFedTalkError
from privfedtalk.model.tdc import tdc_loss


class FrameNoise(Choice):
    """The initial noise of DDIM sampling across a video's frames."""

    shared = "shared"  # one draw for every frame: frames differ only where the audio asks them to
    # one draw per frame: frames also differ by their noise, so the video flickers unless the model
    # has learnt to keep consecutive frames consistent (what TDC trains for)
    independent = "independent"


@dataclass
class GeneratorSpec:
    """Everything needed to rebuild the generator's shapes (saved as generator.json)."""

    size: int = 64
    fps: float = 25.0
    sample_rate: int = 16000
    n_mels: int = 32
    hop_ms: float = 10.0
    window_ms: float = 200.0
    audio_dim: int = 64
    prediction_type: str = "v_prediction"
    sample_steps: int = 20
    guidance_scale: float = 1.0
    anchor_decode: bool = True

    @property
    def audio_tokens(self) -> int:
        return int(round(self.window_ms / self.hop_ms))


class AudioEncoder(nn.Module):
    """Per-frame log-mel window (batch, tokens, n_mels) -> cross-attention tokens and a pooled vector.

    The pooled vector keeps the time order (flatten, not mean) so that the loudness at the window's
    centre, which drives the mouth, is not averaged away.
    """

    def __init__(self, n_mels: int, tokens: int, dim: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(n_mels, dim, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Conv1d(dim, dim, kernel_size=3, padding=1),
            nn.SiLU(),
        )
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))
        self.to_tokens = nn.Linear(dim, dim)
        self.to_pooled = nn.Linear(dim * tokens, dim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.convs(features.transpose(1, 2)).transpose(1, 2)  # (batch, tokens, dim)
        tokens = self.to_tokens(hidden + self.position)
        pooled = self.to_pooled(hidden.flatten(1))
        return tokens, pooled


def build_vae(vae_cfg, size: int) -> AutoencoderKL:
    levels = len(vae_cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(vae_cfg.block_out_channels),
        layers_per_block=vae_cfg.layers_per_block,
        latent_channels=vae_cfg.latent_channels,
        norm_num_groups=min(32, min(vae_cfg.block_out_channels) // 2),
        sample_size=size,
    )


def build_unet(unet_cfg, latent_channels: int, latent_size: int) -> UNet2DConditionModel:
    levels = len(unet_cfg.block_out_channels)
    # Self-attention at the full latent resolution dominates CPU time; cross-attention to the
    # audio tokens happens at the lower levels and in the mid block, and the pooled audio vector
    # reaches every resnet through the class embedding.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=2 * latent_channels,  # noisy latent ++ reference latent
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(unet_cfg.block_out_channels),
        layers_per_block=unet_cfg.layers_per_block,
        cross_attention_dim=unet_cfg.cross_attention_dim,
        attention_head_dim=unet_cfg.attention_head_dim,
        norm_num_groups=min(32, min(unet_cfg.block_out_channels) // 2),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=unet_cfg.audio_tokens_dim,
    )


def build_scheduler(diffusion_cfg) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=diffusion_cfg.num_train_timesteps,
        beta_schedule=diffusion_cfg.beta_schedule,
        prediction_type=diffusion_cfg.prediction_type,
        clip_sample=False,
        timestep_spacing="trailing",
        # Zero terminal SNR: the first sampling step sees pure noise, as in training.
        rescale_betas_zero_snr=diffusion_cfg.prediction_type == "v_prediction",
    )


def to_unit_float(frames) -> torch.Tensor:
    """uint8 or float (frames, H, W, 3) -> float tensor (frames, 3, H, W) in [-1, 1]."""
    if isinstance(frames, torch.Tensor):
        tensor = frames
    else:
        tensor = torch.from_numpy(np.array(frames))  # a copy: decoded frames may be read-only
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    return tensor.float().permute(0, 3, 1, 2) * 2.0 - 1.0


class TalkingHeadGenerator(nn.Module):
    """VAE + AudioEncoder + U-Net + noise scheduler, with training loss and DDIM sampling."""

    def __init__(self, vae, unet, audio_encoder, scheduler, spec: GeneratorSpec):
        super().__init__()
        self.vae = vae
        self.unet = unet
        self.audio_encoder = audio_encoder
        self.scheduler = scheduler
        self.spec = spec

    # -- construction and persistence -------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg) -> TalkingHeadGenerator:
        """Fresh generator from a full Config (model + data sections)."""
        model, data = cfg.model, cfg.data
        if model.vae.pretrained:
            vae = load_pretrained(AutoencoderKL, model.vae.pretrained, "model.vae.pretrained")
        else:
            vae = build_vae(model.vae, data.size)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        unet = build_unet(model.unet, vae.config.latent_channels, data.size // factor)
        spec = GeneratorSpec(
            size=data.size,
            fps=data.fps,
            sample_rate=data.audio.sample_rate,
            n_mels=data.audio.n_mels,
            hop_ms=data.audio.hop_ms,
            window_ms=data.audio.window_ms,
            audio_dim=model.unet.audio_tokens_dim,
            prediction_type=model.diffusion.prediction_type,
            sample_steps=model.diffusion.sample_steps,
            guidance_scale=model.diffusion.guidance_scale,
            anchor_decode=model.anchor_decode,
        )
        if model.unet.cross_attention_dim != model.unet.audio_tokens_dim:
            raise PrivFedTalkError(
                "model.unet.cross_attention_dim must equal model.unet.audio_tokens_dim "
                f"(got {model.unet.cross_attention_dim} and {model.unet.audio_tokens_dim}); "
                "set both to one value"
            )
        audio = AudioEncoder(spec.n_mels, spec.audio_tokens, spec.audio_dim)
        return cls(vae, unet, audio, build_scheduler(model.diffusion), spec)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(directory / "vae")
        self.unet.save_pretrained(directory / "unet")
        self.scheduler.save_pretrained(directory / "scheduler")
        state = {k: v.detach().cpu().contiguous() for k, v in self.audio_encoder.state_dict().items()}
        save_file(state, str(directory / "audio_encoder.safetensors"))
        (directory / "generator.json").write_text(json.dumps(asdict(self.spec), indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TalkingHeadGenerator:
        directory = Path(directory)
        spec_file = directory / "generator.json"
        if not spec_file.is_file():
            raise PrivFedTalkError(
                f"{directory}: not a generator checkpoint "
                "(no generator.json; run `privfedtalk pretrain` first)"
            )
        spec = GeneratorSpec(**json.loads(spec_file.read_text()))
        vae = load_pretrained(AutoencoderKL, directory / "vae", "checkpoint vae")
        unet = load_pretrained(UNet2DConditionModel, directory / "unet", "checkpoint unet")
        scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
        audio = AudioEncoder(spec.n_mels, spec.audio_tokens, spec.audio_dim)
        audio.load_state_dict(load_file(str(directory / "audio_encoder.safetensors")))
        return cls(vae, unet, audio, scheduler, spec)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- latent space ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_frames(self, frames, batch_size: int = 64) -> torch.Tensor:
        """(frames, H, W, 3) -> scaled latents (frames, C, h, w), using the posterior mean."""
        pixels = to_unit_float(frames)
        out = []
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start : start + batch_size].to(self.device)
            out.append(self.vae.encode(chunk).latent_dist.mean * self.vae.config.scaling_factor)
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Scaled latents (frames, C, h, w) -> uint8 frames (frames, H, W, 3)."""
        out = []
        for start in range(0, len(latents), batch_size):
            chunk = latents[start : start + batch_size].to(self.device) / self.vae.config.scaling_factor
            pixels = self.vae.decode(chunk).sample.float().clamp(-1, 1)
            out.append(((pixels + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu())
        return torch.cat(out).numpy()

    # -- denoiser ----------------------------------------------------------------------------------
    def denoise(self, noisy, timesteps, reference, audio_features, keep_audio=None) -> torch.Tensor:
        """U-Net output for noisy latents (batch, C, h, w) given reference latents and audio windows.

        keep_audio (batch,) of 0/1 drops the audio condition (classifier-free guidance training).
        """
        tokens, pooled = self.audio_encoder(audio_features)
        if keep_audio is not None:
            tokens = tokens * keep_audio.view(-1, 1, 1)
            pooled = pooled * keep_audio.view(-1, 1)
        sample = torch.cat([noisy, reference], dim=1)
        return self.unet(sample, timesteps, encoder_hidden_states=tokens, class_labels=pooled).sample

    def _target(self, latents, noise, timesteps):
        if self.scheduler.config.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def _predicted_x0(self, noisy, output, timesteps):
        alphas = self.scheduler.alphas_cumprod.to(noisy.device)[timesteps].view(-1, 1, 1, 1)
        if self.scheduler.config.prediction_type == "v_prediction":
            return alphas.sqrt() * noisy - (1 - alphas).sqrt() * output
        return (noisy - (1 - alphas).sqrt() * output) / alphas.sqrt().clamp(min=1e-4)

    def loss(
        self,
        latents: torch.Tensor,
        reference: torch.Tensor,
        audio_features: torch.Tensor,
        generator: torch.Generator,
        lambda_tdc: float = 0.0,
        tdc_space: str = "noise",
        condition_dropout: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Diffusion loss on windows of consecutive frames, plus the optional TDC term.

        latents (batch, window, C, h, w); reference (batch, C, h, w); audio_features
        (batch, window, tokens, n_mels). All frames of a window share one timestep so that the
        temporal-denoising-consistency term compares like with like.
        """
        batch, window = latents.shape[:2]
        draws = self.draw_loss_noise(latents, generator, condition_dropout)
        inputs = self.noised_inputs(latents, reference, audio_features, draws)
        output = self.denoise(*inputs)
        return self.loss_terms(output, latents, inputs[0], draws, lambda_tdc, tdc_space)

    def draw_loss_noise(self, latents: torch.Tensor, generator: torch.Generator, condition_dropout: float):
        """The loss's random draws for windows latents (batch, window, ...), in the generator's order.

        Returns (t, noise, keep) on latents' device: t (batch * window,) one timestep per window,
        noise like the flattened latents, keep (batch * window,) 0/1 or None without dropout.
        Batched clients (federated/batched.py) draw each client's share with its own generator.
        """
        batch, window = latents.shape[:2]
        device = latents.device
        steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (batch,), generator=generator, device="cpu").to(device)
        t = t.repeat_interleave(window)
        noise = torch.randn(latents.flatten(0, 1).shape, generator=generator, device="cpu").to(device)
        keep = None
        if condition_dropout > 0:
            keep = (torch.rand(batch, generator=generator) >= condition_dropout).float()
            keep = keep.repeat_interleave(window).to(device)
        return t, noise, keep

    def noised_inputs(self, latents, reference, audio_features, draws) -> tuple:
        """The denoiser's arguments (noisy, t, reference, audio, keep), one row per frame."""
        t, noise, keep = draws
        window = latents.shape[1]
        noisy = self.scheduler.add_noise(latents.flatten(0, 1), noise, t)
        ref = reference.repeat_interleave(window, dim=0)
        return noisy, t, ref, audio_features.flatten(0, 1), keep

    def loss_terms(self, output, latents, noisy, draws, lambda_tdc: float, tdc_space: str) -> dict:
        """Diffusion loss and the optional TDC term of one batch of windows from the U-Net output."""
        t, noise, _ = draws
        batch, window = latents.shape[:2]
        flat = latents.flatten(0, 1)
        target = self._target(flat, noise, t)
        diffusion = F.mse_loss(output.float(), target.float())
        result = {"diffusion": diffusion}
        total = diffusion
        if lambda_tdc > 0 and window > 1:
            if tdc_space == "x0":
                pred = self._predicted_x0(noisy, output, t)
                true = flat
            else:
                pred, true = output, target
            shape = (batch, window) + flat.shape[1:]
            tdc = tdc_loss(pred.view(shape), true.view(shape))
            result["tdc"] = tdc
            total = total + lambda_tdc * tdc
        result["total"] = total
        return result

    # -- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        reference: torch.Tensor,
        audio_features: torch.Tensor,
        generator: torch.Generator,
        steps: int | None = None,
        guidance_scale: float | None = None,
        batch_size: int = 64,
        frame_noise: FrameNoise | str = FrameNoise.shared,
    ) -> torch.Tensor:
        """DDIM sampling of one latent per audio frame (frames, tokens, n_mels) from one reference
        latent (C, h, w); returns (frames, C, h, w).

        frame_noise "shared" (default): the same initial noise for every frame, so frames differ only
        where the audio asks them to, which keeps the video from flickering. "independent": each frame
        draws its own noise (all drawn up front, so batch_size does not change them): the sampler the
        benchmark's flicker rows use to show what temporal consistency the model itself has learnt.
        """
        try:
            frame_noise = FrameNoise(frame_noise)
        except ValueError:
            choices = ", ".join(f.value for f in FrameNoise)
            raise PrivFedTalkError(f"frame_noise={frame_noise!r}: choose one of {choices}") from None
        steps = steps or self.spec.sample_steps
        guidance = self.spec.guidance_scale if guidance_scale is None else guidance_scale
        ddim = DDIMScheduler.from_config(self.scheduler.config)
        ddim.set_timesteps(steps)
        device = self.device
        frames = audio_features.shape[0]
        draws = 1 if frame_noise is FrameNoise.shared else frames
        initial = torch.randn((draws,) + tuple(reference.shape), generator=generator)
        outputs = []
        for start in range(0, frames, batch_size):
            audio = audio_features[start : start + batch_size].to(device)
            n = audio.shape[0]
            if frame_noise is FrameNoise.shared:
                latent = initial.expand(n, -1, -1, -1).clone().to(device)
            else:
                latent = initial[start : start + n].clone().to(device)
            ref = reference.unsqueeze(0).expand(n, -1, -1, -1).to(device)
            for t in ddim.timesteps:
                t_batch = torch.full((n,), int(t), device=device, dtype=torch.long)
                out = self.denoise(latent, t_batch, ref, audio)
                if guidance != 1.0:
                    uncond = self.denoise(
                        latent, t_batch, ref, audio, keep_audio=torch.zeros(n, device=device)
                    )
                    out = uncond + guidance * (out - uncond)
                latent = ddim.step(out, t, latent).prev_sample
            outputs.append(latent.float().cpu())
        return torch.cat(outputs)

    def generate(
        self, reference_frame, audio_features, seed: int = 0, anchor: bool | None = None, **kwargs
    ) -> np.ndarray:
        """uint8 reference frame (H, W, 3) + features (frames, tokens, n_mels) -> uint8 video.

        With reference-anchored decoding (spec.anchor_decode), frame t is
        reference + D(z_t) − D(z_ref): the VAE decodes only what changed relative to the reference,
        so parts the model leaves unchanged keep the reference's exact pixels instead of the
        VAE's reconstruction error.
        """
        return self.generate_many(reference_frame, [audio_features], seed, anchor, **kwargs)[0]

    def generate_many(
        self, reference_frame, drives: list, seed: int = 0, anchor: bool | None = None, **kwargs
    ) -> list[np.ndarray]:
        """One reference frame driven by several feature sequences (each (frames, tokens, n_mels)) in
        one sampling pass; the same videos as `generate` on each with this seed, since every frame
        starts from the same seeded noise and is denoised on its own (batch composition only).
        With frame_noise="independent" the drives' frames draw their noise in turn from one seeded
        generator: the first drive's video is `generate`'s, the others' start from other noise."""
        reference_frame = np.asarray(reference_frame)
        reference = self.encode_frames(reference_frame[None])[0]
        features = torch.cat([torch.as_tensor(np.asarray(d), dtype=torch.float32) for d in drives])
        generator = torch.Generator().manual_seed(seed)
        # With shared noise a frame's latent depends only on its audio window, so frames with equal
        # windows (silence, a held sound) are sampled and decoded once.
        shared = kwargs.get("frame_noise", FrameNoise.shared) in (FrameNoise.shared, FrameNoise.shared.value)
        kept, index = distinct_rows(features) if shared else (slice(None), slice(None))
        # Half precision at inference on CUDA (the denoiser dominates); fp32 on CPU.
        half = torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda")
        with half:
            latents = self.sample(reference, features[kept], generator, **kwargs)
        decoded = self.decode_latents(latents)[index]
        if self.spec.anchor_decode if anchor is None else anchor:
            base = self.decode_latents(reference[None])[0].astype(np.int16)
            change = decoded.astype(np.int16) - base
            decoded = np.clip(reference_frame.astype(np.int16)[None] + change, 0, 255).astype(np.uint8)
        ends = np.cumsum([len(d) for d in drives])[:-1]
        return np.split(decoded, ends)


def distinct_rows(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(kept, index): the first row of each distinct value of x (batch, ...) in their original order,
    and for every row the position of its value in x[kept], so that x[kept][index] equals x."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, inverse = torch.unique(x.flatten(1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(x), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(x)), reduce="amin")
    order = first.argsort()
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    return first[order].numpy(), position[inverse].numpy()


def load_pretrained(model_class, folder, what: str):
    """from_pretrained on a local folder with a one-line error instead of a hub lookup."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrivFedTalkError(f"{folder}: {what} folder not found (point it at a local diffusers folder)")
    try:
        return model_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise PrivFedTalkError(f"{folder}: cannot load {what}: {str(err).splitlines()[0]}") from None
