"""PrivFedTalk: federated, private personalization of audio-driven talking-head diffusion."""

__version__ = "0.1.0"
