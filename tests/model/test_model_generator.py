"""End-to-end smoke test of the generator (tiny sizes) and its building blocks."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from privfedtalk.cli import main
from privfedtalk.model.generator import TalkingHeadGenerator
from privfedtalk.model.identity import IdentityEncoder
from privfedtalk.model.tdc import tdc_loss


def test_pretrained_checkpoint_loads_and_losses_are_finite(tiny_checkpoint, tiny_corpus):
    model = TalkingHeadGenerator.from_pretrained(tiny_checkpoint)
    assert (tiny_checkpoint / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_checkpoint / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    IdentityEncoder.load(tiny_checkpoint)
    latents = torch.randn(2, 3, 4, 8, 8)
    reference = torch.randn(2, 4, 8, 8)
    audio = torch.randn(2, 3, model.spec.audio_tokens, model.spec.n_mels)
    out = model.loss(latents, reference, audio, torch.Generator().manual_seed(0), lambda_tdc=0.5)
    assert all(torch.isfinite(v) for v in out.values())
    assert set(out) == {"diffusion", "tdc", "total"}


def test_generate_writes_mp4_with_audio_of_the_right_length(tiny_checkpoint, tmp_path):
    wav = tmp_path / "drive.wav"
    rate, seconds = 16000, 0.72
    t = np.arange(int(rate * seconds)) / rate
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    ref = tmp_path / "ref.png"
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(ref)
    out = tmp_path / "out.mp4"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(tiny_checkpoint),
                "--reference",
                str(ref),
                "--audio",
                str(wav),
                "--out",
                str(out),
                "--steps",
                "2",
            ]
        )
        == 0
    )
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert frames[0].shape == (32, 32, 3)
    assert len(frames) == 18  # 0.72 s at 25 fps
    from privfedtalk.data.media import read_audio

    assert abs(len(read_audio(out)) / rate - seconds) < 0.03


def test_evaluate_prints_one_json_object(tiny_checkpoint, tiny_corpus, capsys):
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(tiny_corpus),
                "--json",
                "--max-clips",
                "2",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("psnr", "ssim", "sync_corr", "id_sim", "jitter", "clips", "control_silence_sync_corr"):
        assert key in result
    assert result["clips"] == 2
    assert np.isfinite(result["psnr"]) and 0 < result["psnr"] < 60


def test_bad_checkpoint_and_bad_config_key_give_one_line_errors(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "generator.json" in err
    assert main(["pretrain", "model.unet.stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stepz" in err


def test_tdc_zero_for_consistent_and_positive_for_flicker():
    target = torch.randn(2, 4, 3, 5, 5)
    assert float(tdc_loss(target + 0.7, target)) == pytest.approx(
        0.0, abs=1e-6
    )  # constant offset: same steps
    flicker = target.clone()
    flicker[:, 1::2] += 0.5
    assert float(tdc_loss(flicker, target)) > 0.4


def test_both_audio_controls_get_the_same_sampler_settings(tiny_checkpoint, tiny_corpus):
    """The silence and the other-audio controls must be generated like the clip itself; a control
    that silently dropped `steps`/`anchor` would compare differently sampled videos."""
    from privfedtalk.evaluate import evaluate_clips, load_eval_clips
    from privfedtalk.model.generator import TalkingHeadGenerator
    from privfedtalk.model.identity import IdentityEncoder

    model = TalkingHeadGenerator.from_pretrained(tiny_checkpoint)
    encoder = IdentityEncoder.load(tiny_checkpoint)
    calls = []

    class Recording:
        spec = model.spec

        def generate_many(self, reference, drives, **kwargs):
            calls.append((len(drives), kwargs))
            return model.generate_many(reference, drives, **kwargs)

    clips = load_eval_clips(tiny_corpus, None, model.spec, max_clips=2)
    result = evaluate_clips(Recording(), encoder, clips, steps=2, anchor=False)
    assert "control_other_audio_sync_corr" in result and "control_silence_sync_corr" in result
    assert [n for n, _ in calls] == [3] * len(clips)  # clip, silence, other audio: one pass per clip
    assert all(kw.get("steps") == 2 and kw.get("anchor") is False for _, kw in calls)


@pytest.mark.parametrize("anchor", [True, False])
def test_generating_several_drives_at_once_equals_one_generation_each(tiny_checkpoint, tiny_corpus, anchor):
    """evaluate_clips samples a clip and its two controls in one pass; each video must be the one
    `generate` gives for that audio alone (same seed), or the controls would not be controls."""
    from privfedtalk.evaluate import clip_features, load_eval_clips
    from privfedtalk.model.generator import TalkingHeadGenerator

    model = TalkingHeadGenerator.from_pretrained(tiny_checkpoint)
    first, second = load_eval_clips(tiny_corpus, None, model.spec, max_clips=2)
    drives = [
        first.features,
        clip_features(first, np.zeros_like(first.audio), model.spec),
        second.features[:5],  # another length: the split must follow each drive's frames
    ]
    together = model.generate_many(first.frames[0], drives, seed=3, steps=2, anchor=anchor)
    alone = [model.generate(first.frames[0], d, seed=3, steps=2, anchor=anchor) for d in drives]
    assert [v.shape for v in together] == [v.shape for v in alone]
    for joint, single in zip(together, alone):
        assert np.abs(joint.astype(int) - single.astype(int)).max() <= 1  # uint8 rounding only
    assert not np.array_equal(together[0], together[1])  # the drives really differ


def _todays_shared_noise_sampling(model, reference, features, seed: int, steps: int) -> torch.Tensor:
    """The sampler as it was before frame_noise existed: one noise draw expanded to every frame."""
    from diffusers import DDIMScheduler

    assert model.spec.guidance_scale == 1.0  # the tiny backbone samples without guidance
    ddim = DDIMScheduler.from_config(model.scheduler.config)
    ddim.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn((1,) + tuple(reference.shape), generator=generator)
    n = features.shape[0]
    latent = shared.expand(n, -1, -1, -1).clone()
    ref = reference.unsqueeze(0).expand(n, -1, -1, -1)
    with torch.no_grad():
        for t in ddim.timesteps:
            out = model.denoise(latent, torch.full((n,), int(t), dtype=torch.long), ref, features)
            latent = ddim.step(out, t, latent).prev_sample
    return latent


def test_shared_frame_noise_is_todays_sampler_and_independent_noise_flickers(tiny_checkpoint, tiny_corpus):
    """frame_noise="shared" (the default) must sample exactly as before; "independent" gives every frame
    its own noise, so frames driven by identical audio differ where shared noise keeps them equal."""
    from privfedtalk.errors import PrivFedTalkError
    from privfedtalk.evaluate import load_eval_clips
    from privfedtalk.metrics import flicker

    model = TalkingHeadGenerator.from_pretrained(tiny_checkpoint)
    (clip,) = load_eval_clips(tiny_corpus, None, model.spec, max_clips=1)
    reference = model.encode_frames(clip.frames[:1])[0]
    features = torch.as_tensor(clip.features[:10], dtype=torch.float32)
    expected = _todays_shared_noise_sampling(model, reference, features, seed=4, steps=2)

    def sample(**kwargs):
        return model.sample(reference, features, torch.Generator().manual_seed(4), steps=2, **kwargs)

    assert torch.equal(sample(), expected) and torch.equal(sample(frame_noise="shared"), expected)
    independent = sample(frame_noise="independent")
    assert independent.shape == expected.shape and not torch.allclose(independent, expected)
    # Drawn up front: how the frames are batched changes an independent sample by float rounding only.
    assert torch.allclose(sample(frame_noise="independent", batch_size=3), independent, atol=1e-4)

    # One audio window repeated: with shared noise every frame is the same picture, with independent
    # noise they are not (the flicker the benchmark's flicker rows measure).
    still = np.repeat(clip.features[:1], 6, axis=0)
    shared_video = model.generate(clip.frames[0], still, seed=4, steps=2)
    independent_video = model.generate(clip.frames[0], still, seed=4, steps=2, frame_noise="independent")
    assert np.abs(shared_video.astype(int) - shared_video[:1].astype(int)).max() <= 1  # rounding only
    assert np.abs(independent_video.astype(int) - independent_video[:1].astype(int)).max() > 10
    assert flicker(independent_video) > 10 * flicker(shared_video) + 1e-3
    with pytest.raises(PrivFedTalkError, match="frame_noise"):
        sample(frame_noise="per-frame")


def test_frames_with_equal_audio_windows_are_sampled_once(tiny_checkpoint, tiny_corpus, monkeypatch):
    """With shared noise a frame's latent depends only on its audio window, so generate_many samples
    each distinct window once (a silence drive is one window): the latents must be the ones sampling
    every frame gives, and the sampler must see only the distinct windows."""
    from privfedtalk.evaluate import clip_features, load_eval_clips
    from privfedtalk.model.generator import distinct_rows

    model = TalkingHeadGenerator.from_pretrained(tiny_checkpoint)
    (clip,) = load_eval_clips(tiny_corpus, None, model.spec, max_clips=1)
    silence = clip_features(clip, np.zeros_like(clip.audio), model.spec)
    drives = [clip.features[:6], silence[:8], clip.features[:3]]  # the last repeats the first's windows
    rows = torch.cat([torch.as_tensor(d, dtype=torch.float32) for d in drives])
    kept, index = distinct_rows(rows)
    assert torch.equal(rows[kept][index], rows) and list(kept) == sorted(kept)
    # 8 silent windows are one (the clip may open with it too); the repeated 3 are the first drive's
    assert len(kept) == len({tuple(r.flatten().tolist()) for r in rows}) <= 6 + 1

    reference = model.encode_frames(clip.frames[:1])[0]
    every_frame = model.sample(reference, rows, torch.Generator().manual_seed(2), steps=2)
    once = model.sample(reference, rows[kept], torch.Generator().manual_seed(2), steps=2)[index]
    assert torch.allclose(once, every_frame, atol=1e-5)

    sampled = []
    original = model.sample

    def recording(reference, features, *args, **kwargs):
        sampled.append(len(features))
        return original(reference, features, *args, **kwargs)

    monkeypatch.setattr(model, "sample", recording)
    videos = model.generate_many(clip.frames[0], drives, seed=2, steps=2)
    assert sampled == [len(kept)] and [len(v) for v in videos] == [6, 8, 3]
    assert np.array_equal(videos[2], videos[0][:3]) and np.array_equal(videos[1], videos[1][:1].repeat(8, 0))
    model.generate_many(clip.frames[0], drives, seed=2, steps=2, frame_noise="independent")
    assert sampled[-1] == len(rows)  # independent noise: every frame is its own sample
