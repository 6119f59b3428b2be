import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from federation.data.clinical_notes import (
    CLINICAL_NOTES_CLASSES,
    SITE_CLASS_MIXES,
    clinical_notes_federation,
    clinical_notes_schema,
    generate_site_notes,
    main,
    site_class_mix,
    site_name,
    write_site_files,
)
from federation.data.text import TextDataset, load_text
from federation.errors import ConfigurationError
from federation.types import Task


def test_same_seed_same_notes_other_seed_other_notes() -> None:
    first = generate_site_notes(1, 50, seed=7)
    again = generate_site_notes(1, 50, seed=7)
    other = generate_site_notes(1, 50, seed=8)
    assert first.texts == again.texts
    assert first.labels.tolist() == again.labels.tolist()
    assert first.texts != other.texts
    # Sites draw from their own streams: the same seed gives different notes elsewhere.
    assert generate_site_notes(2, 50, seed=7).texts != generate_site_notes(5, 50, seed=7).texts


def test_site_notes_are_a_labelled_multiclass_dataset_grouped_by_site() -> None:
    data = generate_site_notes(2, 30, seed=0)
    assert len(data) == 30
    assert data.task is Task.MULTICLASS
    assert data.num_classes == len(CLINICAL_NOTES_CLASSES) == 4
    assert data.groups is not None
    assert set(data.groups.tolist()) == {"site_c"}
    assert all(text.strip() for text in data.texts)
    assert len(generate_site_notes(0, 0, seed=0)) == 0


def test_no_note_names_its_specialty() -> None:
    _, test = clinical_notes_federation(seed=3)
    for text in test.texts:
        lowered = text.lower()
        assert not any(name in lowered for name in CLINICAL_NOTES_CLASSES)


def test_sites_differ_in_label_mix() -> None:
    shares = [
        np.bincount(generate_site_notes(site, 2000, seed=1).labels, minlength=4) / 2000 for site in range(3)
    ]
    for site, share in enumerate(shares):
        np.testing.assert_allclose(share, SITE_CLASS_MIXES[site], atol=0.04)
    assert [int(np.argmax(share)) for share in shares] == [0, 2, 3]
    # Beyond the fixed mixes every site has its own (Dirichlet) mix, independent of the seed.
    np.testing.assert_array_equal(site_class_mix(4), site_class_mix(4))
    assert not np.allclose(site_class_mix(4), site_class_mix(5))
    assert site_class_mix(6).sum() == pytest.approx(1.0)


def test_sites_differ_in_style_and_vocabulary() -> None:
    notes = [" ".join(generate_site_notes(site, 200, seed=2).texts) for site in range(3)]
    terse, prose, form = notes
    assert "PMHx:" in terse
    assert "thank you for seeing" in prose
    assert "Reason for referral:" in form
    assert "PMHx:" not in prose + form
    assert "thank you for seeing" not in terse + form
    assert "Reason for referral:" not in terse + prose
    # The same symptom is written differently at each site.
    assert "SOB" in terse
    assert "shortness of breath" in prose
    assert "dyspnoea" in form
    assert "dyspnoea" not in terse + prose
    assert "shortness of breath" not in terse + form
    # A fourth site writes in the first site's style, with its own label mix.
    assert "PMHx:" in generate_site_notes(3, 5, seed=2).texts[0]


def test_symptoms_are_shared_across_specialties() -> None:
    data = generate_site_notes(1, 600, seed=4)
    with_chest_pain = {
        int(label) for text, label in zip(data.texts, data.labels, strict=True) if "chest pain" in text
    }
    assert len(with_chest_pain) >= 3


def test_federation_has_per_site_train_sets_and_a_pooled_test_set() -> None:
    train, test = clinical_notes_federation(num_sites=4, notes_per_site=40, test_notes_per_site=10, seed=5)
    assert [len(site) for site in train] == [40, 40, 40, 40]
    assert len(test) == 40
    assert test.groups is not None
    assert np.unique(test.groups, return_counts=True)[1].tolist() == [10, 10, 10, 10]
    assert sorted(set(test.groups.tolist())) == [site_name(s) for s in range(4)]
    assert not set(test.texts) & {text for site in train for text in site.texts}
    assert train[0].texts == generate_site_notes(0, 40, seed=5).texts
    with pytest.raises(ConfigurationError, match="num_sites"):
        clinical_notes_federation(num_sites=0)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_written_files_load_back_identically(tmp_path: Path, fmt: str) -> None:
    paths = write_site_files(tmp_path / "out", num_sites=3, notes_per_site=60, seed=9, fmt=fmt)
    assert [p.name for p in paths] == [f"site_a.{fmt}", f"site_b.{fmt}", f"site_c.{fmt}"]
    schema = clinical_notes_schema()
    for site, path in enumerate(paths):
        loaded = load_text(path, schema)
        expected = generate_site_notes(site, 60, seed=9)
        assert loaded.texts == expected.texts
        assert loaded.labels.tolist() == expected.labels.tolist()
        assert loaded.groups is not None
        assert expected.groups is not None
        assert loaded.groups.tolist() == expected.groups.tolist()


def test_schema_and_argument_errors(tmp_path: Path) -> None:
    schema = clinical_notes_schema(max_tokens=256)
    assert schema.text.max_tokens == 256
    assert schema.classes == CLINICAL_NOTES_CLASSES
    assert schema.group_column == "site"
    with pytest.raises(ConfigurationError, match="format 'xml'"):
        write_site_files(tmp_path, fmt="xml")
    with pytest.raises(ConfigurationError, match="site must be a non-negative integer"):
        generate_site_notes(-1, 5, seed=0)
    with pytest.raises(ConfigurationError, match="seed must be a non-negative integer"):
        generate_site_notes(0, 5, seed=-1)
    with pytest.raises(ConfigurationError, match="num_notes"):
        generate_site_notes(0, -5, seed=0)
    assert site_name(0) == "site_a"
    assert site_name(30) == "site_30"


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--sites", "2", "--notes", "5", "--format", "jsonl"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "site_a.jsonl"), str(tmp_path / "site_b.jsonl")]
    assert len(load_text(printed[1], clinical_notes_schema())) == 5
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "federation.data.clinical_notes",
            "--out",
            str(tmp_path / "m"),
            "--notes",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(result.stdout.split()) == 3
    assert (tmp_path / "m" / "site_c.csv").is_file()


def bag_of_words_accuracy(train: TextDataset, test: TextDataset) -> float:
    model = make_pipeline(CountVectorizer(), LogisticRegression(max_iter=2000))
    model.fit(train.features, train.labels)
    return float(model.score(test.features, test.labels))


@pytest.mark.parametrize("seed", [0, 1])
def test_learnable_from_pooled_notes_and_worse_from_one_site(seed: int) -> None:
    train, test = clinical_notes_federation(
        num_sites=3, notes_per_site=200, test_notes_per_site=100, seed=seed
    )
    majority = np.bincount(test.labels).max() / len(test)
    pooled = bag_of_words_accuracy(TextDataset.concatenate(train), test)
    single = [bag_of_words_accuracy(site, test) for site in train]
    assert pooled > 0.85
    assert pooled > majority + 0.4
    # Each site's skewed mix and own vocabulary generalize worse to the pooled test set.
    assert max(single) < pooled - 0.1
    assert np.mean(single) < pooled - 0.2
    assert min(single) > majority
