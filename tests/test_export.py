"""`privfedtalk export` and `generate --model`: the exported folder's files, a plain diffusers + peft load
that reproduces the project's personalized U-Net, merged = unmerged, the same video as generating from
the run, a model card with ε and no identity names, and one-line errors for bad inputs."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from diffusers import UNet2DConditionModel
from peft import PeftModel
from PIL import Image

from privfedtalk.cli import main
from privfedtalk.config import load_config
from privfedtalk.demo import QUICK
from privfedtalk.export import ExportError, export_model, load_exported_model
from privfedtalk.federated import simulation
from privfedtalk.federated.models import load_personalized_model
from privfedtalk.federated.store import RunFolder


@pytest.fixture(scope="module")
def dp_run(tiny_corpus, tiny_checkpoint, tmp_path_factory, tiny_base_overrides):
    """A 2-round DP run on the tiny corpus: both private identities train in every round."""
    out = tmp_path_factory.mktemp("export_run") / "run"
    cfg = load_config(
        None,
        tiny_base_overrides(tiny_corpus, out)
        + QUICK["federated"]
        + [
            f"federated.checkpoint={tiny_checkpoint}",
            "federated.clients_per_round=2",
            "privacy.dp=true",
            "privacy.noise=trusted",
            "privacy.noise_multiplier=1.0",
        ],
    )
    return simulation.train(cfg)


@pytest.fixture(scope="module")
def client(dp_run):
    return sorted(
        p.name for p in (dp_run / "clients").glob("*") if (p / "identity_adapter.safetensors").is_file()
    )[0]


@pytest.fixture(scope="module")
def exported(dp_run, client, tmp_path_factory):
    """The same run and client exported unmerged and merged."""
    root = tmp_path_factory.mktemp("exported")
    return {
        "plain": export_model(dp_run, root / "plain", client=client),
        "merged": export_model(dp_run, root / "merged", client=client, merge=True),
        "global": export_model(dp_run, root / "global"),
    }


def tree(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_exported_tree_holds_every_part(exported):
    common = {
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "audio_encoder/config.json",
        "audio_encoder/model.safetensors",
        "generator.json",
        "export.json",
        "README.md",
    }
    shared = {"unet_shared_adapter/adapter_config.json", "unet_shared_adapter/adapter_model.safetensors"}
    identity = {"identity_adapter/adapter_config.json", "identity_adapter/adapter_model.safetensors"}
    assert tree(exported["plain"]) == common | shared | identity
    assert tree(exported["merged"]) == common | identity
    assert tree(exported["global"]) == common | shared
    everything = [p for folder in exported.values() for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in everything if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]  # no pickle


def unet_inputs(unet, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    size = config.sample_size
    return dict(
        sample=torch.randn(2, config.in_channels, size, size, generator=generator),
        timestep=torch.tensor([700, 50]),
        encoder_hidden_states=torch.randn(2, 5, config.cross_attention_dim, generator=generator),
        class_labels=torch.randn(2, config.projection_class_embeddings_input_dim, generator=generator),
    )


@torch.no_grad()
def output(unet, inputs) -> torch.Tensor:
    return unet(**inputs).sample


def plain_peft_unet(folder, identity: bool):
    """What a user without privfedtalk does: diffusers U-Net + peft adapters, nothing else."""
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    if (folder / "unet_shared_adapter").is_dir():
        unet = PeftModel.from_pretrained(unet, folder / "unet_shared_adapter", adapter_name="shared")
        if identity:
            unet.load_adapter(folder / "identity_adapter", adapter_name="identity")
            unet.base_model.set_adapter(["shared", "identity"])
    elif identity:
        unet = PeftModel.from_pretrained(unet, folder / "identity_adapter", adapter_name="identity")
    return unet.eval()


def test_plain_peft_load_equals_personalized_model(dp_run, client, exported):
    personal, _ = load_personalized_model(dp_run, client)
    inputs = unet_inputs(personal.unet)
    expected = output(personal.unet, inputs)
    loaded = output(plain_peft_unet(exported["plain"], identity=True), inputs)
    assert loaded.shape == expected.shape
    torch.testing.assert_close(loaded, expected, rtol=0, atol=1e-5)
    # The adapters matter: the backbone alone answers differently, so the check can fail.
    backbone = UNet2DConditionModel.from_pretrained(exported["plain"] / "unet").eval()
    assert (output(backbone, inputs) - expected).abs().max() > 1e-4


def test_plain_peft_load_of_global_model_equals_run_without_client(dp_run, exported):
    plain, _ = load_personalized_model(dp_run, None)
    inputs = unet_inputs(plain.unet, seed=1)
    loaded = output(plain_peft_unet(exported["global"], identity=False), inputs)
    torch.testing.assert_close(loaded, output(plain.unet, inputs), rtol=0, atol=1e-5)


def test_merged_export_equals_unmerged(exported):
    inputs = unet_inputs(plain_peft_unet(exported["plain"], identity=False), seed=2)
    unmerged = output(plain_peft_unet(exported["plain"], identity=True), inputs)
    merged = output(plain_peft_unet(exported["merged"], identity=True), inputs)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    # The merge changed the stored weights: the two unet/ folders differ.
    a = UNet2DConditionModel.from_pretrained(exported["plain"] / "unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(exported["merged"] / "unet").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def drive_inputs(folder):
    wav, png = folder / "drive.wav", folder / "ref.png"
    t = np.arange(int(16000 * 0.4)) / 16000
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 180 * t) * (t > 0.15)).astype(np.float32), 16000)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(png)
    return ["--reference", str(png), "--audio", str(wav), "--seed", "5", "--steps", "2"]


def decoded_frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_generate_from_export_equals_generate_from_run(dp_run, client, exported, tmp_path):
    options = drive_inputs(tmp_path)
    from_run, from_model = tmp_path / "run.mp4", tmp_path / "model.mp4"
    assert main(["generate", "--run", str(dp_run), "--client", client, "--out", str(from_run), *options]) == 0
    assert main(["generate", "--model", str(exported["plain"]), "--out", str(from_model), *options]) == 0
    np.testing.assert_array_equal(decoded_frames(from_model), decoded_frames(from_run))
    # Frames themselves (before the lossy mp4): the exported model generates the same video.
    reference = np.asarray(Image.open(tmp_path / "ref.png"))
    features = np.random.default_rng(1).normal(size=(3, 20, 32)).astype(np.float32)
    personal, _ = load_personalized_model(dp_run, client)
    video = load_exported_model(exported["plain"], device="cpu").generate(
        reference, features, seed=5, steps=2
    )
    np.testing.assert_array_equal(video, personal.generate(reference, features, seed=5, steps=2))


def test_model_card_has_epsilons_and_no_identity_names(dp_run, client, exported, tiny_corpus):
    card = (exported["plain"] / "README.md").read_text()
    last = RunFolder(dp_run).records()[-1]
    for key in ("epsilon_observer", "epsilon_server_worst", "epsilon_server_median"):
        assert f"`{key}`): {last[key]:.6g}" in card
    assert "completed rounds: 2 of 2" in card
    assert "2 private identities" in card
    split = json.loads((tiny_corpus / "split.json").read_text())
    others = [p.name for p in (dp_run / "clients").glob("*") if p.name != client]
    assert others  # there is another client whose id must stay out
    for secret in split["private"] + others:
        assert secret not in card
    assert client in card
    global_card = (exported["global"] / "README.md").read_text()
    assert not [c for c in others + [client] if c in global_card]


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("privfedtalk: error: ") and "\n" not in err
    return err


def test_bad_inputs_give_one_line_errors(dp_run, exported, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert "no run with a completed round" in one_line_error(
        capsys, ["export", "--run", str(missing), "--out", str(tmp_path / "a")]
    )
    assert "unknown client 'client9999'" in one_line_error(
        capsys, ["export", "--run", str(dp_run), "--client", "client9999", "--out", str(tmp_path / "b")]
    )
    assert "not an empty folder" in one_line_error(
        capsys, ["export", "--run", str(dp_run), "--out", str(exported["plain"])]
    )
    assert "not an exported model" in one_line_error(
        capsys,
        ["generate", "--model", str(dp_run), *drive_inputs(tmp_path), "--out", str(tmp_path / "x.mp4")],
    )
    assert "--model" in one_line_error(
        capsys,
        ["generate", "--model", str(exported["plain"]), "--run", str(dp_run), "--client", "c"]
        + drive_inputs(tmp_path)
        + ["--out", str(tmp_path / "y.mp4")],
    )
    with pytest.raises(ExportError):
        export_model(dp_run, tmp_path / "c", client="client9999")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_export_into_an_empty_folder_works(dp_run, tmp_path):
    (tmp_path / "empty").mkdir()
    export_model(dp_run, tmp_path / "empty")
    assert (tmp_path / "empty" / "unet" / "config.json").is_file()
    assert not list(tmp_path.glob(".*partial"))


def test_federated_unet_exports_the_aggregated_backbone(tiny_federated_config, tmp_path):
    """federate=unet: the whole U-Net is the global state; unet/ holds it and there is no shared adapter."""
    run = simulation.train(tiny_federated_config("federated.rounds=1", "federated.federate=unet"))
    out = export_model(run, tmp_path / "model", merge=True)
    assert not (out / "unet_shared_adapter").exists() and not (out / "identity_adapter").exists()
    global_model, _ = load_personalized_model(run, None)
    inputs = unet_inputs(global_model.unet, seed=3)
    exported = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    torch.testing.assert_close(output(exported, inputs), output(global_model.unet, inputs), rtol=0, atol=1e-5)
    backbone = UNet2DConditionModel.from_pretrained(
        RunFolder(run).load_config().federated.checkpoint + "/unet"
    )
    assert (output(backbone.eval(), inputs) - output(exported, inputs)).abs().max() > 1e-4
    card = (out / "README.md").read_text()
    assert "the whole backbone was aggregated" in card and "differential privacy: off" in card
