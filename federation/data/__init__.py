"""Local data: the declared schema, CSV loading, built-in data sets, partitioners for
simulations and feature scaling agreed without pooling rows."""

from federation.data.builtin import BUILTIN_DATASETS, load_builtin
from federation.data.csv_loader import load_csv
from federation.data.partition import (
    PartitionKind,
    partition,
    partition_by_site,
    partition_dirichlet_labels,
    partition_iid,
    partition_quantity_skew,
)
from federation.data.scaling import FeatureMoments, Standardizer, combine_moments, local_moments
from federation.data.schema import DataSchema, Dataset, FeatureKind, FeatureSpec

__all__ = [
    "BUILTIN_DATASETS",
    "DataSchema",
    "Dataset",
    "FeatureKind",
    "FeatureMoments",
    "FeatureSpec",
    "PartitionKind",
    "Standardizer",
    "combine_moments",
    "load_builtin",
    "load_csv",
    "local_moments",
    "partition",
    "partition_by_site",
    "partition_dirichlet_labels",
    "partition_iid",
    "partition_quantity_skew",
]
