"""Models that leave the project: a federated run (+ one client) written as a diffusers-style folder
that plain diffusers + peft can load, with a model card; and the loader `generate --model` uses.

Folder layout (every tensor file is safetensors):
  vae/, unet/, scheduler/          diffusers `save_pretrained` folders (unet/ holds the merged weights
                                   with --merge, else the pretrained backbone's)
  unet_shared_adapter/             the federated shared LoRA as a peft adapter (absent with --merge)
  identity_adapter/                the exported client's identity LoRA as a peft adapter (with --client)
  audio_encoder/                   config.json + model.safetensors
  generator.json                   sampling and conditioning settings (privfedtalk GeneratorSpec)
  export.json                      what this folder holds (format version, merged, adapters, rounds)
  README.md                        model card: training summary, rounds, ε per adversary
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from privfedtalk.errors import PrivFedTalkError
from privfedtalk.federated.store import ClientStore, RunFolder
from privfedtalk.model import adapters

FORMAT_VERSION = 1
SHARED_ADAPTER_DIR = "unet_shared_adapter"
IDENTITY_ADAPTER_DIR = "identity_adapter"
AUDIO_ENCODER_DIR = "audio_encoder"
MANIFEST = "export.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# PeftModel.save_pretrained writes keys relative to the PeftModel wrapper; a bare U-Net with injected
# adapters has none, so the prefix is added on export and removed when loading back in place.
PEFT_PREFIX = "base_model.model."


class ExportError(PrivFedTalkError):
    """A model cannot be exported or read back; the message names the path and the fix."""


# ------------------------------------------------------------------------------------------ checks


def check_run(run: str | Path) -> RunFolder:
    folder = RunFolder(run)
    if not folder.exists():
        raise ExportError(
            f"{run}: no run with a completed round (check the path, or train first with `privfedtalk train`)"
        )
    return folder


def check_client(run: str | Path, client: str | None, cfg) -> None:
    if client is None:
        return
    if cfg.federated.identity.rank <= 0:
        raise ExportError(
            f"{run}: this run trains no identity adapter (federated.identity.rank=0); drop --client"
        )
    if not ClientStore(run).has_identity(client):
        raise ExportError(
            f"{run}: unknown client {client!r} (no identity adapter under {Path(run) / 'clients'}; "
            "give a client that took part in a completed round)"
        )


def check_output_folder(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty folder (give a new --out, or remove it)")
    return out


# ------------------------------------------------------------------------------------- U-Net parts


def adapter_folder_state(unet, adapter: str) -> dict[str, torch.Tensor]:
    """One adapter's weights keyed as `PeftModel.save_pretrained` keys them."""
    return {PEFT_PREFIX + key: value for key, value in adapters.adapter_state(unet, adapter).items()}


def write_peft_adapter(folder: Path, state: dict[str, torch.Tensor], config: LoraConfig) -> None:
    """adapter_config.json + adapter_model.safetensors, loadable by `PeftModel.from_pretrained`."""
    folder.mkdir(parents=True)
    config.save_pretrained(str(folder))
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def strip_adapters(unet, merge: str | None = None):
    """Replace every LoRA layer by its base layer, first merging the adapter `merge` into it.

    Same as peft's `merge_and_unload(adapter_names=[merge])` (or `unload()` without merge), done on
    a bare diffusers U-Net, which has no LoraModel wrapper to call it on. Adapters not merged
    (the identity adapter) are dropped. Returns the same U-Net, now a plain diffusers model.
    """
    tuner_layers = [(name, m) for name, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in tuner_layers:
        if merge is not None and merge in layer.lora_A:
            layer.merge(adapter_names=[merge])
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, layer.get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config
    unet._hf_peft_config_loaded = False
    return unet


# ------------------------------------------------------------------------------------ model card


def identity_count(cfg, run: str | Path) -> tuple[int, str]:
    """How many private identities trained the model, and how that number is known (never their names)."""
    from privfedtalk.federated.clients import register_clients

    try:
        specs = register_clients(cfg)
        return sum(len(spec.identities) for spec in specs), f"{len(specs)} clients registered"
    except PrivFedTalkError:
        slots = [p for p in ClientStore(run).root.glob("*") if (p / "identity_adapter.safetensors").is_file()]
        return len(slots), "counted from the clients that trained (the corpus was not found)"


def final_record(folder: RunFolder, completed: int) -> dict:
    """The metrics record of the last completed round ({} if none was logged)."""
    records = [r for r in folder.records() if r.get("round", 0) <= completed]
    return records[-1] if records else {}


def privacy_lines(cfg, record: dict) -> list[str]:
    privacy = cfg.privacy
    lines = [
        f"- guarantee: {record.get('guarantee', 'none (DP off)' if not privacy.dp else 'unknown')}",
        f"- secure aggregation: {privacy.secure_aggregation}",
    ]
    if not privacy.dp:
        lines.append("- differential privacy: off (ε = ∞: no formal guarantee for the training data)")
        return lines
    lines += [
        f"- client-level DP at δ = {privacy.delta:g}, accountant {privacy.accountant.value}, "
        f"noise {privacy.noise.value}, clipping {privacy.clip.value} (C = {privacy.clip_norm:g} initially)",
        f"- noise multiplier z: {record.get('noise_multiplier', privacy.noise_multiplier)}",
    ]
    for key, label in (
        ("epsilon_observer", "ε against an observer of the released model"),
        ("epsilon_server_worst", "ε against the server, worst client"),
        ("epsilon_server_median", "ε against the server, median client"),
    ):
        value = record.get(key)
        text = "not recorded" if value is None else f"{value:.6g}"
        if value is not None and math.isinf(value) and key.startswith("epsilon_server"):
            text += " (no guarantee against this adversary: it sees updates before the noise)"
        lines.append(f"- {label} (`{key}`): {text}")
    return lines


def model_card(cfg, run, completed: int, record: dict, client: str | None, merged: bool) -> str:
    fed = cfg.federated
    identities, how = identity_count(cfg, run)
    shared = f"rank {fed.shared.rank}, alpha {fed.shared.alpha:g}, on {', '.join(fed.shared.target_modules)}"
    identity = (
        f"rank {fed.identity.rank}, alpha {fed.identity.alpha:g}, on {', '.join(fed.identity.target_modules)}"
    )
    unet_text = (
        "the pretrained U-Net with the shared adapter merged in"
        if merged
        else f"the pretrained U-Net; the shared adapter is in `{SHARED_ADAPTER_DIR}/`"
    )
    if fed.federate.value == "unet":
        unet_text = "the federated U-Net (the whole backbone was aggregated; no shared adapter)"
    lines = [
        "# PrivFedTalk talking-head generator",
        "",
        "Audio-driven talking-head latent diffusion (diffusers AutoencoderKL + UNet2DConditionModel, "
        "peft LoRA), trained with federated learning by PrivFedTalk.",
        "",
        "## Contents",
        "",
        f"- `unet/`: {unet_text}",
        f"- `{IDENTITY_ADAPTER_DIR}/`: identity adapter of client `{client}` ({identity})"
        if client
        else "- no identity adapter (the global model, not personalized)",
        "- `vae/`, `scheduler/`, `audio_encoder/`, `generator.json` (sampling and reference conditioning)",
        "- run it: `privfedtalk generate --model THIS_FOLDER --reference face.png --audio speech.wav "
        "--out talking.mp4`",
        "",
        "## Training",
        "",
        f"- completed rounds: {completed} of {fed.rounds}",
        f"- method: {fed.method.value}, federated part: {fed.federate.value}, shared adapter: {shared}",
        f"- clients per round: {fed.clients_per_round} ({fed.sampling.value} sampling), "
        f"local steps: {fed.local_steps}, client lr: {fed.lr:g}",
        f"- server optimizer: {fed.server_optimizer.value} (lr {fed.server_lr:g}); FedProx μ: {fed.mu:g}; "
        f"TDC weight: {fed.lambda_tdc:g}",
        f"- frames: {cfg.data.size}x{cfg.data.size} at {cfg.data.fps:g} fps; seed {cfg.seed}",
        "",
        "## Training data",
        "",
        f"- {identities} private identities ({how}); the backbone was pretrained on public identities only.",
        "",
        "## Privacy",
        "",
        *privacy_lines(cfg, record),
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- export


def write_audio_encoder(model, folder: Path) -> None:
    folder.mkdir(parents=True)
    spec = model.spec
    config = {"n_mels": spec.n_mels, "tokens": spec.audio_tokens, "dim": spec.audio_dim}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.audio_encoder.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def export_model(run: str | Path, out: str | Path, client: str | None = None, merge: bool = False) -> Path:
    """Write the run's model (+ one client's identity adapter) to `out`; returns `out`.

    Written into a sibling temp folder and renamed at the end: a failed export leaves nothing at `out`.
    """
    from privfedtalk.federated.models import load_personalized_model

    folder = check_run(run)
    out = check_output_folder(out)
    cfg = folder.load_config()
    check_client(run, client, cfg)
    completed = folder.completed_rounds()
    model, _ = load_personalized_model(run, client)
    model = model.to("cpu")
    has_shared = adapters.SHARED in getattr(model.unet, "peft_config", {})

    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        model.vae.save_pretrained(staging / "vae")
        model.scheduler.save_pretrained(staging / "scheduler")
        write_audio_encoder(model, staging / AUDIO_ENCODER_DIR)
        (staging / "generator.json").write_text(json.dumps(asdict(model.spec), indent=2))
        if has_shared and not merge:
            shared = adapter_folder_state(model.unet, adapters.SHARED)
            write_peft_adapter(
                staging / SHARED_ADAPTER_DIR, shared, adapters.lora_config(cfg.federated.shared)
            )
        if client is not None:
            identity = adapter_folder_state(model.unet, adapters.IDENTITY)
            write_peft_adapter(
                staging / IDENTITY_ADAPTER_DIR, identity, adapters.lora_config(cfg.federated.identity)
            )
        unet = strip_adapters(model.unet, merge=adapters.SHARED if merge and has_shared else None)
        unet.save_pretrained(staging / "unet")
        manifest = {
            "format": "privfedtalk-export",
            "version": FORMAT_VERSION,
            "merged": bool(merge and has_shared),
            "shared_adapter": SHARED_ADAPTER_DIR if has_shared and not merge else None,
            "identity_adapter": IDENTITY_ADAPTER_DIR if client is not None else None,
            "completed_rounds": completed,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        record = final_record(folder, completed)
        (staging / "README.md").write_text(
            model_card(cfg, run, completed, record, client, manifest["merged"])
        )
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# -------------------------------------------------------------------------------------------- import


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise ExportError(
            f"{directory}: not an exported model (no {MANIFEST}; write one with `privfedtalk export`)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise ExportError(
            f"{path}: export format {manifest.get('version')} is newer than this privfedtalk reads "
            f"({FORMAT_VERSION}); upgrade privfedtalk"
        )
    return manifest


def attach_peft_adapter(unet, folder: Path, adapter: str) -> None:
    """Inject a saved peft adapter folder into a bare U-Net, as `adapters.attach_adapters` does."""
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ExportError(
            f"{folder}: adapter folder incomplete (no {ADAPTER_WEIGHTS}); export the model again"
        )
    unet.add_adapter(LoraConfig.from_pretrained(str(folder)), adapter_name=adapter)
    state = {
        key.removeprefix(PEFT_PREFIX): value
        for key, value in load_file(str(folder / ADAPTER_WEIGHTS)).items()
    }
    adapters.load_adapter_state(unet, adapter, state)


def load_audio_encoder(folder: Path):
    from privfedtalk.model.generator import AudioEncoder

    config = json.loads((folder / "config.json").read_text())
    encoder = AudioEncoder(config["n_mels"], config["tokens"], config["dim"])
    encoder.load_state_dict(load_file(str(folder / "model.safetensors")))
    return encoder


def load_exported_model(directory: str | Path, device: str = "auto"):
    """A `TalkingHeadGenerator` from an exported folder, adapters active, in eval mode."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from privfedtalk.model.generator import GeneratorSpec, TalkingHeadGenerator, load_pretrained
    from privfedtalk.runtime import resolve_device

    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: model folder not found (write one with `privfedtalk export`)")
    manifest = read_manifest(directory)
    spec = GeneratorSpec(**json.loads((directory / "generator.json").read_text()))
    vae = load_pretrained(AutoencoderKL, directory / "vae", "exported vae")
    unet = load_pretrained(UNet2DConditionModel, directory / "unet", "exported unet")
    scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
    names = []
    for key, adapter in (("shared_adapter", adapters.SHARED), ("identity_adapter", adapters.IDENTITY)):
        if manifest.get(key):
            attach_peft_adapter(unet, directory / manifest[key], adapter)
            names.append(adapter)
    if names:
        unet.set_adapter(names)
    model = TalkingHeadGenerator(
        vae, unet, load_audio_encoder(directory / AUDIO_ENCODER_DIR), scheduler, spec
    )
    model.requires_grad_(False)
    return model.to(resolve_device(device)).eval()
