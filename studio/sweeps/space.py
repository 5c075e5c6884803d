"""A sweep's search space, checked against the training and variant schemas, and turned into trials.

Every searched name is resolved to a field of :class:`~studio.schema.TrainingHyperParams`
(``hyper.``) or of the variant's ``Params`` (``variant.``), or is ``variant`` itself: a categorical over
variant names (a comparison of variants); a range must match the field's
type (a float range for a float, an int range for an integer) and every value the sampler
can draw must pass the field's own bounds, which is checked on the range's ends and on
every choice by validating a real request. Errors name the setting and say what to do.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from studio.errors import ValidationFailed
from studio.schema import (
    SWEEP_VARIANT_KEY,
    Choices,
    FloatRange,
    IntRange,
    SearchParam,
    SweepRequest,
    TrainingHyperParams,
    TrainRequest,
    format_validation_error,
)

HYPER, VARIANT = "hyper", "variant"
# Settings that change what a trial trains on or how it is compared, never searched.
NOT_SEARCHABLE = {"validation_fraction", "max_eval_rows", "eval_every", "log_every", "save_every"}


@dataclass(frozen=True)
class SearchedSetting:
    """One searched setting: where it lives (``hyper`` or ``variant``), its field name and its range."""

    scope: str
    field: str
    param: FloatRange | IntRange | Choices

    @property
    def key(self) -> str:
        """The name Optuna records: ``hyper.learning_rate``, ``variant.r``, or ``variant`` (the variant itself)."""
        return f"{self.scope}.{self.field}" if self.scope else self.field


def _variant_fields(variant: str) -> type[BaseModel]:
    from studio.variants.registry import get_variant

    return get_variant(variant).Params


def _resolve(name: str, hyper_fields: set[str], variant_fields: set[str]) -> tuple[str, str]:
    """(scope, field) of a searched name, or ValidationFailed listing what can be searched.

    ``variant`` alone is the variant itself (scope ``""``); ``variant.variant`` would be a parameter.
    """
    if name == SWEEP_VARIANT_KEY:
        return "", SWEEP_VARIANT_KEY
    scope, _, field = name.rpartition(".")
    if scope and scope not in (HYPER, VARIANT):
        raise ValidationFailed(f"space: {name!r}: prefix a setting with hyper. or variant., not {scope}.")
    if not scope:
        in_hyper, in_variant = field in hyper_fields, field in variant_fields
        if in_hyper and in_variant:
            raise ValidationFailed(
                f"space: {name!r} is both a training and a variant setting; write hyper.{field} or variant.{field}"
            )
        scope = HYPER if in_hyper else VARIANT if in_variant else ""
    known = hyper_fields if scope == HYPER else variant_fields if scope == VARIANT else hyper_fields | variant_fields
    if not scope or field not in known:
        listed = ", ".join(sorted(known - NOT_SEARCHABLE))
        raise ValidationFailed(f"space: {name!r} is not a setting of this variant or of training; searchable: {listed}")
    if field in NOT_SEARCHABLE:
        raise ValidationFailed(
            f"space: {field} is fixed for every trial of a sweep (it decides how trials are compared)"
        )
    return scope, field


def _base_type(annotation: Any) -> Any:
    """``float`` of ``float | None``, ``int`` of ``int``; None for anything else (literals, lists, unions)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _base_type(rest[0]) if len(rest) == 1 else None
    return annotation if annotation in (int, float, bool, str) else None


def _check_type(key: str, param: Any, model: type[BaseModel], field: str) -> None:
    kind = _base_type(model.model_fields[field].annotation)
    if isinstance(param, FloatRange) and kind is not float:
        hint = "use int:LOW:HIGH" if kind is int else "use cat: with its values"
        raise ValidationFailed(f"space: {key} is not a decimal number, so it takes no float range; {hint}")
    if isinstance(param, IntRange) and kind is not int:
        hint = "use float:LOW:HIGH" if kind is float else "use cat: with its values"
        raise ValidationFailed(f"space: {key} is not a whole number, so it takes no int range; {hint}")


def sample_values(param: FloatRange | IntRange | Choices) -> list[Any]:
    """The values whose validity stands for the whole range: its two ends, or every choice."""
    if isinstance(param, Choices):
        return list(param.choices)
    return [param.low, param.high]


def searched_variants(request: SweepRequest) -> list[str]:
    """The variants a sweep's trials train: the ``variant`` choices when the variant is searched, else its one."""
    choices = request.space.get(SWEEP_VARIANT_KEY)
    if isinstance(choices, Choices):
        return [str(c) for c in choices.choices]
    return [request.variant]


def _check_variant_choices(request: SweepRequest) -> list[type[BaseModel]]:
    """Every searched variant's ``Params``; ValidationFailed for a choice that is no registered variant."""
    from studio.variants.registry import variant_names

    param = request.space.get(SWEEP_VARIANT_KEY)
    if param is not None and not isinstance(param, Choices):
        raise ValidationFailed("space: variant takes the variants' names as choices (cat:lora,dora), not a range")
    known = variant_names()
    for name in searched_variants(request):
        if name not in known:
            raise ValidationFailed(f"space: variant {name!r} is not a registered variant; known: {', '.join(known)}")
    preset = request.variant_preset
    if preset and not any(_declares(name, preset) for name in searched_variants(request)):
        raise ValidationFailed(f"variant_preset: no variant of this sweep declares a preset {preset!r}")
    return [_variant_fields(name) for name in searched_variants(request)]


def _declares(variant: str, preset: str) -> bool:
    from studio.variants.registry import get_variant

    return any(p.name == preset for p in get_variant(variant).presets)


def check_space(request: SweepRequest) -> list[SearchedSetting]:
    """The searched settings of ``request``, or ValidationFailed naming the first bad one.

    Every value the sampler may draw is validated by building the trial's real request,
    so the fields' own bounds (``gt``, ``le``, literals) and the variant's checks apply.
    When the variant itself is searched, a variant parameter must exist in every chosen
    variant, and each variant is checked with the fixed settings.
    """
    hyper_fields = set(TrainingHyperParams.model_fields)
    models = _check_variant_choices(request)
    variant_fields = set.intersection(*(set(m.model_fields) for m in models))
    settings: list[SearchedSetting] = []
    for name, param in request.space.items():
        scope, field = _resolve(name, hyper_fields, variant_fields)
        setting = SearchedSetting(scope, field, param)
        if any(s.key == setting.key for s in settings):
            raise ValidationFailed(f"space: {setting.key} is given twice")
        for model in [TrainingHyperParams] if scope == HYPER else models if scope == VARIANT else []:
            _check_type(setting.key, param, model, field)
        for value in sample_values(param):
            for variant in [None] if scope == "" else searched_variants(request):
                point = {setting.key: value} | ({} if variant is None else {SWEEP_VARIANT_KEY: variant})
                try:
                    trial_request(request, point, trial_number=0)
                except ValidationFailed as exc:
                    raise ValidationFailed(f"space: {setting.key} = {value!r} is not allowed: {exc}") from None
        settings.append(setting)
    trial_request(request, {}, trial_number=0)  # the fixed settings alone must make a valid trial
    for point in request.first_trials:
        first_trial_point(point, settings)
    return settings


def first_trial_point(point: dict[str, Any], settings: list[SearchedSetting]) -> dict[str, Any]:
    """A point of ``first_trials`` keyed by the searched settings' keys (``hyper.learning_rate``)."""
    by_name = {s.key: s for s in settings} | {s.field: s for s in settings}
    out = {}
    for name, value in point.items():
        setting = by_name.get(name)
        if setting is None:
            raise ValidationFailed(f"first_trials: {name!r} is not a searched setting")
        out[setting.key] = value
    return out


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optuna's ``{"hyper.x": .., "variant.y": ..}`` as (training settings, variant parameters).

    The searched variant itself (key ``variant``) is in neither: :func:`trial_request` reads it.
    """
    hyper: dict[str, Any] = {}
    variant: dict[str, Any] = {}
    for key, value in params.items():
        if key == SWEEP_VARIANT_KEY:
            continue
        scope, _, field = key.partition(".")
        (hyper if scope == HYPER else variant)[field] = value
    return hyper, variant


def preset_values(variant: str, preset: str | None) -> dict[str, Any]:
    """The values of ``preset`` for ``variant`` where it declares that preset, else none (its own defaults)."""
    from studio.variants.registry import get_variant

    if not preset:
        return {}
    cls = get_variant(variant)
    return dict(cls.preset(preset).values) if any(p.name == preset for p in cls.presets) else {}


def trial_request(request: SweepRequest, params: dict[str, Any], trial_number: int) -> TrainRequest:
    """The ``train`` request of one trial: the fixed settings overridden by the sampled ``params``."""
    from studio.variants.registry import create_variant

    hyper, variant = split_params(params)
    name = str(params.get(SWEEP_VARIANT_KEY, request.variant))
    compared = request.space.get(SWEEP_VARIANT_KEY)
    if request.name:
        sweep_name = request.name
    elif isinstance(compared, Choices):
        sweep_name = "comparison of " + ", ".join(str(c) for c in compared.choices)
    else:
        sweep_name = f"sweep of {request.variant}"
    label = f"{sweep_name} · trial {trial_number}" + (f" · {name}" if isinstance(compared, Choices) else "")
    try:
        train = TrainRequest(
            name=label[:200],
            dataset_id=request.dataset_id,
            base_model=request.base_model,
            task=request.task,
            variant=name,
            variant_params={**preset_values(name, request.variant_preset), **request.variant_params, **variant},
            hyper=TrainingHyperParams(**{**request.hyper.model_dump(), **hyper}),
            seed=request.seed,
        )
    except ValidationError as exc:
        raise ValidationFailed(format_validation_error(exc)) from None
    create_variant(train.variant, train.variant_params)  # the variant's own checks name the field
    return train


def suggest(trial: Any, setting: SearchedSetting) -> Any:
    """Draw ``setting``'s value for an Optuna trial."""
    param: SearchParam = setting.param
    if isinstance(param, FloatRange):
        return trial.suggest_float(setting.key, param.low, param.high, log=param.log)
    if isinstance(param, IntRange):
        return trial.suggest_int(setting.key, param.low, param.high, log=param.log)
    return trial.suggest_categorical(setting.key, list(param.choices))


def parse_param(text: str) -> tuple[str, FloatRange | IntRange | Choices]:
    """``lr=log:1e-5:1e-3``, ``r=int:4:32``, ``dropout=cat:0,0.05,0.1``, ``x=float:0:1`` (the CLI's --param)."""
    import json

    name, sep, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    if not sep or not name or not rest:
        raise ValidationFailed(
            f"--param {text!r}: expected NAME=KIND:..., e.g. learning_rate=log:1e-5:1e-3, r=int:4:32, "
            "lora_dropout=cat:0,0.05,0.1"
        )

    def number(raw: str, cast: type) -> Any:
        try:
            return cast(raw)
        except ValueError:
            raise ValidationFailed(f"--param {text!r}: {raw!r} is not a {cast.__name__}") from None

    try:
        if kind in ("float", "log"):
            low, _, high = rest.partition(":")
            return name, FloatRange(low=number(low, float), high=number(high, float), log=kind == "log")
        if kind in ("int", "logint"):
            low, _, high = rest.partition(":")
            return name, IntRange(low=number(low, int), high=number(high, int), log=kind == "logint")
        if kind == "cat":
            values = []
            for raw in rest.split(","):
                try:
                    values.append(json.loads(raw))
                except json.JSONDecodeError:
                    values.append(raw.strip())
            return name, Choices(choices=values)
    except ValidationError as exc:
        raise ValidationFailed(f"--param {text!r}: {format_validation_error(exc)}") from None
    raise ValidationFailed(f"--param {text!r}: kind {kind!r} is not one of float, log, int, logint, cat")


def _bounds(info: Any) -> tuple[float | None, float | None]:
    """The (lowest, highest) values a pydantic field allows, from its ge/gt/le/lt constraints."""
    low = high = None
    for item in info.metadata:
        for name in ("ge", "gt"):
            if getattr(item, name, None) is not None:
                low = getattr(item, name)
        for name in ("le", "lt"):
            if getattr(item, name, None) is not None:
                high = getattr(item, name)
    return low, high


def _default_row(scope: str, field: str, info: Any) -> dict[str, Any] | None:
    """A searchable field's row with a starting range around its default, or None when it cannot be searched."""
    kind = _base_type(info.annotation)
    literal = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ()
    row: dict[str, Any] = {"search": False, "setting": f"{scope}.{field}", "low": None, "high": None, "log": False}
    if literal or kind is bool:
        return row | {"kind": "choice", "choices": ", ".join(str(v) for v in (literal or (True, False)))}
    if kind not in (int, float):
        return None
    floor, ceiling = _bounds(info)
    default = info.default if isinstance(info.default, int | float) and not isinstance(info.default, bool) else None
    if default:
        low, high = (default / 10, default * 10) if kind is float else (max(1, default // 2), default * 2)
    else:
        low, high = (floor or 0, ceiling if ceiling is not None else (1 if kind is float else 10))
    low = low if floor is None else max(low, floor)
    high = high if ceiling is None else min(high, ceiling)
    if kind is int:
        low, high = int(low), int(high)
    if not low < high:
        return None
    return row | {"kind": kind.__name__, "low": low, "high": high, "log": bool(low > 0 and high / low >= 100)}


def searchable_rows(variant: str) -> list[dict[str, Any]]:
    """Every setting a sweep of ``variant`` can search, from the schemas, with a starting range (the Sweep tab).

    Keys: ``search`` (False), ``setting`` (``hyper.x`` / ``variant.y``), ``kind`` (float, int, choice),
    ``low``/``high``/``log`` for numbers and ``choices`` (every allowed value) for the others.
    Free-text and list fields are left out: they have no range.
    """
    rows = []
    for scope, model in ((VARIANT, _variant_fields(variant)), (HYPER, TrainingHyperParams)):
        for field, info in model.model_fields.items():
            if field in NOT_SEARCHABLE or field in ("target_modules", "keep_checkpoints"):
                continue
            row = _default_row(scope, field, info)
            if row is not None:
                rows.append({"choices": "", **row})
    return rows
