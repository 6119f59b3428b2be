"""The "New study" form: one page in five numbered steps, each error next to its field.

Each part is parsed with the federation library's own types (the data schema, the model
configuration, the strategy, the local training settings), so an error names the field it
belongs to; the model's width, task and classes are derived from the schema, so they cannot
disagree with it. :func:`studies.services.study_validate` then checks the whole, and
:func:`studies.services.study_create` creates it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypedDict, TypeVar

from django import forms
from django.db.models import QuerySet
from rest_framework.exceptions import ParseError

from console.forms import add_service_error
from federation.aggregation.strategies import STRATEGIES, StrategyName, StrategyParameter, build_strategy
from federation.data import DataSchema, Standardizer
from federation.data.text import TextSchema, parse_data_schema
from federation.errors import ConfigurationError, FederationError
from federation.models import ModelConfig, ModelKind, TextModelConfig, TrainConfig
from federation.models.base import MAX_SEED
from federation.models.lora import AdapterAggregation, LoraSettings, TextModelKind
from federation.models.pins import BUILTIN_MODELS, builtin_pin
from fedplatform.errors import ServiceError
from fedplatform.parsers import loads_checked
from institutions.models import Institution
from studies.services import SCALING_DEFAULT, study_validate

_V = TypeVar("_V")

EXAMPLE_SCHEMA: dict[str, object] = {
    "features": [
        {"name": "age", "kind": "numeric"},
        {"name": "bmi", "kind": "numeric"},
        {"name": "glucose", "kind": "numeric"},
        {"name": "smoker", "kind": "boolean"},
        {"name": "sex", "kind": "categorical", "categories": ["female", "male"]},
    ],
    "label": "outcome",
    "task": "binary",
    "classes": ["no", "yes"],
}

MODEL_KIND_LABELS = {
    ModelKind.LOGISTIC: "Logistic / linear model (torch)",
    ModelKind.MLP: "Multi-layer perceptron (torch)",
    ModelKind.CNN: "Small CNN for square images (torch)",
    ModelKind.SKLEARN_SGD: "SGD classifier or regressor (scikit-learn)",
    ModelKind.SKLEARN_LOGISTIC: "Logistic regression (scikit-learn)",
    TextModelKind.LORA_ENCODER: "Pretrained text encoder with LoRA adapters (text)",
    TextModelKind.LORA_CAUSAL_LM: "Pretrained language model with LoRA, classes scored as answers (text)",
}
#: The linear layers LoRA attaches to by default, by base model family.
DEFAULT_TARGETS = {
    TextModelKind.LORA_ENCODER: "query, key, value",
    TextModelKind.LORA_CAUSAL_LM: "q_proj, k_proj, v_proj, o_proj",
}


def _given(value: _V | None, default: _V) -> _V:
    """A field left empty takes the default; a value given, even 0, is checked as given."""
    return default if value is None else value


def base_model_label(name: str) -> str:
    pin = builtin_pin(name)
    return f"{name} ({pin.family.value}, {pin.num_parameters / 1e6:.1f}M parameters)"


def strategy_label(strategy: StrategyName) -> str:
    """The strategy's own label, marked when the rule is robust to hostile sites."""
    strategy_class = STRATEGIES[strategy]
    return f"{strategy_class.label} (robust)" if strategy_class.robust else strategy_class.label


SCALING_CHOICES = [
    ("agents", "Agreed through the sites' agents (text studies: none)"),
    ("none", "None: the sites train on their features as they are"),
    ("given", "Given below"),
]
#: What each choice asks of :func:`studies.services.study_create` ("given": the JSON itself).
SCALING_OF = {"agents": SCALING_DEFAULT, "none": "none"}
TRAINING_FIELDS = ("epochs", "batch_size", "learning_rate", "proximal_mu", "max_steps", "class_weighting")
LORA_FIELDS = (
    "base_model",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_aggregation",
)


class StudyArguments(TypedDict):
    """The keyword arguments of :func:`studies.services.study_create`, less the actor."""

    name: str
    description: str
    model_config: dict[str, object]
    data_schema: dict[str, object]
    strategy: str
    strategy_params: dict[str, object]
    training: dict[str, object]
    feature_scaling: dict[str, object] | str | None
    privacy: dict[str, object]
    update_norm_bound: dict[str, object]
    validation_fraction: float
    seed: int
    institution_ids: list[int]


def sentence(message: str) -> str:
    """A library message ("a binary schema declares ...") as a sentence for a person; one that
    starts with a parameter's name (``learning_rate must be ...``) keeps it as written."""
    first_word = message.split(" ", 1)[0]
    return message if "_" in first_word else message[:1].upper() + message[1:]


def param_field_name(strategy: StrategyName, param: str) -> str:
    return f"param_{strategy.value}_{param}"


class JsonObjectField(forms.CharField):
    """A JSON object typed into a textarea, with the parser's position in its errors."""

    def __init__(self, *, rows: int = 8, **kwargs: object) -> None:
        widget = forms.Textarea(attrs={"rows": rows, "class": "code", "spellcheck": "false"})
        super().__init__(widget=widget, strip=True, **kwargs)  # type: ignore[arg-type]

    def to_python(self, value: object) -> dict[str, object] | None:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return None
        try:
            # The API's checks: depth, repeated keys, NaN and out-of-range numbers, NUL.
            parsed = loads_checked(text, what="This")
        except ParseError as error:
            raise forms.ValidationError(f"{error.detail}.", code="json") from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError("This must be a JSON object: {...}.", code="json_object")
        return parsed

    def prepare_value(self, value: object) -> object:
        return json.dumps(value, indent=2) if isinstance(value, dict) else value


def _strategy_param_field(parameter: StrategyParameter) -> forms.Field:
    """A number field for one strategy parameter; left empty, the strategy's default applies."""
    default = parameter.default
    help_text = "default: none" if default is None else f"default: {default}"
    attrs = {"placeholder": "" if default is None else str(default)}
    if parameter.is_integer:
        return forms.IntegerField(
            required=False, initial=default, help_text=help_text, widget=forms.NumberInput(attrs=attrs)
        )
    number = forms.NumberInput(attrs={**attrs, "step": "any"})
    return forms.FloatField(required=False, initial=default, help_text=help_text, widget=number)


def strategy_param_fields() -> Iterator[tuple[StrategyName, str, forms.Field]]:
    """Every strategy's parameters, as the strategy classes declare them."""
    for strategy, strategy_class in STRATEGIES.items():
        for parameter in strategy_class.parameters():
            yield strategy, parameter.name, _strategy_param_field(parameter)


@dataclass
class Section:
    number: int
    slug: str
    title: str
    intro: str
    fields: list[forms.BoundField]
    strategy_groups: list[tuple[str, str, list[forms.BoundField]]] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        groups = [bound for _, _, group in self.strategy_groups for bound in group]
        return any(bound.errors for bound in [*self.fields, *groups])


class StudyForm(forms.Form):
    # 1. name, description and participants
    name = forms.CharField(max_length=200, label="Study name", help_text="Unique within the consortium.")
    description = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), help_text="What the study is for."
    )
    institutions = forms.ModelMultipleChoiceField(
        queryset=Institution.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        label="Participating institutions",
        help_text="Each one's data owner must approve the study before a job can start.",
        error_messages={"required": "Choose at least one institution."},
    )
    # 2. data schema
    data_schema = JsonObjectField(
        rows=16,
        label="Data schema (JSON)",
        initial=EXAMPLE_SCHEMA,
        help_text="The columns every site exports: features (numeric, boolean or categorical with "
        "its categories), the label column, the task (binary, multiclass or regression) and the classes.",
    )
    # 3. model
    model_kind = forms.ChoiceField(
        choices=[(kind.value, label) for kind, label in MODEL_KIND_LABELS.items()],
        label="Model",
        initial="logistic",
        help_text='Text models need a text schema: {"kind": "text", "text": {"name": ..., ...}}.',
    )
    base_model = forms.ChoiceField(
        required=False,
        choices=[(name, base_model_label(name)) for name in BUILTIN_MODELS],
        initial="all-MiniLM-L6-v2",
        label="Base model (text models)",
        help_text="Pinned by the SHA-256 of its weight files: a site whose copy differs refuses the study.",
    )
    lora_rank = forms.IntegerField(
        required=False, min_value=1, max_value=256, initial=8, label="LoRA rank (text models)"
    )
    lora_alpha = forms.FloatField(
        required=False,
        min_value=0,
        initial=16.0,
        label="LoRA alpha",
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    lora_dropout = forms.FloatField(
        required=False,
        min_value=0,
        max_value=0.99,
        initial=0.0,
        label="LoRA dropout",
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    lora_target_modules = forms.CharField(
        required=False,
        label="LoRA target modules",
        help_text="Comma-separated layer names; empty: query, key, value (encoders) or q/k/v/o (causal).",
    )
    lora_aggregation = forms.ChoiceField(
        required=False,
        choices=[(method.value, method.label) for method in AdapterAggregation],
        initial=AdapterAggregation.FEDIT.value,
        label="Adapter aggregation",
        help_text="FFA-LoRA is exact and suits differential privacy; the SVD method needs plain FedAvg.",
    )
    hidden_sizes = forms.CharField(
        required=False,
        initial="64",
        label="Hidden layer sizes",
        help_text="Comma-separated widths, e.g. 64, 32 (multi-layer perceptron and CNN only).",
    )
    image_size = forms.IntegerField(
        required=False,
        min_value=4,
        label="Image size",
        help_text="CNN only: the side of the square images; the schema must have that many squared features.",
    )
    # 4. strategy (its parameters are added in __init__)
    strategy = forms.ChoiceField(
        choices=[(name.value, strategy_label(name)) for name in StrategyName],
        initial="fedavg",
        label="Aggregation strategy",
    )
    update_norm_bound = JsonObjectField(
        required=False,
        rows=2,
        initial={},
        label="Update norm bound",
        help_text=(
            'Leave {} for none. {"max_ratio": 10, "action": "refuse"} refuses an update that changes the '
            'model by more than 10 times its norm; "clip" scales it down instead (docs/threat-model.md).'
        ),
    )
    # 5. local training, validation, privacy
    epochs = forms.IntegerField(
        min_value=1, initial=1, label="Local epochs", help_text="Passes over local data per round."
    )
    batch_size = forms.IntegerField(min_value=1, initial=32, label="Batch size")
    learning_rate = forms.FloatField(
        min_value=0, initial=0.1, label="Learning rate", widget=forms.NumberInput(attrs={"step": "any"})
    )
    proximal_mu = forms.FloatField(
        min_value=0,
        initial=0.0,
        label="Proximal term (mu)",
        help_text="FedProx's proximal term in local training; 0 turns it off.",
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    max_steps = forms.IntegerField(
        required=False,
        min_value=1,
        label="Steps per round",
        help_text=(
            "Text models: each site takes exactly this many optimizer steps per round, passing "
            "over its data as often as needed (e.g. 15); epochs then stays 1."
        ),
    )
    class_weighting = forms.BooleanField(
        required=False,
        label="Weigh classes",
        help_text=(
            "Each site weighs its examples by the inverse frequency of their class, so a rare "
            "class counts as much as a common one (classification; not with DP-SGD)."
        ),
    )
    validation_fraction = forms.FloatField(
        initial=0.2,
        label="Validation fraction",
        help_text="Share of each site's rows kept for evaluation, strictly between 0 and 1.",
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    seed = forms.IntegerField(
        min_value=0, max_value=MAX_SEED, initial=0, help_text="Fixes the initial model and the splits."
    )
    scaling = forms.ChoiceField(
        choices=SCALING_CHOICES,
        initial="agents",
        label="Feature scaling",
        help_text=(
            "Agreed through the agents: once every site approved, one button on the study's page asks "
            "each site for its counts and sums (never rows). Without scaling, training can fail."
        ),
    )
    feature_scaling = JsonObjectField(
        required=False,
        rows=4,
        label="Given scaling (JSON)",
        help_text='With "given": {"mean": [...], "std": [...]}, one value per encoded feature.',
    )
    privacy = JsonObjectField(
        required=False,
        rows=3,
        initial={},
        label="Privacy settings",
        help_text=(
            'Leave {} for none. Secure aggregation: {"secure_aggregation": true}. Differential privacy: '
            '{"differential_privacy": {"level": "client", "clipping_norm": 1.0}, "epsilon": 3.0} '
            '(level "sample" for DP-SGD in each site; docs/privacy.md).'
        ),
    )

    def __init__(self, *args: object, institutions: QuerySet[Institution], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["institutions"].queryset = institutions  # type: ignore[attr-defined]
        for strategy, parameter, form_field in strategy_param_fields():
            form_field.label = parameter.replace("_", " ").capitalize()
            self.fields[param_field_name(strategy, parameter)] = form_field
        self.schema: DataSchema | TextSchema | None = None

    # --- the steps, for the template ------------------------------------------------------

    def sections(self) -> list[Section]:
        def bound(*names: str) -> list[forms.BoundField]:
            return [self[name] for name in names]

        groups = []
        for strategy in StrategyName:
            names = [name for name in self.fields if name.startswith(f"param_{strategy.value}_")]
            groups.append((strategy.value, strategy_label(strategy), bound(*names)))
        return [
            Section(
                1,
                "participants",
                "Study and participants",
                "Name the study and choose who takes part.",
                bound("name", "description", "institutions"),
            ),
            Section(
                2, "schema", "Data schema", "What every site's local export looks like.", bound("data_schema")
            ),
            Section(
                3,
                "model",
                "Model",
                "The model's inputs and outputs are derived from the schema.",
                bound("model_kind", "hidden_sizes", "image_size", *LORA_FIELDS),
            ),
            Section(
                4,
                "strategy",
                "Aggregation strategy",
                "How the sites' updates are combined each round.",
                bound("strategy", "update_norm_bound"),
                groups,
            ),
            Section(
                5,
                "training",
                "Local training and privacy",
                "How each site trains in a round.",
                bound(
                    "epochs",
                    "batch_size",
                    "learning_rate",
                    "proximal_mu",
                    "max_steps",
                    "class_weighting",
                    "validation_fraction",
                    "seed",
                    "scaling",
                    "feature_scaling",
                    "privacy",
                ),
            ),
        ]

    # --- parsing ----------------------------------------------------------------------

    def clean_data_schema(self) -> dict[str, object] | None:
        raw = self.cleaned_data.get("data_schema")
        try:
            self.schema = parse_data_schema(raw)
        except FederationError as error:
            raise forms.ValidationError(sentence(str(error)), code="schema") from error
        return self.schema.to_json()

    def clean_hidden_sizes(self) -> list[int]:
        text = str(self.cleaned_data.get("hidden_sizes") or "").strip()
        if not text:
            return []
        try:
            sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            raise forms.ValidationError("Write whole numbers separated by commas, e.g. 64, 32.") from None
        if any(size < 1 for size in sizes):
            raise forms.ValidationError("Every layer needs at least one unit.")
        return sizes

    def clean_validation_fraction(self) -> float:
        value = float(self.cleaned_data["validation_fraction"])
        if not 0.0 < value < 1.0:
            raise forms.ValidationError("The validation fraction must lie strictly between 0 and 1.")
        return value

    def clean_privacy(self) -> dict[str, object]:
        return self.cleaned_data.get("privacy") or {}

    def clean_update_norm_bound(self) -> dict[str, object]:
        return self.cleaned_data.get("update_norm_bound") or {}

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        self._forget_other_strategies(str(cleaned.get("strategy", "")))
        if self.schema is not None and "model_kind" in cleaned and "hidden_sizes" in cleaned:
            words = {
                "image_size": "image",
                "hidden_sizes": "hidden_sizes",
                "lora_rank": "rank",
                "lora_alpha": "alpha",
                "lora_dropout": "dropout",
                "lora_target_modules": "target module",
                "lora_aggregation": "SVD",
            }
            self._check(self._model_config, words, fallback="model_kind")
        if "strategy" in cleaned:
            self._check(self._strategy_params, self._param_fields(cleaned["strategy"]), fallback="strategy")
        if all(name in cleaned for name in TRAINING_FIELDS):
            self._check(self._training, list(TRAINING_FIELDS), fallback="epochs")
        given = cleaned.get("scaling") == "given"
        if given and cleaned.get("feature_scaling") is None:
            self.add_error(
                "feature_scaling", 'Give {"mean": [...], "std": [...]}, or choose another scaling.'
            )
        elif not given and cleaned.get("feature_scaling") is not None:
            self.add_error("feature_scaling", 'Choose "given" to use this scaling, or leave it empty.')
        elif self.schema is not None and given:
            self._check(self._feature_scaling, [], fallback="feature_scaling")
        if not self.errors:
            self._validate_whole()
        return cleaned

    def _forget_other_strategies(self, strategy: str) -> None:
        """Only the chosen strategy's parameters count: the others' input is not checked."""
        chosen = f"param_{strategy}_"
        for name in [name for name in self.errors if name.startswith("param_")]:
            if not name.startswith(chosen):
                del self.errors[name]

    def _param_fields(self, strategy: str) -> dict[str, str]:
        prefix = f"param_{strategy}_"
        return {name: name.removeprefix(prefix) for name in self.fields if name.startswith(prefix)}

    def _check(
        self, parse: Callable[[], None], candidates: list[str] | dict[str, str], *, fallback: str
    ) -> None:
        """Run one part's parser; put its error next to the field the message names.

        ``candidates`` maps field names to the word the library's messages use for them
        (a list when they are the same); the longest word is tried first.
        """
        try:
            parse()
        except FederationError as error:
            message = str(error)
            words = candidates if isinstance(candidates, dict) else {name: name for name in candidates}
            by_length = sorted(words.items(), key=lambda item: -len(item[1]))
            named = next((name for name, word in by_length if word in message), fallback)
            self.add_error(named, sentence(message))

    def _model_config(self) -> None:
        assert self.schema is not None
        kind = self.cleaned_data["model_kind"]
        if kind in set(TextModelKind):
            self.cleaned_data["model_config"] = self._text_model_config(TextModelKind(kind)).to_json()
            return
        if isinstance(self.schema, TextSchema):
            raise ConfigurationError(f"a text schema needs a text model, not {kind}")
        config = {
            "kind": kind,
            "task": self.schema.task.value,
            "num_features": len(self.schema.encoded_feature_names()),
            "num_classes": self.schema.num_classes,
            "hidden_sizes": self.cleaned_data["hidden_sizes"] or [64],
            "image_size": self.cleaned_data.get("image_size") if kind == ModelKind.CNN else None,
        }
        self.cleaned_data["model_config"] = ModelConfig.from_json(config).to_json()

    def _text_model_config(self, kind: TextModelKind) -> TextModelConfig:
        if not isinstance(self.schema, TextSchema):
            raise ConfigurationError('a text model needs a text data schema ("kind": "text")')
        data = self.cleaned_data
        targets = str(data.get("lora_target_modules") or "").strip() or DEFAULT_TARGETS[kind]
        defaults = LoraSettings()
        lora = LoraSettings(
            rank=_given(data.get("lora_rank"), defaults.rank),
            alpha=_given(data.get("lora_alpha"), defaults.alpha),
            dropout=_given(data.get("lora_dropout"), defaults.dropout),
            target_modules=tuple(part.strip() for part in targets.split(",") if part.strip()),
            aggregation=data.get("lora_aggregation") or defaults.aggregation,
        )
        return TextModelConfig(
            kind=kind,
            task=self.schema.task,
            num_classes=self.schema.num_classes,
            class_names=self.schema.classes,
            base_model=builtin_pin(data.get("base_model") or "all-MiniLM-L6-v2"),
            lora=lora,
            max_tokens=self.schema.text.max_tokens,
        )

    def _strategy_params(self) -> None:
        strategy = StrategyName(self.cleaned_data["strategy"])
        prefix = f"param_{strategy.value}_"
        given = {
            name.removeprefix(prefix): value
            for name, value in self.cleaned_data.items()
            if name.startswith(prefix) and value is not None
        }
        self.cleaned_data["strategy_params"] = build_strategy(strategy, given).params()

    def _training(self) -> None:
        training = {name: self.cleaned_data[name] for name in TRAINING_FIELDS}
        if training["max_steps"] is None:
            del training["max_steps"]
        if not training["class_weighting"]:
            del training["class_weighting"]  # stored only when chosen
        TrainConfig(**training)
        self.cleaned_data["training"] = training

    def _feature_scaling(self) -> None:
        if not isinstance(self.schema, DataSchema):
            raise ConfigurationError("feature scaling applies to numeric features; a text study has none")
        scaling = self.cleaned_data["feature_scaling"]
        unknown = sorted(set(scaling) - {"mean", "std"})
        width = len(self.schema.encoded_feature_names())
        if unknown or not {"mean", "std"} <= set(scaling):
            raise ConfigurationError(f'feature scaling needs exactly "mean" and "std", got {sorted(scaling)}')
        Standardizer(mean=scaling["mean"], std=scaling["std"])
        if len(scaling["mean"]) != width:
            raise ConfigurationError(
                f"feature scaling needs {width} means and standard deviations, one per encoded feature"
            )

    def _validate_whole(self) -> None:
        try:
            study_validate(
                model_config=self.cleaned_data["model_config"],
                data_schema=self.cleaned_data["data_schema"],
                strategy=self.cleaned_data["strategy"],
                strategy_params=self.cleaned_data["strategy_params"],
                training=self.cleaned_data["training"],
                feature_scaling=self.cleaned_data["feature_scaling"],
                privacy=self.cleaned_data.get("privacy") or {},
                update_norm_bound=self.cleaned_data.get("update_norm_bound") or {},
                num_participants=len(self.cleaned_data.get("institutions") or []),
            )
        except ServiceError as error:
            add_service_error(self, error)

    def study_arguments(self) -> StudyArguments:
        """What :func:`studies.services.study_create` needs, from a valid form."""
        data = self.cleaned_data
        return {
            "name": data["name"],
            "description": data["description"],
            "model_config": data["model_config"],
            "data_schema": data["data_schema"],
            "strategy": data["strategy"],
            "strategy_params": data["strategy_params"],
            "training": data["training"],
            "feature_scaling": data["feature_scaling"]
            if data["scaling"] == "given"
            else SCALING_OF[data["scaling"]],
            "privacy": data["privacy"],
            "update_norm_bound": data["update_norm_bound"],
            "validation_fraction": data["validation_fraction"],
            "seed": data["seed"],
            "institution_ids": [institution.pk for institution in data["institutions"]],
        }
