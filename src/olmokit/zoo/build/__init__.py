"""The zoo's build recipe: how the shipped models were made (``olmokit zoo build``).

``olmokit.zoo`` itself is the *registry* — which models ship, their architecture presets and how to
load them — and stays light: it imports neither ``transformers.Trainer`` nor this package. The recipe
sits one layer above it and above :mod:`olmokit.data` (it reads the CPython corpus from
:mod:`olmokit.data.stdlib`), shaped like a tool:

* :mod:`.config` — :class:`ZooBuildConfig` (the YAML files under ``configs/zoo/``);
* :mod:`.tokenizer` — byte-level BPE training; :mod:`.pretrain` — ``Trainer`` pretraining and the
  held-out / unigram losses; :mod:`.card` — the model card;
* :mod:`.run` — :func:`build_zoo_model`, the whole recipe (resumable from its work directory).

It is a subpackage rather than a sibling package so the import path names what it builds
(``olmokit.zoo.build``), while nothing in the registry imports it.
"""

from .config import ZooBuildConfig
from .run import build_zoo_model

__all__ = ["ZooBuildConfig", "build_zoo_model"]
