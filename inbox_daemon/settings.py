"""The one way the program loads its configuration: ``load(path)``, for the CLI and the daemon.

``config`` checks every key of the file but one: whether ``preset = "..."`` names a preset that
exists. Presets are data files of ``adapters`` (``adapters/presets/*.toml``: adding one is adding
a file, so no fixed list of names can be written in ``config``), and ``config`` must not import
``adapters``, which builds on it. So the names are handed to the loader here, where both are
known, and a wrong preset is reported with every other problem of the file, in one pass, under
its key path (``partners[0].preset: unknown preset 'x'; known: ...``). ``"auto"`` is one of
them: the preset is then chosen per file from its header (``adapters.platforms``). The same
holds for what a partner's own ``[rows]`` table or ``preset_file`` says: the preset each partner
is read with is composed here once, and what cannot be used is reported like a wrong key.
"""

from __future__ import annotations

import os

from adapters.platforms import AUTO
from adapters.presets import PRESETS, partner_preset
from config import Config, ConfigError, load_config


def load(path: str | os.PathLike | None = None) -> Config:
    """``path``, else ``$INBOX_DAEMON_CONFIG``, else the built-in default; ``ConfigError`` lists
    every problem."""
    config = load_config(path, presets=[*PRESETS, AUTO])
    problems = []
    for i, partner in enumerate(config.partners.values()):
        try:
            partner_preset(partner)
        except ValueError as exc:
            problems.append(f"partners[{i}]: {exc}")
    if problems:
        raise ConfigError(problems, config.source)
    return config
