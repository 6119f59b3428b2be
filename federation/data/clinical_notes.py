"""Synthetic clinical referral notes: a seeded stand-in for hospitals' free text.

Each note is a referral to one of four specialties (:data:`CLINICAL_NOTES_CLASSES`), the
label. A note lists the patient's age and sex, a few symptoms, past medical history and
vitals (blood pressure, heart rate, oxygen saturation, temperature). Every specialty has
its own probability for each symptom and history item, but most of them are shared
(chest pain is common in cardiology *and* pulmonology referrals, dizziness in cardiology
and neurology), so the label is not one keyword away; vitals shift a little by specialty.
No note names the specialty.

Sites differ the way hospitals do:

* **writing style and vocabulary**: site A writes terse abbreviations ("67M pt c/o CP,
  SOB x3d"), site B full letters ("thank you for seeing this 67-year-old man who has had
  chest pain..."), site C a referral form ("Reason for referral: thoracic discomfort;
  dyspnoea") with its own terms for several symptoms; further sites reuse these three
  styles in turn;
* **label mix**: each site refers mostly to one or two specialties (fixed mixes for sites
  A to C, a Dirichlet draw fixed per site beyond them).

So a model trained on one site's notes does worse on a pooled test set than one trained
on every site's notes: the point of federating. Everything is drawn from
``numpy.random.default_rng``, seeded by the seed and the site, so a seed gives the same
notes on every machine.

Command line: ``python -m federation.data.clinical_notes --out DIR [--sites 3]
[--notes 200] [--seed 0] [--format csv]`` writes one file per site.
"""

from __future__ import annotations

import argparse
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from federation.data.text import TextDataset, TextField, TextFormat, TextSchema, write_text
from federation.errors import ConfigurationError
from federation.types import Task

#: The specialties a note is referred to, in label-index order.
CLINICAL_NOTES_CLASSES: tuple[str, ...] = ("cardiology", "pulmonology", "gastroenterology", "neurology")
#: Column names of the files :func:`write_site_files` writes.
NOTE_COLUMN, LABEL_COLUMN, SITE_COLUMN = "note", "specialty", "site"

#: Class mixes (in the order of CLINICAL_NOTES_CLASSES) of the first sites.
SITE_CLASS_MIXES: tuple[tuple[float, float, float, float], ...] = (
    (0.55, 0.25, 0.10, 0.10),  # site A: an emergency department, mostly chest complaints
    (0.10, 0.15, 0.50, 0.25),  # site B: a general practice, mostly abdominal complaints
    (0.10, 0.30, 0.10, 0.50),  # site C: a district hospital, mostly neurological complaints
)


@dataclass(frozen=True)
class _Term:
    """A symptom or history item: its probability per specialty, and its words per style."""

    probabilities: tuple[float, float, float, float]
    terse: str
    prose: str
    form: str


# Probabilities are per specialty: cardiology, pulmonology, gastroenterology, neurology.
_SYMPTOMS: tuple[_Term, ...] = (
    _Term((0.65, 0.25, 0.15, 0.03), "CP", "chest pain", "thoracic discomfort"),
    _Term((0.45, 0.70, 0.05, 0.05), "SOB", "shortness of breath", "dyspnoea"),
    _Term((0.45, 0.05, 0.03, 0.08), "palps", "palpitations", "awareness of heartbeat"),
    _Term((0.10, 0.65, 0.05, 0.03), "cough", "a persistent cough", "cough"),
    _Term((0.03, 0.35, 0.01, 0.01), "wheeze", "wheezing", "wheeze"),
    _Term((0.30, 0.30, 0.25, 0.25), "fatigue", "tiredness", "lethargy"),
    _Term((0.30, 0.05, 0.05, 0.35), "dizzy", "dizziness", "light-headedness"),
    _Term((0.25, 0.02, 0.02, 0.15), "syncope", "fainting episodes", "transient loss of consciousness"),
    _Term((0.05, 0.03, 0.05, 0.55), "HA", "headaches", "cephalgia"),
    _Term((0.10, 0.03, 0.45, 0.20), "N+V", "nausea and vomiting", "emesis"),
    _Term((0.06, 0.02, 0.65, 0.02), "abdo pain", "abdominal pain", "epigastric discomfort"),
    _Term((0.10, 0.03, 0.35, 0.01), "reflux", "heartburn", "dyspepsia"),
    _Term((0.01, 0.01, 0.40, 0.03), "D+", "diarrhoea", "loose stools"),
    _Term((0.01, 0.01, 0.20, 0.01), "PR bleed", "blood in the stool", "haematochezia"),
    _Term((0.05, 0.15, 0.20, 0.05), "wt loss", "weight loss", "unintentional weight loss"),
    _Term((0.03, 0.01, 0.01, 0.45), "numbness", "numbness and tingling", "paraesthesia"),
    _Term((0.08, 0.04, 0.04, 0.45), "weakness", "limb weakness", "motor deficit"),
    _Term((0.40, 0.08, 0.05, 0.02), "ankle oedema", "swollen ankles", "peripheral oedema"),
    _Term((0.03, 0.30, 0.12, 0.03), "pyrexial", "fevers", "febrile episodes"),
    _Term((0.01, 0.01, 0.01, 0.20), "?seizure", "a seizure", "fit"),
    _Term((0.02, 0.15, 0.01, 0.01), "haemoptysis", "coughing up blood", "haemoptysis"),
    _Term((0.02, 0.01, 0.01, 0.22), "visual disturbance", "blurred vision", "visual symptoms"),
    _Term((0.02, 0.02, 0.22, 0.08), "dysphagia", "difficulty swallowing", "dysphagia"),
    _Term((0.04, 0.05, 0.02, 0.20), "confused", "confusion", "altered mental status"),
    _Term((0.20, 0.15, 0.01, 0.01), "orthopnoea", "breathlessness lying flat", "orthopnoea"),
)
_HISTORY: tuple[_Term, ...] = (
    _Term((0.50, 0.25, 0.20, 0.35), "HTN", "high blood pressure", "hypertension"),
    _Term((0.30, 0.15, 0.15, 0.20), "T2DM", "type 2 diabetes", "diabetes mellitus"),
    _Term((0.35, 0.50, 0.20, 0.15), "smoker", "smokes cigarettes", "tobacco use"),
    _Term((0.25, 0.03, 0.02, 0.03), "prev MI", "a previous heart attack", "ischaemic heart disease"),
    _Term((0.20, 0.05, 0.02, 0.10), "AF", "atrial fibrillation", "AF"),
    _Term((0.05, 0.35, 0.05, 0.05), "asthma", "asthma", "reactive airways disease"),
    _Term((0.08, 0.30, 0.03, 0.03), "COPD", "chronic lung disease", "COPD"),
    _Term((0.05, 0.05, 0.30, 0.03), "GORD", "acid reflux", "GERD"),
    _Term((0.01, 0.01, 0.12, 0.01), "IBD", "inflammatory bowel disease", "IBD"),
    _Term((0.03, 0.03, 0.03, 0.30), "migraine", "migraines", "migraine"),
    _Term((0.06, 0.02, 0.02, 0.18), "prev CVA", "a previous stroke", "cerebrovascular disease"),
    _Term((0.01, 0.01, 0.01, 0.12), "epilepsy", "epilepsy", "seizure disorder"),
    _Term((0.30, 0.10, 0.10, 0.15), "hyperlipidaemia", "high cholesterol", "dyslipidaemia"),
    _Term((0.08, 0.05, 0.20, 0.08), "EtOH excess", "drinks heavily", "alcohol misuse"),
)
# Per specialty: mean age, share of men, mean systolic BP, mean heart rate, mean SpO2,
# mean temperature.
_PATIENTS: tuple[tuple[float, float, float, float, float, float], ...] = (
    (68.0, 0.60, 148.0, 92.0, 96.5, 36.9),
    (60.0, 0.50, 130.0, 96.0, 92.5, 37.5),
    (50.0, 0.45, 126.0, 82.0, 97.5, 37.2),
    (48.0, 0.45, 132.0, 76.0, 97.5, 36.9),
)
_MAX_SYMPTOMS = 5
_NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class _Patient:
    """Everything a note says, before it is written in a site's style."""

    age: int
    male: bool
    symptoms: tuple[_Term, ...]
    history: tuple[_Term, ...]
    systolic: int
    diastolic: int
    heart_rate: int
    spo2: int
    temperature: float
    duration: int
    weeks: bool


def clinical_notes_schema(max_tokens: int = 128) -> TextSchema:
    """The schema of the files :func:`write_site_files` writes."""
    return TextSchema(
        text=TextField(NOTE_COLUMN, max_tokens),
        label=LABEL_COLUMN,
        task=Task.MULTICLASS,
        classes=CLINICAL_NOTES_CLASSES,
        group_column=SITE_COLUMN,
    )


def site_name(site: int) -> str:
    """``site_a``, ``site_b``, ... (``site_26`` and on past the alphabet)."""
    _check_site(site)
    return f"site_{string.ascii_lowercase[site]}" if site < 26 else f"site_{site}"


def site_class_mix(site: int) -> NDArray[np.float64]:
    """The probability of each specialty among ``site``'s referrals."""
    _check_site(site)
    if site < len(SITE_CLASS_MIXES):
        return np.asarray(SITE_CLASS_MIXES[site], dtype=np.float64)
    # A site's mix belongs to the site, not to the seed of one draw of notes.
    return np.random.default_rng([site, 0x5EED]).dirichlet(np.ones(len(CLINICAL_NOTES_CLASSES)))


def generate_site_notes(site: int, num_notes: int, seed: int) -> TextDataset:
    """``num_notes`` notes of site number ``site`` (0-based); the same seed gives the same notes."""
    _check_site(site)
    _check_seed(seed)
    return _generate(site, num_notes, np.random.default_rng([seed, site]))


def clinical_notes_federation(
    num_sites: int = 3, notes_per_site: int = 200, test_notes_per_site: int = 100, seed: int = 0
) -> tuple[list[TextDataset], TextDataset]:
    """Per-site training notes, and a pooled test set with ``test_notes_per_site`` notes of each site.

    The test notes are drawn independently of the training notes, from the same
    per-site distributions (style and label mix), so the test set mixes every site.
    """
    if num_sites < 1:
        raise ConfigurationError(f"num_sites must be at least 1, got {num_sites}")
    _check_seed(seed)
    train = [generate_site_notes(site, notes_per_site, seed) for site in range(num_sites)]
    # A separate seed stream per site keeps test notes apart from training notes.
    test = [
        _generate(site, test_notes_per_site, np.random.default_rng([seed, site, 1]))
        for site in range(num_sites)
    ]
    return train, TextDataset.concatenate(test)


def write_site_files(
    out_dir: str | Path,
    num_sites: int = 3,
    notes_per_site: int = 200,
    seed: int = 0,
    fmt: TextFormat | str = TextFormat.CSV,
) -> list[Path]:
    """Write one file per site (``site_a.csv``, ...) that :func:`~federation.data.text.load_text` reads.

    The files hold the same notes as :func:`generate_site_notes` with the same seed,
    with columns ``note``, ``specialty`` and ``site`` (see :func:`clinical_notes_schema`).
    """
    try:
        text_format = TextFormat(fmt)
    except ValueError:
        raise ConfigurationError(f"format {fmt!r} is not one of csv, jsonl") from None
    if num_sites < 1:
        raise ConfigurationError(f"num_sites must be at least 1, got {num_sites}")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    schema = clinical_notes_schema()
    return [
        write_text(
            directory / f"{site_name(site)}.{text_format.value}",
            generate_site_notes(site, notes_per_site, seed),
            schema,
        )
        for site in range(num_sites)
    ]


def _check_site(site: int) -> None:
    if isinstance(site, bool) or not isinstance(site, int) or site < 0:
        raise ConfigurationError(f"site must be a non-negative integer, got {site!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")


def _generate(site: int, num_notes: int, rng: np.random.Generator) -> TextDataset:
    if num_notes < 0:
        raise ConfigurationError(f"num_notes must not be negative, got {num_notes}")
    labels = rng.choice(len(CLINICAL_NOTES_CLASSES), size=num_notes, p=site_class_mix(site))
    write = _WRITERS[site % len(_WRITERS)]
    texts = tuple(write(_draw_patient(int(label), rng), rng) for label in labels)
    return TextDataset(
        texts=texts,
        labels=labels.astype(np.int64),
        task=Task.MULTICLASS,
        num_classes=len(CLINICAL_NOTES_CLASSES),
        groups=np.asarray([site_name(site)] * num_notes, dtype=np.str_),
    )


def _draw_terms(terms: Sequence[_Term], label: int, rng: np.random.Generator) -> list[_Term]:
    chance = np.array([term.probabilities[label] for term in terms])
    return [term for term, hit in zip(terms, rng.random(len(terms)) < chance, strict=True) if hit]


def _draw_symptoms(label: int, rng: np.random.Generator) -> tuple[_Term, ...]:
    symptoms = _draw_terms(_SYMPTOMS, label, rng)
    if not symptoms:  # every referral has a reason: draw one in proportion to its chance
        chance = np.array([term.probabilities[label] for term in _SYMPTOMS])
        symptoms = [_SYMPTOMS[rng.choice(len(_SYMPTOMS), p=chance / chance.sum())]]
    order = rng.permutation(len(symptoms))[:_MAX_SYMPTOMS]
    return tuple(symptoms[i] for i in order)


def _draw_patient(label: int, rng: np.random.Generator) -> _Patient:
    age, share_male, systolic, heart_rate, spo2, temperature = _PATIENTS[label]
    drawn_systolic = int(np.clip(rng.normal(systolic, 18.0), 90, 210))
    return _Patient(
        age=int(np.clip(rng.normal(age, 14.0), 18, 95)),
        male=bool(rng.random() < share_male),
        symptoms=_draw_symptoms(label, rng),
        history=tuple(_draw_terms(_HISTORY, label, rng)),
        systolic=drawn_systolic,
        diastolic=int(np.clip(drawn_systolic * 0.6 + rng.normal(0.0, 8.0), 45, 130)),
        heart_rate=int(np.clip(rng.normal(heart_rate, 14.0), 40, 160)),
        spo2=int(np.clip(round(rng.normal(spo2, 2.0)), 80, 100)),
        temperature=round(float(np.clip(rng.normal(temperature, 0.5), 35.0, 40.5)), 1),
        duration=int(rng.integers(1, 11)),
        weeks=bool(rng.random() < 0.4),
    )


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _write_terse(patient: _Patient, rng: np.random.Generator) -> str:
    # Site A: abbreviations, no articles, one line.
    symptoms = ", ".join(term.terse for term in patient.symptoms)
    history = ", ".join(term.terse for term in patient.history) or "nil"
    unit = "w" if patient.weeks else "d"
    opener = _pick(("pt c/o", "c/o", "presents w/"), rng)
    closer = _pick(("Pls r/v.", "?needs spec r/v.", "Thx."), rng)
    return (
        f"{patient.age}{'M' if patient.male else 'F'} {opener} {symptoms} x{patient.duration}{unit}. "
        f"PMHx: {history}. Obs: BP {patient.systolic}/{patient.diastolic} HR {patient.heart_rate} "
        f"SpO2 {patient.spo2}% T {patient.temperature}. {closer}"
    )


def _write_prose(patient: _Patient, rng: np.random.Generator) -> str:
    # Site B: a letter in full sentences.
    he, his = ("He", "his") if patient.male else ("She", "her")
    history = (
        f"{his.capitalize()} past medical history includes {_and_list([t.prose for t in patient.history])}."
        if patient.history
        else f"{he} has no significant past medical history."
    )
    duration = f"{_NUMBER_WORDS[patient.duration - 1]} {'week' if patient.weeks else 'day'}"
    greeting = _pick(("Dear colleague,", "Dear Doctor,", "Many thanks for seeing"), rng)
    return (
        f"{greeting} thank you for seeing this {patient.age}-year-old {'man' if patient.male else 'woman'} "
        f"who has had {_and_list([t.prose for t in patient.symptoms])} for the past {duration}"
        f"{'s' if patient.duration > 1 else ''}. {history}\n"
        f"On examination {his} blood pressure was {patient.systolic}/{patient.diastolic} mmHg, heart rate "
        f"{patient.heart_rate} beats per minute, oxygen saturation {patient.spo2}% on air and temperature "
        f"{patient.temperature} degrees. I would be grateful for your assessment."
    )


def _write_form(patient: _Patient, rng: np.random.Generator) -> str:
    # Site C: a referral form, with its own vocabulary for several terms.
    history = "; ".join(term.form for term in patient.history) or "none recorded"
    return (
        f"Reason for referral: {'; '.join(term.form for term in patient.symptoms)}\n"
        f"Duration: {patient.duration} {'weeks' if patient.weeks else 'days'}\n"
        f"Patient: {patient.age} y, {'male' if patient.male else 'female'}\n"
        f"Background: {history}\n"
        f"Observations: BP {patient.systolic}/{patient.diastolic}; pulse {patient.heart_rate}; "
        f"sats {patient.spo2}% RA; temp {patient.temperature} C\n"
        f"Urgency: {_pick(('routine', 'soon', 'urgent'), rng)}"
    )


def _and_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


_WRITERS = (_write_terse, _write_prose, _write_form)


def main(argv: Sequence[str] | None = None) -> int:
    """Write one file of synthetic notes per site; print the paths written."""
    parser = argparse.ArgumentParser(
        prog="python -m federation.data.clinical_notes",
        description="Write synthetic clinical referral notes.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write the files into")
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--notes", type=int, default=200, help="notes per site (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--format", choices=[f.value for f in TextFormat], default=TextFormat.CSV.value)
    args = parser.parse_args(argv)
    try:
        paths = write_site_files(args.out, args.sites, args.notes, args.seed, args.format)
    except ConfigurationError as error:
        parser.error(str(error))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
