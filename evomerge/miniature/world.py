"""A deterministic synthetic world: made-up countries with facts, told in two languages.

Language A ("xa") is English-like with SVO order: "the capital of Veldor is Tamsk ."
Language B ("xb") uses a disjoint word-for-word dictionary and head-final order, with wh-words left in place:
"Veldor ko hiribu Tamsk da ." and the question "Veldor ko hiribu zer da ?".
Names of countries and capitals are the same tokens in both languages.
Answers to questions leave the country out ("the capital is Tamsk .", "hiribu Tamsk da ."), so scoring an
answer tests whether the model read the question, not just whether it completes "the capital of Veldor is".

Every text is a string of space-separated words (punctuation included), so a word-level tokenizer
reproduces it exactly. The shared markers "Q :", "A :" (questions and answers) and "=" (translations) are
the same in both languages: the prototype found no transfer through a merge without them (see
shared/reference/miniature.md).

Which countries may appear where is decided here, once: countries with role "train" may be used to
fine-tune the instruct model; countries with role "eval" are kept for the eval sets. Every country's facts
appear in pre-training text in both languages: they are world knowledge the base and the language model hold.
(A variant that told "eval" facts in A only, so that answering in B needed cross-lingual transfer, left the
base the best model on B questions and gave merges nothing to add.)

Pure Python, no torch: each producer takes a `random.Random`, so a seed fixes every text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Language = Literal["xa", "xb"]
Fact = Literal["capital", "flag", "animal"]

LANGUAGES: tuple[Language, ...] = ("xa", "xb")
FACTS: tuple[Fact, ...] = ("capital", "flag", "animal")

# Word-for-word dictionaries, A -> B. B words are all lowercase and disjoint from A words; names are
# capitalized, so they can never collide with a dictionary word.
COLOURS: dict[str, str] = {
    "red": "gorri", "blue": "urdin", "green": "berde", "yellow": "horik",
    "white": "zuri", "black": "beltz", "orange": "laran", "purple": "morea",
}
ANIMALS: dict[str, str] = {
    "fox": "azeri", "bear": "hartz", "wolf": "otso", "eagle": "arrano",
    "horse": "zaldi", "deer": "orein", "owl": "hontz", "lion": "lehoi",
}
# Nouns and adjectives of the fact-free sentences used for translation pairs and filler.
NOUNS: dict[str, str] = {
    "man": "gizon", "woman": "emakume", "child": "haur", "king": "errege", "dog": "txakur",
    "cat": "katu", "bird": "txori", "house": "etxe", "tree": "zuhaitz", "river": "ibai",
}
ADJECTIVES: dict[str, str] = {
    "big": "handi", "small": "txiki", "old": "zahar", "new": "berri", "good": "ondo", "happy": "pozik",
}
VERBS: dict[str, str] = {
    "sees": "ikusi", "likes": "maite", "finds": "aurkitu", "follows": "jarraitu", "knows": "ezagutu",
}
# Function and fact words. "the" has no B counterpart: B drops articles.
FUNCTION_WORDS: dict[str, str] = {
    "capital": "hiribu", "flag": "bandel", "colour": "kolo", "national": "herrin", "animal": "abere",
    "country": "lurra", "city": "hiri", "what": "zer", "is": "da", "of": "ko", "has": "du",
    "in": "tan", "a": "bat",
}
ARTICLE_A = "the"
# Markers shared by both languages.
SHARED_WORDS: tuple[str, ...] = ("Q", "A", ":", "?", ".", "=")

DICTIONARY: dict[str, str] = {**COLOURS, **ANIMALS, **NOUNS, **ADJECTIVES, **VERBS, **FUNCTION_WORDS}


def _b(word: str) -> str:
    """The B word for an A word (names pass through unchanged)."""
    return DICTIONARY.get(word, word)


@dataclass(frozen=True)
class Country:
    """One row of the fact table. Colour and animal are stored as A words; `_b` translates them."""

    name: str
    capital: str
    colour: str
    animal: str
    role: Literal["train", "eval"]


@dataclass(frozen=True)
class World:
    """The fact table of one seed. Build it with `make_world`."""

    seed: int
    countries: tuple[Country, ...]

    def by_role(self, role: Literal["train", "eval"]) -> tuple[Country, ...]:
        """Countries with the given role, in table order."""
        return tuple(c for c in self.countries if c.role == role)


@dataclass(frozen=True)
class QAPair:
    """A question about one fact of one country, and its answer sentence, in one language."""

    country: str
    fact: Fact
    language: Language
    question: str
    answer: str


# ---------------------------------------------------------------------------------------------------------
# The fact table


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_COUNTRY_CODAS = ("", "", "r", "n", "l", "s", "ria", "dor", "land")
_CAPITAL_CODAS = ("k", "m", "t", "sk", "mir", "grad", "ton")


def _name(rng: random.Random, codas: tuple[str, ...]) -> str:
    syllables = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2)))
    return (syllables + rng.choice(codas)).capitalize()


# 108 eval countries leave room for 300 holdout questions (100 countries x 3 facts) beside 24 dev ones (8 countries);
# 12 train countries give the instruct fine-tune 36 examples. See evalsets.py for how this size was chosen.
N_COUNTRIES = 120
N_EVAL = 108


def make_world(seed: int = 0, n_countries: int = N_COUNTRIES, n_eval: int = N_EVAL) -> World:
    """The world of `seed`: `n_countries` countries, the first `n_eval` of them (in table order) held for eval."""
    if not 0 < n_eval < n_countries:
        raise ValueError(f"need 0 < n_eval < n_countries, got n_eval={n_eval}, n_countries={n_countries}")
    rng = random.Random(seed)
    names: set[str] = set()

    def fresh(codas: tuple[str, ...]) -> str:
        # Names must be unique across countries and capitals, and longer than the one-letter markers.
        while True:
            name = _name(rng, codas)
            if name not in names and len(name) > 2:
                names.add(name)
                return name

    colours, animals = sorted(COLOURS), sorted(ANIMALS)
    countries = tuple(
        Country(
            name=fresh(_COUNTRY_CODAS),
            capital=fresh(_CAPITAL_CODAS),
            colour=rng.choice(colours),
            animal=rng.choice(animals),
            role="eval" if i < n_eval else "train",
        )
        for i in range(n_countries)
    )
    return World(seed=seed, countries=countries)


def fact_value(country: Country, fact: Fact) -> str:
    """The fact's value as an A word or a name: the capital, the flag colour or the national animal."""
    return {"capital": country.capital, "flag": country.colour, "animal": country.animal}[fact]


def fact_values(world: World, fact: Fact) -> list[str]:
    """Every value a fact can take in this world (the pool distractors are drawn from), sorted."""
    if fact == "capital":
        return sorted(c.capital for c in world.countries)
    return sorted(COLOURS if fact == "flag" else ANIMALS)


# ---------------------------------------------------------------------------------------------------------
# Sentences about facts


def fact_sentence(country: Country, fact: Fact, language: Language) -> str:
    """The sentence stating a fact, country included (the form pre-training text uses)."""
    c, v = country.name, fact_value(country, fact)
    if language == "xa":
        return {
            "capital": f"the capital of {c} is {v} .",
            "flag": f"the flag of {c} is {v} .",
            "animal": f"the national animal of {c} is the {v} .",
        }[fact]
    # B: possessor + "ko" before the noun, adjective after the noun, copula last.
    return {
        "capital": f"{c} ko hiribu {v} da .",
        "flag": f"{c} ko bandel {_b(v)} da .",
        "animal": f"{c} ko abere herrin {_b(v)} da .",
    }[fact]


def question(country: Country, fact: Fact, language: Language) -> str:
    """The question asking for a fact. B keeps the wh-word where the answer goes."""
    c = country.name
    if language == "xa":
        return {
            "capital": f"what is the capital of {c} ?",
            "flag": f"what colour is the flag of {c} ?",
            "animal": f"what is the national animal of {c} ?",
        }[fact]
    return {
        "capital": f"{c} ko hiribu zer da ?",
        "flag": f"{c} ko bandel zer kolo da ?",
        "animal": f"{c} ko abere herrin zer da ?",
    }[fact]


def answer(country: Country, fact: Fact, language: Language, value: str | None = None) -> str:
    """The answer to `question`: a sentence that names the value but not the country.

    Leaving the country out means the value can only be found from the question, so answer scores depend on
    how a model reads the prompt (chat markup included) and not only on the answer's own first words.
    `value` (an A word or a name) replaces the true value, for distractors.
    """
    v = fact_value(country, fact) if value is None else value
    if language == "xa":
        return {
            "capital": f"the capital is {v} .",
            "flag": f"the flag is {v} .",
            "animal": f"the national animal is the {v} .",
        }[fact]
    return {"capital": f"hiribu {v} da .", "flag": f"bandel {_b(v)} da .", "animal": f"abere herrin {_b(v)} da ."}[fact]


def qa_pair(country: Country, fact: Fact, language: Language) -> QAPair:
    """The question about one fact and its answer sentence."""
    return QAPair(country.name, fact, language, question(country, fact, language), answer(country, fact, language))


def qa_pairs(world: World, language: Language, role: Literal["train", "eval"] | None = None) -> list[QAPair]:
    """All question/answer pairs in `language`, for countries of `role` (all countries when None)."""
    countries = world.countries if role is None else world.by_role(role)
    return [qa_pair(c, f, language) for c in countries for f in FACTS]


def _qa_text(country: Country, fact: Fact, language: Language) -> str:
    # The same markers in both languages, so the answer-after-question habit is shared.
    return f"Q : {question(country, fact, language)} A : {answer(country, fact, language)}"


def _other_sentences(country: Country, language: Language) -> list[str]:
    c, k = country.name, country.capital
    if language == "xa":
        return [f"{k} is a city in {c} .", f"{k} is the capital of {c} ."]
    return [f"{k} {c} tan hiri bat da .", f"{k} {c} ko hiribu da ."]


def _intro(country: Country, language: Language) -> str:
    return f"{country.name} is a country ." if language == "xa" else f"{country.name} lurra bat da ."


# ---------------------------------------------------------------------------------------------------------
# Fact-free sentences (translation pairs and filler)


def generic_pair(rng: random.Random) -> tuple[str, str]:
    """A random fact-free sentence and its translation, as (A, B).

    They use the colour and animal words and the fact nouns too, so the dictionary for every word a fact
    answer needs is learnable from translation pairs alone.
    """
    things = sorted(NOUNS) + sorted(ANIMALS)
    adjectives = sorted(ADJECTIVES) + sorted(COLOURS)
    n1, n2 = rng.choice(things), rng.choice(things)
    adj, verb = rng.choice(adjectives), rng.choice(sorted(VERBS))
    colour, animal = rng.choice(sorted(COLOURS)), rng.choice(sorted(ANIMALS))
    place = rng.choice(("country", "city", "capital", "house", "king"))
    kind = rng.randrange(7)
    if kind == 0:
        return f"the {adj} {n1} {verb} the {n2} .", f"{_b(n1)} {_b(adj)} {_b(n2)} {_b(verb)} ."
    if kind == 1:
        return f"the {n1} {verb} the {adj} {n2} .", f"{_b(n1)} {_b(n2)} {_b(adj)} {_b(verb)} ."
    if kind == 2:
        return f"the {n1} is {adj} .", f"{_b(n1)} {_b(adj)} da ."
    if kind == 3:
        return f"the {place} has a {colour} flag .", f"{_b(place)} bandel {_b(colour)} bat du ."
    if kind == 4:
        return f"what colour is the {n1} ?", f"{_b(n1)} zer kolo da ?"
    if kind == 5:
        return f"the {animal} is a national animal .", f"{_b(animal)} abere herrin bat da ."
    return f"the {animal} is a {adj} animal .", f"{_b(animal)} abere {_b(adj)} bat da ."


def translation_doc(rng: random.Random) -> str:
    """One translation pair written as "source = target", in a random direction."""
    a, b = generic_pair(rng)
    return f"{a} = {b}" if rng.random() < 0.5 else f"{b} = {a}"


# ---------------------------------------------------------------------------------------------------------
# Documents


def paragraph(world: World, rng: random.Random, country: Country, language: Language) -> str:
    """A paragraph about one country: its facts, some questions with answers, a little filler, shuffled.

    A question sometimes follows the sentence that answers it (the model learns to copy names from
    context) and sometimes not (it learns to recall the fact).
    """
    body: list[str] = []
    for fact in FACTS:
        r = rng.random()
        if r < 0.45:
            body.append(fact_sentence(country, fact, language))
        elif r < 0.75:
            body.append(_qa_text(country, fact, language))
        elif r < 0.9:
            body += [fact_sentence(country, fact, language), _qa_text(country, fact, language)]
    if not body:
        body.append(_qa_text(country, rng.choice(FACTS), language))
    for sentence in _other_sentences(country, language):
        if rng.random() < 0.25:
            body.append(sentence)
    for _ in range(rng.randrange(2)):
        a, b = generic_pair(rng)
        body.append(a if language == "xa" else b)
    rng.shuffle(body)
    return " ".join([_intro(country, language), *body])


def pretraining_docs(
    world: World, rng: random.Random, n_docs: int, *, b_share: float = 0.025, translation_share: float = 0.10
) -> list[str]:
    """Documents for the base model: A paragraphs, a `b_share` of B paragraphs, a `translation_share` of pairs.

    B stays a small share so the base is weak in B and the language model has something to add (at 5% and the
    longer pre-training a larger world needs, the instruct model answered B questions in B as often as lang-xb
    did: no trade-off left on B fidelity; measurements in evalsets.py).
    """
    docs = []
    for _ in range(n_docs):
        r = rng.random()
        if r < translation_share:
            docs.append(translation_doc(rng))
        else:
            language: Language = "xb" if r < translation_share + b_share else "xa"
            docs.append(paragraph(world, rng, rng.choice(world.countries), language))
    return docs


def language_docs(
    world: World, rng: random.Random, n_docs: int, language: Language = "xb", *, filler_share: float = 0.1
) -> list[str]:
    """Monolingual documents for continued pre-training: paragraphs plus a `filler_share` of fact-free lines."""
    docs = []
    for _ in range(n_docs):
        if rng.random() < filler_share:
            docs.append(" ".join(generic_pair(rng)[LANGUAGES.index(language)] for _ in range(3)))
        else:
            docs.append(paragraph(world, rng, rng.choice(world.countries), language))
    return docs


def vocabulary(world: World) -> list[str]:
    """Every word any text of this world can contain, sorted (special tokens excluded)."""
    words = set(DICTIONARY) | set(DICTIONARY.values()) | set(SHARED_WORDS) | {ARTICLE_A}
    words |= {c.name for c in world.countries} | {c.capital for c in world.countries}
    return sorted(words)
