"""Template filters of the shop's pages: Django form fields drawn with Bootstrap's classes."""

from __future__ import annotations

from django import forms, template

register = template.Library()


@register.filter
def control(field: forms.BoundField) -> str:
    """The field's widget with Bootstrap's class for its kind, marked invalid when it has errors."""
    widget = field.field.widget
    if isinstance(widget, forms.Select):
        css = "form-select"
    elif isinstance(widget, forms.CheckboxInput):
        css = "form-check-input"
    else:
        css = "form-control"
    if field.errors:
        css += " is-invalid"
    return field.as_widget(attrs={"class": css})
