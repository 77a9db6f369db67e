"""The one exception family users see: each error names the file or key at fault and the fix."""

from __future__ import annotations


class PrivFedTalkError(Exception):
    """Base class for every error meant for a user (printed as one line by the CLI)."""


class MediaError(PrivFedTalkError):
    """A media file cannot be used; the message names the file, the reason and the fix."""

    def __init__(self, path, reason: str, fix: str = ""):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        text = f"{self.path}: {reason}"
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class ConfigError(PrivFedTalkError):
    """A configuration key or value is wrong."""


class PrivacyError(PrivFedTalkError):
    """A privacy mechanism cannot run as configured (e.g. too many dropouts to unmask)."""


class MissingExtraError(PrivFedTalkError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f'{feature} needs {package}, which is not installed: pip install -e ".[{extra}]" '
            f'(or pip install "privfedtalk[{extra}]")'
        )
