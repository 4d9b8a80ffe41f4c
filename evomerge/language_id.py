"""Offline language identification (py3langid, whose model ships in its wheel; no download, no hub).

IFEval's response-language check uses langdetect, which cannot output Basque or Galician; py3langid (a langid.py
fork, 97 languages) tells eu/ca/gl/es/en apart. Identification runs over a fixed candidate set: the Iberian and
neighbouring Romance languages, Basque and English by default. Restricting the set keeps short Galician answers
from being called Portuguese, at the price of not naming languages outside it (a response in, say, German is
still "not Galician", which is all a fidelity check asks).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Iterable

DEFAULT_CANDIDATES = ("eu", "ca", "gl", "es", "en", "pt", "fr", "it", "oc", "de")


@lru_cache(maxsize=1)
def _model():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=8)
def _identifier(candidates: tuple[str, ...]):
    # a shallow copy shares the loaded model; set_languages rebinds (never mutates) its arrays
    ident = copy.copy(_model())
    ident.set_languages(list(candidates))
    return ident


def known_languages() -> frozenset[str]:
    """ISO 639-1 codes the identifier can output."""
    return frozenset(_model().labels)


def identify(text: str, candidates: Iterable[str] = DEFAULT_CANDIDATES) -> tuple[str, float]:
    """The most likely language of `text` among `candidates`, and its probability (normalized over them)."""
    cands = tuple(sorted(set(candidates)))
    unknown = set(cands) - known_languages()
    if unknown:
        raise ValueError(f"the language identifier does not know {', '.join(sorted(unknown))}")
    lang, prob = _identifier(cands).classify(text)
    return str(lang), float(prob)


def is_language(text: str, language: str, candidates: Iterable[str] = DEFAULT_CANDIDATES) -> bool:
    """Whether `text` is identified as `language` (added to the candidates if absent). Empty text is not."""
    if not text.strip():
        return False
    return identify(text, set(candidates) | {language})[0] == language
