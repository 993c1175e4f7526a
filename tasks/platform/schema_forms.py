"""Forms from payload schemas: a task's pydantic model rendered as Django form fields, so that an
admin fills in fields instead of typing JSON (the schedule admin, edit and replay).

Read from the model's JSON Schema (what the API publishes), one form field per property: a string,
integer, number, boolean, one of a set of values (a Literal or an Enum) or a date, each with the
property's title, default and description, optional ones blank-able. What no single field can hold
(nested objects, lists, a union of types) is left to a JSON box for "the other fields": the form
never hides a field it cannot render. The fields only convert what was typed into JSON values;
whether the payload is valid is the schema's call on the server (``job_payload_validate``), so a
form and the API accept exactly the same payloads. Bounds and lengths are passed to the browser as
hints (``min``, ``max``, ``maxlength``), not checked twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django import forms
from pydantic import BaseModel

#: the form field of the JSON box that holds the fields the form cannot render
OTHER_FIELDS = "other_fields"


@dataclass(frozen=True)
class SchemaFields:
    """A schema's form: its fields by payload key, and the keys left to the JSON box."""

    fields: dict[str, forms.Field] = field(default_factory=dict)
    rest: tuple[str, ...] = ()
    required: frozenset[str] = frozenset()

    def initial(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        """The rendered fields' initial values (by payload key) from a payload; absent keys show
        the field's default, as the form field holds it."""
        payload = payload or {}
        return {key: payload.get(key, form_field.initial) for key, form_field in self.fields.items()}

    def other_initial(self, payload: dict[str, Any] | None) -> str:
        """The JSON box's initial text: the payload's keys the form cannot render."""
        payload = payload or {}
        rest = {key: payload[key] for key in self.rest if key in payload}
        return json.dumps(rest, indent=2, sort_keys=True) if rest else ""

    def payload(self, values: dict[str, Any], other: dict[str, Any] | None = None) -> dict[str, Any]:
        """The payload from the fields' cleaned values (by payload key) and the JSON box's object: a
        blank optional field is left out, so its default applies as in an API call; a rendered field
        wins over the same key in the box."""
        payload = dict(other or {})
        for key, value in values.items():
            if value is None or value == "":
                payload.pop(key, None)  # left out: a default applies, a required field is named missing
                continue
            payload[key] = value.isoformat() if isinstance(value, date | datetime) else value
        return payload


def schema_fields(schema: type[BaseModel], *, enforce_required: bool = True) -> SchemaFields:
    """The form of a payload schema. ``enforce_required=False`` renders every field optional (the
    schema still refuses a missing one): for forms that show several schemas' fields at once."""
    document = schema.model_json_schema()
    definitions = document.get("$defs", {})
    required = frozenset(document.get("required", ()))
    fields: dict[str, forms.Field] = {}
    rest = []
    for key, prop in document.get("properties", {}).items():
        form_field = _form_field(prop, definitions, required=key in required and enforce_required)
        if form_field is None:
            rest.append(key)
        else:
            fields[key] = form_field
    return SchemaFields(fields=fields, rest=tuple(rest), required=required)


def other_fields_field(rest: tuple[str, ...]) -> forms.Field:
    """The JSON box of the fields a form cannot render (a JSON object, or blank for none)."""
    return forms.CharField(
        label="Other fields (JSON)",
        required=False,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "class": "vLargeTextField"}),
        help_text=f"A JSON object with {', '.join(rest)}: fields this form cannot show one by one "
        "(lists, nested objects).",
    )


def parse_other_fields(text: str) -> dict[str, Any]:
    """The JSON box's object, or forms.ValidationError naming what is wrong with it."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise forms.ValidationError("Unable to parse JSON: %(error)s", params={"error": exc}) from None
    if not isinstance(value, dict):
        raise forms.ValidationError('Must be a JSON object, e.g. {"items": []}.')
    return value


def _form_field(prop: dict[str, Any], definitions: dict[str, Any], *, required: bool) -> forms.Field | None:
    """The form field of one property of the JSON Schema, or None when no single field holds it."""
    prop = _resolved(prop, definitions)
    nullable = False
    if "anyOf" in prop:  # an optional: X | None
        options = [_resolved(option, definitions) for option in prop["anyOf"]]
        values = [option for option in options if option.get("type") != "null"]
        if len(values) != 1:
            return None
        nullable = len(values) < len(options)
        prop = {**values[0], **{key: value for key, value in prop.items() if key != "anyOf"}}
    common = {
        "label": prop.get("title") or "",
        "required": required and not nullable and "default" not in prop,
        "help_text": prop.get("description", ""),
        "initial": prop.get("default"),
    }
    if not common["label"]:
        common.pop("label")
    kind, form = prop.get("type"), prop.get("format")
    hints = {
        attribute: prop[keyword]
        for keyword, attribute in (("minimum", "min"), ("maximum", "max"), ("maxLength", "maxlength"))
        if keyword in prop
    }
    if "enum" in prop or "const" in prop:
        choices = prop.get("enum", [prop.get("const")])
        if not all(isinstance(choice, str) for choice in choices):
            return None
        blank = [] if common["required"] else [("", "—")]
        return forms.ChoiceField(choices=blank + [(choice, choice) for choice in choices], **common)
    if kind == "boolean":
        return forms.BooleanField(**{**common, "required": False})
    if kind == "integer":
        return forms.IntegerField(widget=forms.NumberInput(attrs=hints), **common)
    if kind == "number":
        return forms.FloatField(widget=forms.NumberInput(attrs={"step": "any", **hints}), **common)
    if kind == "string" and form == "date":
        return forms.DateField(widget=forms.DateInput(attrs={"type": "date"}), **common)
    if kind == "string" and form == "date-time":
        return forms.DateTimeField(**common)
    if kind == "string":
        return forms.CharField(strip=False, widget=forms.TextInput(attrs={**hints, "size": 60}), **common)
    return None


def _resolved(prop: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A property with its local ``$ref`` (an Enum's definition) followed."""
    reference = prop.get("$ref", "")
    if reference.startswith("#/$defs/"):
        target = definitions.get(reference.removeprefix("#/$defs/"), {})
        return {**target, **{key: value for key, value in prop.items() if key != "$ref"}}
    return prop
