from pathlib import Path

import numpy as np
import pytest

from federation.data import DataSchema, FeatureKind, FeatureSpec, load_csv
from federation.errors import DataSchemaError
from federation.types import Task

SCHEMA = DataSchema(
    features=(
        FeatureSpec("age", FeatureKind.NUMERIC),
        FeatureSpec("sex", FeatureKind.CATEGORICAL, ("female", "male", "other")),
        FeatureSpec("smoker", FeatureKind.BOOLEAN),
    ),
    label="outcome",
    task=Task.MULTICLASS,
    classes=("good", "fair", "poor"),
    site_column="hospital",
)

GOOD_CSV = """\
id,hospital,age,sex,smoker,outcome,notes
1,north,54.5,male,yes,poor,anything
2,south, 61 ,female,FALSE,good,
3,north,47,other,1,fair,x
"""


def write(tmp_path: Path, text: str, name: str = "site.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_encodes_every_kind(tmp_path: Path) -> None:
    data = load_csv(write(tmp_path, GOOD_CSV), SCHEMA)
    assert data.feature_names == ("age", "sex=female", "sex=male", "sex=other", "smoker")
    assert data.features.dtype == np.float32
    np.testing.assert_array_equal(
        data.features,
        [
            [54.5, 0, 1, 0, 1],
            [61, 1, 0, 0, 0],
            [47, 0, 0, 1, 1],
        ],
    )
    # classes map to indices in declared order, not order of appearance
    assert data.labels.tolist() == [2, 0, 1]
    assert data.labels.dtype == np.int64
    assert data.num_classes == 3
    assert data.task is Task.MULTICLASS
    assert data.sites is not None
    assert data.sites.tolist() == ["north", "south", "north"]


def test_regression_labels_and_bom(tmp_path: Path) -> None:
    schema = DataSchema((FeatureSpec("x"),), label="y", task=Task.REGRESSION)
    path = tmp_path / "r.csv"
    path.write_bytes("\ufeffx,y\n1,2.5\n\n3,-4\n".encode())
    data = load_csv(path, schema)
    np.testing.assert_array_equal(data.labels, np.array([2.5, -4.0], dtype=np.float32))
    assert data.labels.dtype == np.float32
    assert data.num_classes == 1
    assert data.sites is None


def test_missing_columns_are_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "age,outcome,hospital\n50,good,north\n", "export.csv")
    with pytest.raises(DataSchemaError) as excinfo:
        load_csv(path, SCHEMA)
    message = str(excinfo.value)
    assert "export.csv" in message
    assert "sex, smoker" in message


def test_bad_number_names_line_and_column_but_not_value(tmp_path: Path) -> None:
    text = GOOD_CSV.replace("47,other", "SECRET-4711,other")
    with pytest.raises(DataSchemaError) as excinfo:
        load_csv(write(tmp_path, text), SCHEMA)
    message = str(excinfo.value)
    assert "line 4" in message
    assert "'age'" in message
    assert "not a number" in message
    assert "SECRET" not in message
    assert "4711" not in message
    # no chained exception (float()'s ValueError quotes the value) travels along either
    chained: BaseException | None = excinfo.value
    while chained is not None:
        assert "SECRET" not in str(chained)
        assert chained.__cause__ is None
        chained = chained.__context__
    assert excinfo.value.__context__ is None


def test_non_finite_number_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataSchemaError, match="line 2, column 'age': not a finite number"):
        load_csv(write(tmp_path, GOOD_CSV.replace("54.5", "nan")), SCHEMA)


def test_unknown_class_names_column_and_line(tmp_path: Path) -> None:
    text = GOOD_CSV.replace("female,FALSE,good", "female,FALSE,excellent")
    with pytest.raises(DataSchemaError) as excinfo:
        load_csv(write(tmp_path, text), SCHEMA)
    message = str(excinfo.value)
    assert "line 3" in message
    assert "'outcome'" in message
    assert "declared classes" in message
    assert "excellent" not in message


def test_unknown_category_and_bad_boolean(tmp_path: Path) -> None:
    with pytest.raises(DataSchemaError, match="line 2, column 'sex': not one of the declared categories"):
        load_csv(write(tmp_path, GOOD_CSV.replace("male,yes", "unknown,yes")), SCHEMA)
    with pytest.raises(DataSchemaError, match="line 3, column 'smoker': not a boolean"):
        load_csv(write(tmp_path, GOOD_CSV.replace("FALSE", "maybe")), SCHEMA)


def test_empty_cell_is_an_error_by_default(tmp_path: Path) -> None:
    text = GOOD_CSV.replace(" 61 ", "")
    with pytest.raises(DataSchemaError, match=r"line 3, column 'age': empty value.*not allowed"):
        load_csv(write(tmp_path, text), SCHEMA)
    data = load_csv(write(tmp_path, text), SCHEMA, allow_missing_numeric=True)
    assert np.isnan(data.features[1, 0])
    with pytest.raises(DataSchemaError, match="column 'sex': empty value"):
        load_csv(write(tmp_path, GOOD_CSV.replace("male,yes", ",yes")), SCHEMA, allow_missing_numeric=True)


def test_ragged_row_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataSchemaError, match=r"line 3: 6 cell.*header has 7"):
        load_csv(write(tmp_path, GOOD_CSV.replace("good,\n", "\n")), SCHEMA)
    with pytest.raises(DataSchemaError, match="empty"):
        load_csv(write(tmp_path, ""), SCHEMA)
    with pytest.raises(DataSchemaError, match="no data rows"):
        load_csv(write(tmp_path, GOOD_CSV.splitlines()[0] + "\n"), SCHEMA)
