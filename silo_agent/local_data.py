"""The site's own rows: loaded, checked against the study's model, scaled and split.

Rows never leave this module's process: only counts and metrics computed on them do.
The train/validation split is seeded from the study's seed and the institution's id, so
it is the same in every round and after every restart, and differs between sites.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from federation.analytics.queries import SiteTable
from federation.data import (
    DataSchema,
    Dataset,
    FeatureMoments,
    Standardizer,
    load_builtin,
    load_csv,
    local_moments,
)
from federation.data.agreement import SiteSummary, summarise, widened_schema
from federation.data.csv_loader import categories_in, load_columns
from federation.data.text import TextDataset, TextSchema, load_text, parse_data_schema
from federation.errors import FederationError
from federation.models import AnyModelConfig, TextModelConfig
from silo_agent.config import DataSource, DataSourceKind
from silo_agent.errors import ConfigError, TaskError
from silo_agent.tasks import StudySettings


@dataclass(frozen=True)
class PreparedData:
    """A study's view of the site's data: scaled, split into training and validation rows."""

    train: Dataset | TextDataset
    validation: Dataset | TextDataset


def load_dataset(source: DataSource, schema: DataSchema | TextSchema | None) -> Dataset | TextDataset:
    """The site's encoded rows; a file source needs the study's schema, a built-in one does
    not. A text schema reads the file (CSV or JSON Lines) as texts and labels."""
    if source.kind is DataSourceKind.BUILTIN:
        assert source.builtin_name is not None  # guaranteed by the configuration parser
        dataset = load_builtin(source.builtin_name)
        if source.rows_file is not None:
            dataset = dataset.subset(read_rows_file(source.rows_file, len(dataset)))
        return dataset
    if schema is None:
        raise ConfigError("a CSV data source needs the study's data schema")
    assert source.csv_path is not None
    if isinstance(schema, TextSchema):
        return load_text(source.csv_path, schema)
    return load_csv(source.csv_path, schema)


def read_rows_file(path: Path, num_rows: int) -> NDArray[np.intp]:
    """The row indices listed in ``path`` (a JSON list of distinct integers in range)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"data.rows: cannot read {path} as JSON ({error})") from None
    if (
        not isinstance(rows, list)
        or not rows
        or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows)
    ):
        raise ConfigError(f"data.rows: {path} must hold a non-empty JSON list of row indices")
    if len(set(rows)) != len(rows) or min(rows) < 0 or max(rows) >= num_rows:
        raise ConfigError(f"data.rows: {path} must list distinct row indices in 0..{num_rows - 1}")
    return np.asarray(rows, dtype=np.intp)


def site_moments(source: DataSource, schema: DataSchema | None) -> FeatureMoments:
    """Count, sum and sum of squares of the site's encoded, unscaled features."""
    dataset = load_dataset(source, schema)
    if isinstance(dataset, TextDataset):
        raise ConfigError("feature moments are for numeric features; a text study has none")
    return local_moments(dataset.features)


def site_summary(source: DataSource, schema: DataSchema) -> SiteSummary:
    """The aggregates of the site's rows for the data agreement: the schema widened by the
    categories the file holds, so that an undeclared value counts instead of failing."""
    seen: dict[str, set[str]] = {}
    if source.kind is DataSourceKind.CSV:
        assert source.csv_path is not None  # guaranteed by the configuration parser
        seen = categories_in(source.csv_path, schema)
    widened = widened_schema(schema, seen)
    dataset = load_dataset(source, widened)
    assert isinstance(dataset, Dataset)  # a tabular schema loads a tabular data set
    if dataset.num_features != len(widened.encoded_feature_names()):
        raise TaskError(
            f"this site's data has {dataset.num_features} features; the study's schema encodes "
            f"{len(widened.encoded_feature_names())}"
        )
    return summarise(widened, dataset.features)


def site_table(source: DataSource, schema: DataSchema) -> SiteTable:
    """The site's columns as they are (missing values kept), for a federated query."""
    if source.kind is DataSourceKind.CSV:
        assert source.csv_path is not None  # guaranteed by the configuration parser
        numeric, categorical = load_columns(source.csv_path, schema)
        return SiteTable(numeric=numeric, categorical=categorical)
    dataset = load_dataset(source, schema)
    assert isinstance(dataset, Dataset)
    names = schema.encoded_feature_names()
    if dataset.num_features != len(names):
        raise TaskError(
            f"this site's data has {dataset.num_features} features; the study's schema encodes {len(names)}"
        )
    numeric = {name: dataset.features[:, i].astype(np.float64) for i, name in enumerate(names)}
    if schema.classes:
        return SiteTable(
            numeric=numeric, categorical={schema.label: [schema.classes[i] for i in dataset.labels]}
        )
    return SiteTable(numeric={**numeric, schema.label: dataset.labels.astype(np.float64)})


def split_rng(study_seed: int, institution_id: int) -> np.random.Generator:
    """The generator of a site's train/validation split: fixed per (study, institution)."""
    return np.random.default_rng([study_seed, institution_id])


#: Studies whose prepared data stay in memory at once (the oldest is dropped first).
MAX_CACHED_STUDIES = 4


class DataCache:
    """Loads the site's data once per study (and per study settings) and keeps it in memory."""

    def __init__(self, source: DataSource, institution_id: int) -> None:
        self._source = source
        self._institution_id = institution_id
        self._prepared: dict[tuple[int, str], PreparedData] = {}

    @property
    def source(self) -> DataSource:
        return self._source

    def prepare(self, study: StudySettings, model: AnyModelConfig) -> PreparedData:
        key = (study.id, _settings_digest(study))
        if key not in self._prepared:
            if len(self._prepared) >= MAX_CACHED_STUDIES:
                del self._prepared[next(iter(self._prepared))]
            self._prepared[key] = self._load(study, model)
        return self._prepared[key]

    def _load(self, study: StudySettings, model: AnyModelConfig) -> PreparedData:
        try:
            schema = None if study.data_schema is None else parse_data_schema(study.data_schema)
            dataset = load_dataset(self._source, schema)
            check_fits_model(dataset, model)
            if study.feature_scaling is not None and isinstance(dataset, Dataset):
                scaler = Standardizer.from_json(study.feature_scaling)
                dataset = dataset.with_features(scaler.transform(dataset.features))
            rng = split_rng(study.seed, self._institution_id)
            train, validation = dataset.train_test_split(study.validation_fraction, rng, stratify=True)
        except FederationError as error:
            raise TaskError(f"local data cannot serve study {study.name!r}: {error}") from None
        return PreparedData(train=train, validation=validation)


def check_fits_model(dataset: Dataset | TextDataset, model: AnyModelConfig) -> None:
    """Refuse data whose task, width or classes differ from the study's model."""
    if dataset.task is not model.task:
        raise TaskError(
            f"the local data is a {dataset.task.value} task; the study's model is {model.task.value}"
        )
    if isinstance(dataset, TextDataset) or isinstance(model, TextModelConfig):
        _check_text_fits(dataset, model)
        return
    if dataset.num_features != model.num_features:
        raise TaskError(
            f"the local data has {dataset.num_features} encoded features; the study's model expects "
            f"{model.num_features}"
        )
    if dataset.num_classes != model.num_classes:
        raise TaskError(
            f"the local data has {dataset.num_classes} classes; the model expects {model.num_classes}"
        )


def _check_text_fits(dataset: Dataset | TextDataset, model: AnyModelConfig) -> None:
    if not isinstance(dataset, TextDataset) or not isinstance(model, TextModelConfig):
        raise TaskError("a text model needs text data and a numeric model numeric data")
    if dataset.num_classes != model.num_classes:
        raise TaskError(
            f"the local data has {dataset.num_classes} classes; the model expects {model.num_classes}"
        )


def _settings_digest(study: StudySettings) -> str:
    # Everything that changes the prepared rows; a study edited in place gets fresh data.
    settings = [study.data_schema, study.feature_scaling, study.validation_fraction, study.seed]
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
